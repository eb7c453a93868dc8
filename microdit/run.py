"""A trained run as its readers see it: the checkpoint folder format, the network of a run,
checkpoint or export with its config and the encoders its data was encoded with, the one check
that a dataset or text encoder fits a network (the trainer applies it to its stages' data too:
:func:`check_stage_data`), the held-out split of a run's synthetic data (:func:`held_out_split`), and
prompts -> images with a loaded model.

The trainer writes runs (:mod:`microdit.train.checkpoint` holds the write side); its sample grids,
``microdit-sample`` and ``microdit-eval`` read them through this module. A run folder holds
``config.yaml`` (the resolved run config) and ``checkpoints/<nimg>/`` folders, each with
``state.pt`` (state dicts: model, optimizer, EMA, progress), ``meta.json`` (written last: a folder
without it is not a checkpoint), its own ``config.yaml``, and at a stage end an export
(``model.safetensors`` + ``config.json``).
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import OmegaConf

from microdit.data import DataError, Manifest, verify_dataset
from microdit.data.manifest import no_manifest
from microdit.data.remote import dataset_manifest, is_remote
from microdit.diffusion import EDMConfig, SamplerConfig, generate
from microdit.encoders import load_autoencoder, load_text_encoder
from microdit.files import WriteError, not_a_folder
from microdit.locks import LockHeld
from microdit.models import MicroDiT, MicroDiTConfig
from microdit.models.microdit import (
    PRETRAINED_CONFIG,
    PRETRAINED_WEIGHTS,
    WEIGHTS_KEY,
    pretrained_encoders,
    pretrained_metadata,
)
from microdit.train.config import TrainConfig, run_changes
from microdit.train.guard import NonFiniteError
from microdit.train.plan import Stage, resolve, stage_at

CONFIG = "config.yaml"
META = "meta.json"
STATE = "state.pt"


HELD_OUT = "held-out"  # microdit-eval run --dataset held-out: the run's own held-out split (held_out_split)
HELD_OUT_SAMPLES = 1000  # images in a synthetic dataset's held-out split, FOLDER-eval (every CPU job's default)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit: the message names it and what to do."""


# What a user can act on (bad input, an unwritable folder, a run another process holds, a non-finite
# stop, a checkpoint that does not fit, a file a full disk refused): microdit-train, microdit-cpu-ablation
# and a job's workers end with its one-line message, not a traceback. DataError is a ValueError.
RUN_ERRORS = (ValueError, NonFiniteError, CheckpointError, LockHeld, PermissionError, FileExistsError,
              FileNotFoundError, WriteError)


def reason(err: Exception) -> str:
    """A one-line reason for an unreadable file (never torch's advice to load it unsafely)."""
    if isinstance(err, pickle.UnpicklingError):
        return "it holds objects other than tensors and plain values, which would run code when loaded: refused"
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def checkpoint_root(run_dir: Path) -> Path:
    """Where a run keeps its checkpoints."""
    return Path(run_dir) / "checkpoints"


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
    """A checkpoint folder from a checkpoint folder, or the latest of a run folder or of its
    ``checkpoints`` folder."""
    path = Path(path)
    if (path / META).is_file():
        return path
    found = latest(path) or next(reversed(list_checkpoints(path)), None)
    if found is None:
        raise FileNotFoundError(f"{path} does not exist" if not path.exists() else
                                f"{path} is neither a checkpoint folder (with {META}) nor a run folder with "
                                "complete checkpoints")
    return found


def load(path: Path, map_location: str | torch.device = "cpu", resuming: bool = False) -> tuple[dict, dict]:
    """(state, meta) of a checkpoint folder, with a clear error if it is unreadable that names
    the older checkpoint of the run still intact beside it, if any (how to resume from it when
    ``resuming``, else to give it instead)."""
    try:
        meta = json.loads((path / META).read_text())
        state = torch.load(path / STATE, map_location=map_location, weights_only=True)
    except (OSError, RuntimeError, json.JSONDecodeError, EOFError, pickle.UnpicklingError) as err:
        hint = older_hint(path, resuming)
        raise CheckpointError(f"checkpoint {path} is unreadable ({reason(err)}); {hint}") from None
    return state, meta


