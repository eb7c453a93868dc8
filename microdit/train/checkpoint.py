"""Checkpoints: folders of state dicts + the resolved config, written atomically.

A checkpoint is written into ``checkpoints/.tmp-<nimg>`` and renamed to ``checkpoints/<nimg>``
when complete (the rename is atomic), so a crash or kill during a save never touches the last
good checkpoint. ``meta.json`` is written last inside the folder: a folder without it is not a
checkpoint. The last ``keep`` checkpoints are kept. :func:`load_model` gives the network of a
checkpoint (at the resolution of the stage it was written in) with its run config.
"""

from __future__ import annotations

import json
import pickle
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from microdit.models import MicroDiT
from microdit.models.microdit import PRETRAINED_WEIGHTS, pretrained_encoders
from microdit.train.config import TrainConfig, run_changes
from microdit.train.plan import resolve, stage_at

CONFIG = "config.yaml"

META = "meta.json"
STATE = "state.pt"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit: the message names it and what to do."""


def checkpoint_root(run_dir: Path) -> Path:
    """Where a run keeps its checkpoints."""
    return Path(run_dir) / "checkpoints"


def begin(run_dir: Path, nimg: int) -> Path:
    """Create (afresh) the temporary folder of the checkpoint at ``nimg``."""
    tmp = checkpoint_root(run_dir) / f".tmp-{nimg:012d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def commit(tmp: Path, state: dict, meta: dict, keep: int, config_yaml: str | None = None) -> Path:
    """Write the main state, the run's resolved config (``config.yaml``: the folder describes
    itself) and meta into ``tmp``, rename it into place, prune old checkpoints."""
    torch.save(state, tmp / STATE)
    if config_yaml is not None:
        (tmp / CONFIG).write_text(config_yaml)
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


def _reason(err: Exception) -> str:
    """A one-line reason for an unreadable file (never torch's advice to load it unsafely)."""
    if isinstance(err, pickle.UnpicklingError):
        return "it holds objects other than tensors and plain values, which would run code when loaded: refused"
    return str(err).splitlines()[0] if str(err) else type(err).__name__


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
    torch.save(state, path)


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
        reason = _reason(err)
        raise CheckpointError(f"random-state file {path} is unreadable or not a microdit random state ({reason}); "
                           "delete the checkpoint folder to resume from the one before it") from None
    if torch.cuda.is_available() and state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint folders under ``root``, oldest first."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / META).is_file())


def latest(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    found = list_checkpoints(checkpoint_root(run_dir))
    return found[-1] if found else None


def resolve_checkpoint(path: str | Path) -> Path:
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
    """(state, meta) of a checkpoint folder, with a clear error if it is unreadable that names
    the older checkpoint of the run still intact beside it, if any."""
    try:
        meta = json.loads((path / META).read_text())
        state = torch.load(path / STATE, map_location=map_location, weights_only=True)
    except (OSError, RuntimeError, json.JSONDecodeError, EOFError, pickle.UnpicklingError) as err:
        older = [p for p in list_checkpoints(path.parent) if p.name < path.name]
        hint = (f"the older checkpoint {older[-1]} is intact: resume from it with trainer.resume={older[-1]}"
                if older else "the run has no older checkpoint")
        raise CheckpointError(f"checkpoint {path} is unreadable ({_reason(err)}); {hint}") from None
    return state, meta


def run_config(path: str | Path) -> TrainConfig:
    """The resolved config a run wrote (``RUN/config.yaml``) as a :class:`TrainConfig`."""
    path = Path(path)
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainConfig), OmegaConf.load(path)))
    except Exception as err:  # noqa: BLE001  (OmegaConf raises many types; all mean "not a run config")
        raise ValueError(f"{path} is not a readable microdit run config ({type(err).__name__}: "
                         f"{str(err).splitlines()[0]})") from None


def saved_config_changes(folder: Path, cfg: TrainConfig) -> list[str]:
    """:func:`~microdit.train.config.run_changes` between the config written in ``folder`` (a run
    or a checkpoint, ``FOLDER/config.yaml``) and ``cfg``; none when ``folder`` holds no config."""
    return run_changes(run_config(folder / CONFIG), cfg) if (folder / CONFIG).is_file() else []


@dataclass
class LoadedModel:
    """A network ready for sampling, with the run config and the checkpoint it came from;
    ``encoders``: the text encoder and autoencoder its training data was encoded with, as the
    checkpoint (``meta.json``) or export (the safetensors header) recorded them; empty where they
    were not recorded (a converted reference checkpoint, a run that predates the record)."""

    model: MicroDiT
    config: TrainConfig
    checkpoint: Path
    nimg: int
    ema: bool
    encoders: dict = field(default_factory=dict)


def load_model(path: str | Path, use_ema: bool = True, device: str | torch.device = "cpu") -> LoadedModel:
    """The network of a run folder (its latest checkpoint), of a checkpoint folder (wherever it
    was moved: it holds its config), or of an export (``model.safetensors`` + ``config.json``, the
    EMA weights where the run had an EMA; with the run's ``config.yaml`` beside them if present,
    else default sampler and EDM settings), at the resolution of the stage it was written in; EMA
    weights when the checkpoint has them and ``use_ema``."""
    path = Path(path)
    if (path / PRETRAINED_WEIGHTS).is_file() and not (path / META).is_file():
        cfg = run_config(path / CONFIG) if (path / CONFIG).is_file() else TrainConfig()
        return LoadedModel(MicroDiT.from_pretrained(path, device), cfg, path, 0, True, pretrained_encoders(path))
    checkpoint = resolve_checkpoint(path)
    config_file = next((f for f in (checkpoint / CONFIG, checkpoint.parent.parent / CONFIG) if f.is_file()), None)
    if config_file is None:
        raise FileNotFoundError(f"{checkpoint} holds no {CONFIG} and is not inside a microdit run folder")
    cfg = run_config(config_file)
    state, meta = load(checkpoint)
    model = MicroDiT(stage_at(resolve(cfg), meta["stage"]).model)
    ema = use_ema and state.get("ema") is not None
    model.load_state_dict(state["ema"] if ema else state["model"])
    return LoadedModel(model.to(device).eval(), cfg, checkpoint, meta["nimg"], ema, meta.get("encoders", {}))
