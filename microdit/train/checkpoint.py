"""Checkpoints: folders of state dicts + the resolved config, written atomically.

A checkpoint is written into ``checkpoints/.tmp-<nimg>`` and renamed to ``checkpoints/<nimg>``
when complete (the rename is atomic), so a crash or kill during a save never touches the last
good checkpoint. ``meta.json`` is written last inside the folder: a folder without it is not a
checkpoint. The last ``keep`` checkpoints are kept.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

META = "meta.json"
STATE = "state.pt"


def checkpoint_root(run_dir: Path) -> Path:
    """Where a run keeps its checkpoints."""
    return Path(run_dir) / "checkpoints"


def begin(run_dir: Path, nimg: int) -> Path:
    """Create (afresh) the temporary folder of the checkpoint at ``nimg``."""
    tmp = checkpoint_root(run_dir) / f".tmp-{nimg:012d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def commit(tmp: Path, state: dict, meta: dict, keep: int) -> Path:
    """Write the main state and meta into ``tmp``, rename it into place, prune old checkpoints."""
    torch.save(state, tmp / STATE)
    (tmp / META).write_text(json.dumps(meta, indent=2))
    final = tmp.with_name(tmp.name[len(".tmp-"):])
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    for old in list_checkpoints(tmp.parent)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    for stale in tmp.parent.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    return final


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint folders under ``root``, oldest first."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / META).is_file())


def latest(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    found = list_checkpoints(checkpoint_root(run_dir))
    return found[-1] if found else None


def resolve(path: str | Path) -> Path:
    """A checkpoint folder from a checkpoint folder or a run folder (its latest checkpoint)."""
    path = Path(path)
    if (path / META).is_file():
        return path
    found = latest(path)
    if found is None:
        raise FileNotFoundError(f"{path} is neither a checkpoint folder (with {META}) nor a run folder with "
                                "complete checkpoints")
    return found


def load(path: Path, map_location: str | torch.device = "cpu") -> tuple[dict, dict]:
    """(state, meta) of a checkpoint folder, with a clear error if it is unreadable."""
    try:
        meta = json.loads((path / META).read_text())
        state = torch.load(path / STATE, map_location=map_location, weights_only=True)
    except (OSError, RuntimeError, json.JSONDecodeError, EOFError) as err:
        raise RuntimeError(f"checkpoint {path} is unreadable ({err})") from None
    return state, meta