def older_hint(checkpoint: Path, resuming: bool) -> str:
    """What to do about an unreadable checkpoint: use the older one beside it, if any (resume from
    it when ``resuming`` a training run, else give its folder instead)."""
    older = [p for p in list_checkpoints(checkpoint.parent) if p.name < checkpoint.name]
    if older and resuming:
        return f"the older checkpoint {older[-1]} is intact: resume from it with trainer.resume={older[-1]}"
    if older:
        return f"the older checkpoint {older[-1]} is intact: give that folder instead"
    if resuming:
        return f"the run has no older checkpoint: move {checkpoint} away to start the run again"
    return "the run has no older checkpoint"


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


def held_out_split(run: str | Path) -> Path:
    """The held-out split of the synthetic dataset a run (or checkpoint) trained on, built where
    missing: ``FOLDER-eval``, :data:`HELD_OUT_SAMPLES` images drawn with the seed after the
    training set's, encoded alike; the split every CPU job evaluates its runs on. ``FOLDER`` is the
    run's ``data.folders[0]`` as its config names it (from where it trained)."""
    from microdit.data.encode import build_synthetic_dataset

    try:
        config = resolve_checkpoint(run) / CONFIG
    except FileNotFoundError:
        if not (Path(run) / PRETRAINED_CONFIG).is_file():
            raise
        raise ValueError(f"--dataset {HELD_OUT}: {run} is an export, which keeps no training config to draw the "
                         "split from: give --dataset a held-out split of the data it was trained on") from None
    cfg = run_config(config)
    if cfg.data.prepare != "synthetic":
        raise ValueError(f"--dataset {HELD_OUT}: {run} trained on data of its own ({cfg.data.folders[0]}, "
                         f"data.prepare={cfg.data.prepare}), which has no synthetic held-out split: give --dataset "
                         "a held-out split of that data")
    split = resolve(cfg)[0].dataset.held_out(HELD_OUT_SAMPLES)
    folder = Path(split.folder)
    if (folder / "manifest.json").is_file() and (found := split.differs(dataset_manifest(folder))):
        raise ValueError(f"--dataset {HELD_OUT}: {folder} holds {found} (a job's split, drawn with its "
                         f"eval.held_out_samples): evaluate on it as it is with --dataset {folder}, or delete {folder} "
                         f"and {folder}-images to draw the {HELD_OUT_SAMPLES:,} again")
    build_synthetic_dataset(split)
    return folder


@dataclass
class LoadedModel:
    """A network ready for sampling, with the run config and the checkpoint it came from;
    ``ema``: whether these are EMA weights; ``weights``: which weights, in words for messages;
    ``encoders``: the text encoder and autoencoder its training data was encoded with, as the
    checkpoint (``meta.json``) or export (the safetensors header) recorded them; empty where they
    were not recorded (a converted reference checkpoint)."""

    model: MicroDiT
    config: TrainConfig
    checkpoint: Path
    nimg: int
    ema: bool
    weights: str
    encoders: dict = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        """The run folder the checkpoint belongs to (an export's own folder for an export)."""
        return self.checkpoint.parent.parent if (self.checkpoint / META).is_file() else self.checkpoint


