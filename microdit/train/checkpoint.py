"""Writing checkpoints: folders of state dicts + the resolved config, written atomically (the
folder format and its reading live in :mod:`microdit.run`).

A checkpoint is written into ``checkpoints/.tmp-<nimg>`` and renamed to ``checkpoints/<nimg>``
when complete (the rename is atomic), so a crash or kill during a save never touches the last
good checkpoint. ``meta.json`` is written last inside the folder: a folder without it is not a
checkpoint. The last ``keep`` checkpoints are kept.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from microdit.files import WriteError, naming_full_disk
from microdit.run import (
    CONFIG,
    META,
    STATE,
    CheckpointError,
    checkpoint_root,
    latest,
    list_checkpoints,
    older_hint,
    reason,
    resolve_checkpoint,
)


def check_writable(run_dir: Path, rank: int) -> None:
    """Create the run folder and write a file into it, or refuse it in one line (a full disk or
    quota: :class:`~microdit.files.WriteError`); the test file is never left behind."""
    probe = run_dir / f".write-test-{rank}"
    try:
        with naming_full_disk(run_dir, kept="nothing was trained: free space and run the same command again"):
            run_dir.mkdir(parents=True, exist_ok=True)
            probe.write_text("ok")
    except WriteError:
        raise
    except OSError as err:
        raise PermissionError(f"run directory {run_dir} is not writable ({err}); set trainer.run_dir "
                              "to a writable folder") from None
    finally:
        with contextlib.suppress(OSError):  # a folder that cannot be entered: its own error is raised
            probe.unlink(missing_ok=True)


def resume_path(run_dir: Path, mode: str) -> Path | None:
    """The checkpoint a run starts from under ``trainer.resume`` = ``mode``: its latest (``auto``),
    none (``never``, refused when the run already has checkpoints) or the given folder."""
    existing = latest(run_dir)
    if mode == "auto":
        return existing
    if mode == "never":
        if existing is not None:
            raise FileExistsError(f"run {run_dir} already has checkpoints (latest {existing}); use "
                                  "trainer.resume=auto to continue it or another trainer.name")
        return None
    return resolve_checkpoint(mode)


def load_weights(module: torch.nn.Module, state: dict, path: Path, what: str) -> None:
    """Load ``state`` into ``module`` (strict), or say in one line why checkpoint ``path`` does not fit."""
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()][:6]
        raise CheckpointError(f"checkpoint {path} is incompatible with this model config ({what}): "
                              + " | ".join(lines)) from None


def begin(run_dir: Path, nimg: int) -> Path:
    """Create (afresh) the temporary folder of the checkpoint at ``nimg``."""
    tmp = checkpoint_root(run_dir) / f".tmp-{nimg:012d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def commit(tmp: Path, state: dict, meta: dict, keep: int, config_yaml: str | None = None) -> Path:
    """Write the main state, the run's resolved config (``config.yaml``: the folder describes
    itself) and meta into ``tmp``, rename it into place, prune old checkpoints: all but the last
    ``keep``, never one whose meta says ``pinned`` (kept on request, e.g. the initial one). A write
    that fails (a full disk) removes ``tmp`` and raises :class:`CheckpointError` naming it."""
    final = tmp.with_name(tmp.name[len(".tmp-"):])
    try:
        torch.save(state, tmp / STATE)
        if config_yaml is not None:
            (tmp / CONFIG).write_text(config_yaml)
        (tmp / META).write_text(json.dumps(meta, indent=2))
    except (OSError, RuntimeError) as err:  # torch.save reports a full disk as a RuntimeError
        abandon(tmp, err)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    unpinned = [c for c in list_checkpoints(tmp.parent) if not json.loads((c / META).read_text()).get("pinned")]
    for old in unpinned[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    for stale in tmp.parent.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    return final


def abandon(tmp: Path, err: Exception) -> None:
    """Remove the unfinished checkpoint folder ``tmp`` and raise one clear error about it."""
    shutil.rmtree(tmp, ignore_errors=True)
    latest_good = max(list_checkpoints(tmp.parent), default=None)
    raise CheckpointError(f"checkpoint {tmp.parent / tmp.name[len('.tmp-'):]} could not be written ({reason(err)}; "
                          f"is the disk full?); its partial folder was removed, the last complete checkpoint is "
                          f"{latest_good or 'none'}") from None


def save_rng(path: Path) -> None:
    """Write this process's random states (Python, NumPy, torch, CUDA) as tensors and plain numbers
    only, so that loading them never unpickles code."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "torch": torch.get_rng_state(),
             "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
    try:
        torch.save(state, path)
    except (OSError, RuntimeError) as err:
        abandon(path.parent, err)


def load_rng(path: Path) -> None:
    """Restore the random states written by :func:`save_rng` (``weights_only``: a file holding
    anything but tensors and plain values is refused with a clear error, not executed)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        py, nps = state["python"], state["numpy"]
        random.setstate((py["version"], tuple(int(v) for v in py["internal"].tolist()), py["gauss"]))
        np.random.set_state((nps["kind"], nps["keys"].numpy().astype(np.uint32), nps["pos"], nps["has_gauss"],
                             nps["cached_gaussian"]))
        torch.set_rng_state(state["torch"])
    except (OSError, RuntimeError, KeyError, TypeError, ValueError, EOFError, pickle.UnpicklingError) as err:
        raise CheckpointError(f"random-state file {path} is unreadable or not a microdit random state ({reason(err)}); "
                              f"{older_hint(path.parent, resuming=True)}") from None
    if torch.cuda.is_available() and state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
