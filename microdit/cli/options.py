"""Command-line options shared by microdit's commands. The sampler options of ``microdit-sample``
and ``microdit-eval`` each default to the run's own ``sampler`` config (what its training grids
used), so ``microdit-sample RUN`` reproduces the run's grids and an option changes only the field
it names. Counts (``--batch-size``, ``--num-samples``, ...) are read by :func:`positive_int` and
budgets by :func:`positive_float` and files and folders by :func:`file_or_folder` (an empty one is not the
working directory), so a bad value is argparse's one-line error naming the option."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from microdit.data.images import MAX_SIDE
from microdit.diffusion import SOLVERS


def add_sampler_options(parser: argparse.ArgumentParser) -> None:
    """--solver, --steps, --cfg-scale, --churn (default: the run's sampler config)."""
    group = parser.add_argument_group("sampler (default: the run's own sampler config)")
    group.add_argument("--solver", choices=SOLVERS, help="EDM solver")
    group.add_argument("--steps", type=int, help="number of noise levels")
    group.add_argument("--cfg-scale", type=float,
                       help="classifier-free guidance scale (1 = conditional only, 0 = unconditional)")
    group.add_argument("--churn", type=float, help="EDM S_churn (0 = deterministic)")


def sampler_overrides(args: argparse.Namespace) -> dict:
    """The sampler fields given on the command line."""
    return {k: getattr(args, k) for k in ("solver", "steps", "cfg_scale", "churn") if getattr(args, k) is not None}


def file_or_folder(text: str) -> Path:
    """An argparse type: a file or folder, never empty (``Path("")`` is the working directory: a
    mistyped ``--out ""`` would write there)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a file or folder, got {text!r}")
    return Path(text)


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (argparse names the option in its one-line error)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """An argparse type: an integer >= 0 (0 often means 'off')."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def image_side(text: str) -> int:
    """An argparse type: an image side in pixels, 1 ... MAX_SIDE (microdit.data.images)."""
    value = positive_int(text)
    if value > MAX_SIDE:
        raise argparse.ArgumentTypeError(f"expected an image side of at most {MAX_SIDE} pixels, got {text!r}")
    return value


def synthetic_side(text: str) -> int:
    """An argparse type: a synthetic image side in pixels, MIN_SIDE ... MAX_SIDE (microdit.data.synthetic)."""
    from microdit.data.synthetic import MIN_SIDE

    value = image_side(text)
    if value < MIN_SIDE:
        raise argparse.ArgumentTypeError(f"expected a side of at least {MIN_SIDE} pixels (the smallest the shapes are "
                                         f"drawn at), got {text!r}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def fraction(text: str) -> float:
    """An argparse type: a share in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1], got {text!r}")
    return value