def load_model(path: str | Path, use_ema: bool = True, device: str | torch.device = "cpu") -> LoadedModel:
    """The network of a run folder (its latest checkpoint), of a checkpoint folder (wherever it
    was moved: it holds its config), or of an export (``model.safetensors`` + ``config.json``, the
    EMA weights where the run had an EMA; with the run's ``config.yaml`` beside them if present,
    else default sampler and EDM settings), at the resolution of the stage it was written in; EMA
    weights when the checkpoint has them and ``use_ema``."""
    path = Path(path)
    if (path / PRETRAINED_WEIGHTS).is_file() and not (path / META).is_file():
        cfg = run_config(path / CONFIG) if (path / CONFIG).is_file() else TrainConfig()
        model, metadata = MicroDiT.from_pretrained(path, device), pretrained_metadata(path)
        ema = metadata.get(WEIGHTS_KEY, "ema") == "ema"  # unrecorded: exports hold the EMA where the run had one
        words = {"ema": "EMA weights", "raw": "raw weights (the run had no EMA)"}.get(metadata.get(WEIGHTS_KEY),
                                                                                    "exported weights")
        return LoadedModel(model, cfg, path, 0, ema, words, pretrained_encoders(path))
    checkpoint = resolve_checkpoint(path)
    config_file = next((f for f in (checkpoint / CONFIG, checkpoint.parent.parent / CONFIG) if f.is_file()), None)
    if config_file is None:
        raise FileNotFoundError(f"{checkpoint} holds no {CONFIG} and is not inside a microdit run folder")
    cfg = run_config(config_file)
    state, meta = load(checkpoint)
    model = MicroDiT(stage_at(resolve(cfg), meta["stage"]).model)
    has_ema = state.get("ema") is not None
    ema = use_ema and has_ema
    model.load_state_dict(state["ema"] if ema else state["model"])
    words = "EMA weights" if ema else "raw weights" if has_ema else "raw weights: the run has no EMA"
    return LoadedModel(model.to(device).eval(), cfg, checkpoint, meta["nimg"], ema, words, meta.get("encoders", {}))


def fit_problems(model: MicroDiTConfig, latent_shape: list[int] | None = None,
                 caption_dim: int | None = None) -> list[str]:
    """What does not fit network ``model``: latents of ``latent_shape`` [C, h, w] and caption
    tokens of width ``caption_dim`` (each checked where given); empty when both fit."""
    problems = []
    if latent_shape is not None and latent_shape[0] != model.in_channels:
        problems.append(f"latent channels {latent_shape[0]} != model in_channels {model.in_channels}")
    if caption_dim is not None and caption_dim != model.caption_dim:
        problems.append(f"caption width {caption_dim} != model caption_dim {model.caption_dim}")
    if latent_shape is not None and list(latent_shape[1:]) != list(model.input_size):
        h, w = latent_shape[1:]
        problems.append(f"latent size {h}x{w} != model input_size {model.input_size[0]}x{model.input_size[1]}")
    return problems


def check_fits_model(manifest: Manifest, where: str | Path, model: MicroDiTConfig, latents: bool = True,
                     hint: str = "") -> None:
    """Refuse (one line, naming the dataset) a dataset whose captions, and with ``latents`` its
    latents, do not fit network ``model``; ``hint`` says what to do instead. An image dataset is
    refused with the command that encodes it."""
    if manifest.kind != "latents":
        raise DataError(f"dataset {where} holds {manifest.kind}, not latents: encode it first "
                        f"(microdit-data encode {where} DST) and give DST")
    problems = fit_problems(model, manifest.latent_shape if latents else None, manifest.text_shape[1])
    if problems:
        raise DataError(f"dataset {where} ({manifest.autoencoder} latents, {manifest.text_encoder} captions) does not "
                        f"fit the model: " + "; ".join(problems) + (f": {hint}" if hint else ""))


def _no_dataset(folder: str, stage: Stage, stages: list[Stage]) -> str:
    """Why a stage's local ``folder`` without a manifest is no dataset, and what makes one there: a
    file; a download (how it becomes a dataset); else the command that encodes one as the run reads
    it (the run's encoders, which its stages' recipes carry, and every reading stage's resolution)."""
    where = f"dataset {folder} (stage {stage.name!r})"
    if Path(folder).is_file():
        return f"{where} {not_a_folder(folder)}"
    if Path(folder).is_dir() and any(Path(folder).iterdir()):
        return f"{where}: {no_manifest(folder)}, then microdit-data encode OUT LATENTS, and train on LATENTS"
    recipe = stages[0].dataset
    sizes = sorted({s.data.resolution for s in stages if folder in s.data.folders and s.data.resolution})
    return (f"{where} is missing: encode one there with this run's encoders (microdit-data encode IMAGES {folder} "
            f"--autoencoder {recipe.autoencoder} --text-encoder {recipe.text_encoder}"
            f"{' --resolutions ' + ' '.join(map(str, sizes)) if sizes else ''}; IMAGES from microdit-data prepare "
            "or cifar-captions), or set data.prepare=synthetic to build the synthetic dataset there")


