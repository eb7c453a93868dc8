"""Typed configuration of a training run: the schema Hydra composes ``conf/`` onto, and its
validation. Each component's config lives beside the component (``MaskConfig`` in
:mod:`microdit.masking`, ``DataConfig`` with the reader, ``OptimConfig`` with the optimizer,
``EMAConfig`` with the EMA, ``EDMConfig`` / ``SamplerConfig`` in :mod:`microdit.diffusion`,
``EncoderConfig`` with the encoders, ``PresetConfig`` with the presets); this module holds the
run-level pieces (stages, trainer settings) and the root. Unknown keys are rejected by the schema
(OmegaConf struct mode); :func:`problems` returns one clear message per invalid value before
anything is built.

Stages are a mapping from name to :class:`StageConfig`, run in the order they were first defined,
so an experiment changes one stage by name (``stages.pretrain.mask.ratio=0.5``), adds one
(``+stages={finetune: {...}}``) or removes one (``stages.finetune=null``). Progress is counted
in images (``nimg``). A stage's length is given in exactly one of images, steps or FLOPs, or as a
fraction of the run's compute budget (``trainer.budget_flops`` or ``trainer.budget_dollars``),
which fits the stage's schedule to the budget (iso-FLOP sweeps).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from microdit.data.reader import DataConfig
from microdit.diffusion.edm import EDMConfig
from microdit.diffusion.samplers import SamplerConfig
from microdit.encoders import EncoderConfig
from microdit.masking import MaskConfig
from microdit.models.config import MicroDiTConfig
from microdit.models.presets import PresetConfig
from microdit.nn.attention import ATTENTION_BACKENDS
from microdit.train.ema import EMAConfig
from microdit.train.flops import FLOP_ACCOUNTINGS
from microdit.train.optim import OptimConfig

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
SCHEDULES = ("cosine", "constant")
LENGTHS = ("images", "steps", "flops", "budget_fraction")


@dataclass
class StageConfig:
    """One stage: masking, length, learning-rate schedule, sigma distribution, EMA, and optionally
    another dataset and resolution. Defaults are the paper's first stage (Table 2):
    75% random masking, cosine decay to 0.33 x lr, gradient clipping at 0.25."""

    mask: MaskConfig = field(default_factory=MaskConfig)
    mae_loss_weight: float = 0.1  # MaskDiT's auxiliary loss (networks with a decoder only; MaskDiT's 0.1)
    images: Optional[int] = None
    steps: Optional[int] = None
    flops: Optional[float] = None
    budget_fraction: Optional[float] = None
    lr: Optional[float] = None  # None: optim.lr
    schedule: str = "cosine"
    warmup_images: int = 0
    min_lr_fraction: float = 0.33
    grad_clip: float = 0.25  # 0: no clipping
    P_mean: Optional[float] = None  # None: diffusion.P_mean
    P_std: Optional[float] = None  # None: diffusion.P_std
    ema: EMAConfig = field(default_factory=EMAConfig)
    data_folders: Optional[list[str]] = None  # None: data.folders
    resolution: Optional[int] = None  # pixels: the latents this stage reads from multi-resolution datasets
    input_size: Optional[list[int]] = None  # new latent size for this stage (resolution change)
    pos_interp_scale: Optional[float] = None
    reset_optimizer: bool = False  # a fresh AdamW state at this stage's start (the reference does at 512 px)

    def model_config(self, base: MicroDiTConfig) -> MicroDiTConfig:
        """The network config in force during this stage: ``base`` with this stage's resolution."""
        changes = {}
        if self.input_size is not None:
            changes["input_size"] = list(self.input_size)
        if self.pos_interp_scale is not None:
            changes["pos_interp_scale"] = self.pos_interp_scale
        return dataclasses.replace(base, **changes)

    def problems(self, model: MicroDiTConfig | None) -> list[str]:
        """One message per invalid field; ``model`` (the run's network config, if valid) lets the
        mask be checked against this stage's token grid."""
        grid = self.model_config(model).base_grid if model is not None else None
        out = [f"mask: {p}" for p in self.mask.problems(grid)] + [f"ema: {p}" for p in self.ema.problems()]
        lengths = [k for k in LENGTHS if getattr(self, k) is not None]
        if len(lengths) != 1:  # two: e.g. the protocol's images and a command line's steps, one must go
            fix = f" (set the others to null, e.g. {lengths[0]}=null)" if lengths else ""
            out.append(f"give exactly one of {', '.join(LENGTHS)}; got {', '.join(lengths) or 'none'}{fix}")
        elif getattr(self, lengths[0]) <= 0:
            out.append(f"{lengths[0]} must be > 0, got {getattr(self, lengths[0])}")
        if self.lr is not None and self.lr <= 0:
            out.append(f"lr must be > 0 (or null for optim.lr), got {self.lr}")
        if self.schedule not in SCHEDULES:
            out.append(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.grad_clip < 0 or not 0 <= self.min_lr_fraction <= 1 or self.warmup_images < 0:
            out.append(f"need grad_clip >= 0, 0 <= min_lr_fraction <= 1 and warmup_images >= 0, got "
                       f"{self.grad_clip}, {self.min_lr_fraction}, {self.warmup_images}")
        if self.P_std is not None and self.P_std <= 0:
            out.append(f"P_std must be > 0, got {self.P_std}")
        if self.mae_loss_weight < 0:
            out.append(f"mae_loss_weight must be >= 0, got {self.mae_loss_weight}")
        return out


@dataclass
class TrainerConfig:
    """Run-level settings: where, how big, how often, how long, on what."""

    run_dir: str = "runs"
    name: str = "run"
    group: str = ""  # the sweep / experiment this run belongs to; results select runs by it
    seed: int = 0
    batch_size: int = 32  # global batch (all processes, all accumulation steps)
    grad_accum: int = 1
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16
    device: str = "auto"  # auto | cpu | cuda
    compile: bool = False
    compile_mode: str = "default"  # torch.compile mode: default | reduce-overhead (CUDA graphs) | max-autotune...
    attention_backend: str = "auto"  # auto (torch picks) | math | flash | efficient | cudnn
    activation_checkpointing: bool = False
    threads: int = 0  # CPU threads per process (0: torch's default)
    log_every_images: int = 1024
    ckpt_every_images: int = 0  # 0: only at stage ends and on signals
    keep_checkpoints: int = 2  # 0: keep every checkpoint
    save_initial_checkpoint: bool = False  # a checkpoint at 0 images (to evaluate the initialisation), never pruned
    resume: str = "auto"  # auto | never | PATH to a checkpoint folder
    init_from: Optional[str] = None  # checkpoint folder of another run
    init_mode: str = "weights"  # weights | full
    max_nonfinite: int = 5  # skipped (non-finite) steps in a row that stop the run
    plan_check: str = "error"  # a stage whose EMA never starts or whose warm-up outlasts it: error | warn
    sync_every_steps: int = 16  # the host checks the guard and signals at least this often
    sample_every_images: int = 0  # 0: grids at stage ends only
    sample_prompts: list[str] = field(default_factory=lambda: ["a red circle on the left", "a small blue square",
                                                               "a yellow star above a green ring",
                                                               "a large purple heart on a white background"])
    sample_seed: int = 0
    peak_flops: float = 0.0  # per device, for MFU; 0: the device's entry in microdit.devices
    price_per_device_hour: float = 3.75
    budget_flops: Optional[float] = None
    budget_dollars: Optional[float] = None
    expected_mfu: float = 0.19  # converts a dollar budget to FLOPs (the paper's run: ~19%)
    flops_accounting: str = "ours"  # ours (what runs) | paper (+ the reference's one-hot MoE einsums, Table 2)
    wandb: str = "offline"  # disabled | offline | online
    progress: bool = True

    def problems(self, world_size: int = 1) -> list[str]:
        """One message per invalid field (empty when valid)."""
        out = []
        if self.batch_size < 1 or self.grad_accum < 1:
            out.append(f"batch_size and grad_accum must be >= 1, got {self.batch_size}, {self.grad_accum}")
        elif self.batch_size % (world_size * self.grad_accum):
            out.append(f"batch_size {self.batch_size} is not divisible by processes x grad_accum = "
                       f"{world_size} x {self.grad_accum}")
        for key, allowed in (("precision", ("auto", "fp32", "bf16")), ("device", ("auto", "cpu", "cuda")),
                             ("init_mode", ("weights", "full")), ("wandb", ("disabled", "offline", "online")),
                             ("attention_backend", ("auto", *ATTENTION_BACKENDS)), ("compile_mode", COMPILE_MODES),
                             ("flops_accounting", FLOP_ACCOUNTINGS), ("plan_check", ("error", "warn"))):
            if getattr(self, key) not in allowed:
                out.append(f"{key} must be one of {allowed}, got {getattr(self, key)!r}")
        if self.sync_every_steps < 1 or self.max_nonfinite < 1:
            out.append(f"sync_every_steps and max_nonfinite must be >= 1, got {self.sync_every_steps}, "
                       f"{self.max_nonfinite}")
        if self.budget_flops is not None and self.budget_dollars is not None:
            out.append("set at most one of budget_flops and budget_dollars")
        out += self._range_problems()
        return out

    def _range_problems(self) -> list[str]:
        plain = self.name and "/" not in self.name and self.name not in (".", "..")
        out = [] if plain else [f"name {self.name!r} must be a plain folder name (the run folder under run_dir)"]
        if not str(self.run_dir).strip():  # Path("") is the working directory: an unset variable, not a choice
            out.append(f"run_dir {self.run_dir!r} must name a folder (. for the working directory)")
        for key in ("threads", "seed", "sample_seed", "log_every_images", "ckpt_every_images", "sample_every_images",
                    "keep_checkpoints", "peak_flops", "price_per_device_hour"):  # 0: default / never / keep all
            if getattr(self, key) < 0:
                out.append(f"{key} must be >= 0, got {getattr(self, key)}")
        for key in ("budget_flops", "budget_dollars"):
            if getattr(self, key) is not None and not getattr(self, key) > 0:
                out.append(f"{key} must be > 0 when set, got {getattr(self, key)}")
        if not 0 < self.expected_mfu <= 1:
            out.append(f"expected_mfu must be in (0, 1], got {self.expected_mfu}")
        if not self.sample_prompts:
            out.append("sample_prompts is empty: the stage-end sample grids need at least one prompt")
        return out


@dataclass
class TrainConfig:
    """The whole run configuration (the Hydra root)."""

    model: PresetConfig = field(default_factory=PresetConfig)
    data: DataConfig = field(default_factory=DataConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    diffusion: EDMConfig = field(default_factory=EDMConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    stages: dict[str, Optional[StageConfig]] = field(default_factory=dict)

    def active_stages(self) -> list[tuple[str, StageConfig]]:
        """(name, stage) in run order, without the stages set to null."""
        return [(name, stage) for name, stage in self.stages.items() if stage is not None]


def non_finite(node, prefix: str = "") -> list[str]:
    """One message per float value in ``node`` (nested dataclasses, dicts, lists) that is NaN or
    infinite, named by its dotted key: a command line can set any float key to ``nan`` or ``inf``,
    which every ``x < 0`` check lets through."""
    if dataclasses.is_dataclass(node):
        items = [(f.name, getattr(node, f.name)) for f in dataclasses.fields(node)]
    elif isinstance(node, dict):
        items = list(node.items())
    elif isinstance(node, (list, tuple)):
        items = list(enumerate(node))
    else:
        bad = isinstance(node, float) and not math.isfinite(node)
        return [f"{prefix} must be a finite number, got {node}"] if bad else []
    return [p for name, value in items for p in non_finite(value, f"{prefix}.{name}" if prefix else str(name))]


def problems(cfg: TrainConfig, world_size: int = 1) -> list[str]:
    """Every problem of ``cfg`` as one message each, named by its config key (empty list: valid)."""
    bad = non_finite(cfg)
    if bad:  # every other check assumes numbers
        return bad
    out = [f"model: {p}" for p in cfg.model.problems()]
    model = cfg.model.build_config() if not out else None
    for section, found in (("trainer", cfg.trainer.problems(world_size)), ("optim", cfg.optim.problems()),
                           ("data", cfg.data.problems()), ("encoder", cfg.encoder.problems()),
                           ("diffusion", cfg.diffusion.problems()), ("sampler", cfg.sampler.problems())):
        out += [f"{section}: {p}" for p in found]
    stages = cfg.active_stages()
    if not stages:
        out.append("stages is empty: a run needs at least one stage")
    budget = cfg.trainer.budget_flops is not None or cfg.trainer.budget_dollars is not None
    fractions = 0.0
    for name, stage in stages:
        out += [f"stages.{name}: {p}" for p in stage.problems(model)]
        if stage.budget_fraction is not None:
            fractions += stage.budget_fraction
            if not budget:
                out.append(f"stages.{name}: budget_fraction needs trainer.budget_flops or trainer.budget_dollars")
    if budget and fractions and abs(fractions - 1) > 1e-6:
        out.append(f"stages' budget_fraction values sum to {fractions:g}, expected 1")
    return out


def validate(cfg: TrainConfig, world_size: int = 1) -> None:
    """Raise ValueError listing every problem of ``cfg``."""
    found = problems(cfg, world_size)
    if found:
        raise ValueError("invalid training config:\n  - " + "\n  - ".join(found))


def unknown_keys(node, schema=TrainConfig, prefix: str = "") -> list[str]:
    """Dotted keys of a composed config (a DictConfig or plain dict) that ``schema`` does not have:
    Hydra lets ``+trainer.bogus=1`` add a key to a structured config, and converting it to the
    dataclass would drop it silently."""
    import typing

    from omegaconf import DictConfig

    if not isinstance(node, (dict, DictConfig)):
        return []
    fields = {f.name: f for f in dataclasses.fields(schema)}
    hints = typing.get_type_hints(schema)
    out = []
    for key in node:
        path = f"{prefix}{key}"
        if key not in fields:
            out.append(path)
            continue
        hint, value = hints[key], node[key]
        if dataclasses.is_dataclass(hint):
            out += unknown_keys(value, hint, path + ".")
        elif typing.get_origin(hint) is dict and isinstance(value, (dict, DictConfig)):  # stages: name -> stage
            value_type = typing.get_args(hint)[1]
            item = next((a for a in typing.get_args(value_type) or (value_type,) if dataclasses.is_dataclass(a)), None)
            for name in value if item is not None else []:
                out += unknown_keys(value[name], item, f"{path}.{name}.")
    return out


def to_train_config(node) -> TrainConfig:
    """The :class:`TrainConfig` of a composed Hydra config; an unknown key is an error naming it."""
    from omegaconf import OmegaConf

    unknown = unknown_keys(node)
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown}: not fields of the training config (check the spelling; "
                         "microdit-train --cfg job shows every key)")
    return OmegaConf.to_object(node)


# What a relaunch may change and still continue the same run: where and how it runs (devices,
# precision, compilation, threads, accumulation of the same global batch), how it logs,
# checkpoints and draws its sample grids, and where its data lies (datasets move between
# machines: ``data.folders`` are compared by folder name). Every other key changes what the run
# computes.
RELAUNCH_KEYS = (
    "trainer.run_dir", "trainer.name", "trainer.group", "trainer.grad_accum", "trainer.precision", "trainer.device",
    "trainer.compile", "trainer.compile_mode", "trainer.attention_backend", "trainer.activation_checkpointing",
    "trainer.threads", "trainer.log_every_images", "trainer.ckpt_every_images", "trainer.keep_checkpoints",
    "trainer.save_initial_checkpoint", "trainer.resume", "trainer.init_from", "trainer.init_mode",
    "trainer.max_nonfinite", "trainer.plan_check", "trainer.sync_every_steps", "trainer.sample_every_images",
    "trainer.sample_prompts",
    "trainer.sample_seed", "trainer.price_per_device_hour", "trainer.wandb", "trainer.progress", "sampler",
    "data.num_workers")


def _leaves(node, prefix: str = "") -> dict:
    """{dotted key: value} of a config: dataclasses and dicts are walked, anything else is a leaf."""
    if dataclasses.is_dataclass(node):
        node = {f.name: getattr(node, f.name) for f in dataclasses.fields(node)}
    if not isinstance(node, dict) or not node:
        return {prefix: node}
    out = {}
    for key, value in node.items():
        out.update(_leaves(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


# The keys of a run's compute budget: they change nothing in a run none of whose stages is sized by
# the budget (no ``budget_fraction``), whose stages fix their own images, steps or FLOPs.
BUDGET_KEYS = ("trainer.budget_flops", "trainer.budget_dollars", "trainer.expected_mfu")


def _sized_by_budget(cfg: TrainConfig) -> bool:
    return any(stage.budget_fraction is not None for _, stage in cfg.active_stages())


def run_changes(saved: TrainConfig, current: TrainConfig) -> list[str]:
    """``"key: saved -> current"`` for every key outside :data:`RELAUNCH_KEYS` where ``current``
    differs from the config a run was written with: continuing that run with ``current`` would mix
    two runs (another budget refits every stage's length and learning-rate schedule; another seed
    or global batch changes the data order). The :data:`BUDGET_KEYS` count only where a stage of
    either config is sized by the budget."""
    before, after = _leaves(saved), _leaves(current)
    for leaves in (before, after):
        leaves["data.folders"] = [Path(f).name for f in leaves["data.folders"]]
    ignored = RELAUNCH_KEYS + (() if _sized_by_budget(saved) or _sized_by_budget(current) else BUDGET_KEYS)
    out = []
    for key in dict.fromkeys([*before, *after]):
        if any(key == k or key.startswith(k + ".") for k in ignored):
            continue
        old, new = before.get(key, "(absent)"), after.get(key, "(absent)")
        if old != new:
            out.append(f"{key}: {old} -> {new}")
    return out


def summarize_changes(changes: list[str], shown: int = 3) -> str:
    """The first ``shown`` of :func:`run_changes`, and how many more, on one line."""
    more = f" (and {len(changes) - shown} more)" if len(changes) > shown else ""
    return "; ".join(changes[:shown]) + more
