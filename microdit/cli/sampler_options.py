"""The sampler options shared by ``microdit-sample`` and ``microdit-eval``: each defaults to the
run's own ``sampler`` config (what its training grids used), so ``microdit-sample RUN`` reproduces
the run's grids and an option changes only the field it names."""

from __future__ import annotations

import argparse

from microdit.diffusion import SOLVERS


def add_sampler_options(parser: argparse.ArgumentParser) -> None:
    """--solver, --steps, --cfg-scale, --churn (default: the run's sampler config)."""
    group = parser.add_argument_group("sampler (default: the run's own sampler config)")
    group.add_argument("--solver", choices=SOLVERS, help="EDM solver")
    group.add_argument("--steps", type=int, help="number of noise levels")
    group.add_argument("--cfg-scale", type=float, help="classifier-free guidance scale (1 = conditional only)")
    group.add_argument("--churn", type=float, help="EDM S_churn (0 = deterministic)")


def sampler_overrides(args: argparse.Namespace) -> dict:
    """The sampler fields given on the command line."""
    return {k: getattr(args, k) for k in ("solver", "steps", "cfg_scale", "churn") if getattr(args, k) is not None}