def check_stage_data(stages: list[Stage]) -> tuple[int, list[dict]]:
    """Every stage's datasets exist, match their manifests and fit the stage's network; returns the
    caption length (tokens, one for the whole run) and, per stage, the encoders its first dataset
    was encoded with (each checkpoint records them, so a checkpoint samples without its dataset)."""
    lengths, encoders = set(), []
    for stage in stages:
        for i, folder in enumerate(stage.data.folders):
            if not is_remote(folder) and not (Path(folder) / "manifest.json").is_file():
                raise DataError(_no_dataset(folder, stage, stages))
            try:  # sizes and sha256 (then cached); seen at the resolution the stage reads
                manifest = verify_dataset(folder, count_samples=False).at(stage.data.resolution)
            except DataError as err:
                raise DataError(f"{err} (stage {stage.name!r}, dataset {folder})") from None
            check_fits_model(manifest, folder, stage.model)
            lengths.add(manifest.text_shape[0])
            if i == 0:
                encoders.append({"text_encoder": manifest.text_encoder, "autoencoder": manifest.autoencoder})
    if len(lengths) != 1:
        raise DataError(f"the stages' datasets have different caption lengths {sorted(lengths)}: encode them with "
                        "the same text encoder")
    return lengths.pop(), encoders


def encoder_names(loaded: LoadedModel, text_encoder: str | None = None,
                  autoencoder: str | None = None) -> tuple[str, str]:
    """(text encoder, autoencoder) of a loaded model: the given ones, else the ones its checkpoint
    or export recorded, else (nothing recorded) the ones in the manifest of the run's dataset."""
    recorded = loaded.encoders
    text, ae = text_encoder or recorded.get("text_encoder"), autoencoder or recorded.get("autoencoder")
    if not (text and ae):
        try:
            manifest = dataset_manifest(loaded.config.data.folders[0])
        except DataError as err:
            raise DataError(f"{err} (the run's data.folders[0], relative to the current directory; the model "
                            "records no encoders: give --text-encoder and --autoencoder)") from None
        text, ae = text or manifest.text_encoder, ae or manifest.autoencoder
    return text, ae


class PromptSampler:
    """Prompts -> uint8 images (N, 3, H, W) with a network, its text encoder and its autoencoder,
    loaded once by name on ``device``: the trainer's sample grids and ``microdit-sample`` both
    draw through it. Image i starts from the noise of ``seeds[i]``."""

    def __init__(self, text_encoder: str, autoencoder: str, device: str | torch.device = "cpu") -> None:
        self.text = load_text_encoder(text_encoder, device)
        self.autoencoder = load_autoencoder(autoencoder).to(device)
        self.device = device

    def check(self, model: MicroDiTConfig) -> None:
        """Refuse (one line) a text encoder whose tokens do not fit ``model``."""
        problems = fit_problems(model, caption_dim=self.text.dim)
        if problems:
            raise ValueError(f"text encoder {self.text.name} does not fit the model: {'; '.join(problems)}")

    @torch.no_grad()
    def __call__(self, model: MicroDiT, prompts: list[str], seeds: list[int], edm: EDMConfig, sampler: SamplerConfig,
                 use_text_mask: bool, batch_size: int = 64, x_init: torch.Tensor | None = None,
                 sigma_start: float | None = None, show_progress: bool = False) -> torch.Tensor:
        """(N, 3, H, W) uint8 images of ``prompts``."""
        from microdit.data.images import to_uint8

        y, mask = self.text.encode(list(prompts))
        latents = generate(model, y, seeds, edm, sampler, mask if use_text_mask else None, batch_size, x_init,
                           sigma_start, show_progress=show_progress)
        return to_uint8(self.autoencoder.decode(latents.to(self.device)).cpu())
