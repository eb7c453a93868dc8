"""Typed configuration of a training run: the schema Hydra composes ``conf/`` onto, and its
validation. Unknown keys are rejected by the schema (OmegaConf struct mode); ``problems()``
returns one clear message per invalid value before anything is built.

Progress is counted in images (``nimg``). A stage's length is given in exactly one of images,
steps or FLOPs, or as a fraction of the run's compute budget (``trainer.budget_flops`` or
``trainer.budget_dollars``), which fits the stage's schedule to the budget (iso-FLOP sweeps).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from microdit.diffusion.edm import EDMConfig
from microdit.masking import STRATEGIES
from microdit.models.config import MicroDiTConfig
from microdit.models.presets import PRESETS
from microdit.nn.attention import ATTENTION_BACKENDS

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def _optional_fields(cls) -> list[tuple[str, Any, Any]]:
    """(name, Optional[type], None) for every field of a config dataclass: 'not overridden'."""
    hints = {"int": Optional[int], "float": Optional[float], "str": Optional[str], "bool": Optional[bool],
             "list[int]": Optional[list[int]], "list[float]": Optional[list[float]]}
    return [(f.name, hints[f.type], field(default=None)) for f in dataclasses.fields(cls)]


ModelOverrides = dataclasses.make_dataclass("ModelOverrides", _optional_fields(MicroDiTConfig))


@dataclass
class ModelSection:
    """A model preset and any of its fields overridden (``model.overrides.mixer_depth=0``)."""

    preset: str = "nano"
    overrides: ModelOverrides = field(default_factory=ModelOverrides)

    def build_config(self) -> MicroDiTConfig:
        """The network config: preset with the non-null overrides applied."""
        from microdit.models.presets import preset_config

        values = {k: v for k, v in dataclasses.asdict(self.overrides).items() if v is not None}
        return preset_config(self.preset, **values)


@dataclass
class DataConfig:
    """Latent datasets to read (and, optionally, how to make the synthetic one if it is missing)."""

    folders: list[str] = field(default_factory=lambda: ["data/synthetic"])
    weights: Optional[list[float]] = None
    shuffle: str = "global"
    shuffle_buffer: int = 1000
    caption_dropout: float = 0.1
    num_workers: int = 0
    skip_bad_samples: bool = False
    use_text_mask: bool = False  # mask caption padding in attention (the reference attends it)
    prepare: str = "none"  # "synthetic": build + encode data.folders[0] if it has no manifest
    prepare_samples: int = 20000
    prepare_size: int = 32


@dataclass
class EncoderConfig:
    """Frozen encoders: used to prepare data, embed sample prompts and decode sample grids."""

    autoencoder: str = "pixel:2"
    text_encoder: str = "offline:128:32"


@dataclass
class DiffusionConfig(EDMConfig):
    """EDM constants plus the sampler used for periodic sample grids."""

    sample_steps: int = 18
    sample_solver: str = "heun"
    cfg_scale: float = 2.0


@dataclass
class OptimConfig:
    """AdamW with parameter groups by module type."""

    lr: float = 2.4e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.1
    moe_lr_scale: float = 0.5  # applied to expert and router parameters (the reference never applied it)
    no_decay_embeddings: bool = True  # patch / timestep / caption embedders without weight decay


@dataclass
class EMAConfig:
    """Exponential moving average of the weights, starting after ``start_images`` of the stage."""

    decay: float = 0.0  # 0 disables the EMA
    start_images: int = 0


@dataclass
class StageConfig:
    """One stage: masking, length, schedule, sigma distribution, optional resolution change."""

    name: str = "pretrain"
    mask_ratio: float = 0.75
    mask_strategy: str = "random"
    mask_block_size: int = 1
    dropped_loss_weight: float = 0.0  # MaskDiT baseline: auxiliary loss on the masked patches
    images: Optional[int] = None
    steps: Optional[int] = None
    flops: Optional[float] = None
    budget_fraction: Optional[float] = None
    lr: Optional[float] = None  # None: optim.lr
    schedule: str = "cosine"  # cosine | constant
    warmup_images: int = 0
    min_lr_fraction: float = 0.33
    grad_clip: float = 0.25
    P_mean: Optional[float] = None  # None: diffusion.P_mean
    P_std: Optional[float] = None
    ema: EMAConfig = field(default_factory=EMAConfig)
    data_folders: Optional[list[str]] = None  # None: data.folders (another resolution = another dataset)
    input_size: Optional[list[int]] = None  # new latent size for this stage (resolution change)
    pos_interp_scale: Optional[float] = None


@dataclass
class TrainerConfig:
    """Run-level settings: where, how big, how often, how long, on what."""

    run_dir: str = "runs"
    name: str = "run"
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
    keep_checkpoints: int = 2
    save_initial_checkpoint: bool = False  # a checkpoint at 0 images (e.g. to evaluate the initialisation)
    resume: str = "auto"  # auto | never | PATH to a checkpoint folder
    init_from: Optional[str] = None  # checkpoint folder of another run
    init_mode: str = "weights"  # weights | full
    max_nonfinite: int = 5  # skipped (non-finite) steps in a row that stop the run
    sync_every_steps: int = 16  # the host checks the guard and signals at least this often
    sample_every_images: int = 0
    sample_prompts: list[str] = field(default_factory=lambda: ["a red circle on the left", "a small blue square",
                                                               "a yellow star above a green ring",
                                                               "a large purple heart on a white background"])
    sample_seed: int = 0
    peak_flops: float = 0.0  # per device, for MFU; 0: 989e12 on CUDA (H100 bf16 dense), 130e9 on CPU
    price_per_device_hour: float = 3.75
    budget_flops: Optional[float] = None
    budget_dollars: Optional[float] = None
    expected_mfu: float = 0.19  # converts a dollar budget to FLOPs (the paper's run: ~19%)
    wandb: str = "offline"  # disabled | offline | online
    progress: bool = True


@dataclass
class TrainConfig:
    """The whole run configuration (the Hydra root)."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataConfig = field(default_factory=DataConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    stages: list[StageConfig] = field(default_factory=lambda: [StageConfig()])


def stage_model_config(cfg: TrainConfig, stage: StageConfig) -> MicroDiTConfig:
    """The network config in force during ``stage`` (resolution changes applied)."""
    model = cfg.model.build_config()
    if stage.input_size is not None:
        model.input_size = list(stage.input_size)
    if stage.pos_interp_scale is not None:
        model.pos_interp_scale = stage.pos_interp_scale
    return model


def problems(cfg: TrainConfig, world_size: int = 1) -> list[str]:
    """Every problem of ``cfg`` as one message each (empty list: valid)."""
    out = []
    try:
        model = cfg.model.build_config()
        out += [f"model: {p}" for p in model.problems()]
    except ValueError as err:
        out.append(f"model: {err}")
        model = None
    if cfg.model.preset not in PRESETS:
        out.append(f"model.preset {cfg.model.preset!r} is not one of {PRESETS}")
    t, o, d = cfg.trainer, cfg.optim, cfg.data
    if t.batch_size < 1 or t.grad_accum < 1:
        out.append(f"trainer.batch_size and trainer.grad_accum must be >= 1, got {t.batch_size}, {t.grad_accum}")
    elif t.batch_size % (world_size * t.grad_accum):
        out.append(f"trainer.batch_size {t.batch_size} is not divisible by processes x grad_accum = "
                   f"{world_size} x {t.grad_accum}")
    for key, allowed in (("precision", ("auto", "fp32", "bf16")), ("device", ("auto", "cpu", "cuda")),
                         ("init_mode", ("weights", "full")), ("wandb", ("disabled", "offline", "online")),
                         ("attention_backend", ("auto", *ATTENTION_BACKENDS)),
                         ("compile_mode", COMPILE_MODES)):
        if getattr(t, key) not in allowed:
            out.append(f"trainer.{key} must be one of {allowed}, got {getattr(t, key)!r}")
    if t.sync_every_steps < 1 or t.max_nonfinite < 1:
        out.append(f"trainer.sync_every_steps and trainer.max_nonfinite must be >= 1, got {t.sync_every_steps}, "
                   f"{t.max_nonfinite}")
    if t.budget_flops is not None and t.budget_dollars is not None:
        out.append("set at most one of trainer.budget_flops and trainer.budget_dollars")
    if o.lr <= 0 or o.weight_decay < 0 or o.moe_lr_scale <= 0 or len(o.betas) != 2:
        out.append(f"optim: need lr > 0, weight_decay >= 0, moe_lr_scale > 0 and two betas, got lr {o.lr}, "
                   f"weight_decay {o.weight_decay}, moe_lr_scale {o.moe_lr_scale}, betas {o.betas}")
    if not d.folders:
        out.append("data.folders is empty: name at least one latent dataset folder")
    if d.weights is not None and len(d.weights) != len(d.folders):
        out.append(f"data.weights has {len(d.weights)} entries for {len(d.folders)} data.folders")
    if not 0 <= d.caption_dropout < 1:
        out.append(f"data.caption_dropout must be in [0, 1), got {d.caption_dropout}")
    if d.prepare not in ("none", "synthetic"):
        out.append(f"data.prepare must be 'none' or 'synthetic', got {d.prepare!r}")
    out += [f"diffusion: {p}" for p in EDMConfig.problems(cfg.diffusion)]
    if not cfg.stages:
        out.append("stages is empty: a run needs at least one stage")
    budget = t.budget_flops is not None or t.budget_dollars is not None
    fractions = 0.0
    for i, s in enumerate(cfg.stages):
        where = f"stages[{i}] ({s.name})"
        if not 0 <= s.mask_ratio < 1:
            out.append(f"{where}: mask_ratio must be in [0, 1), got {s.mask_ratio}")
        if s.mask_strategy not in STRATEGIES:
            out.append(f"{where}: mask_strategy must be one of {STRATEGIES}, got {s.mask_strategy!r}")
        lengths = [k for k in ("images", "steps", "flops", "budget_fraction") if getattr(s, k) is not None]
        if len(lengths) != 1:
            out.append(f"{where}: give exactly one of images, steps, flops, budget_fraction; got {lengths or 'none'}")
        elif lengths[0] == "budget_fraction":
            fractions += s.budget_fraction
            if not budget:
                out.append(f"{where}: budget_fraction needs trainer.budget_flops or trainer.budget_dollars")
        elif getattr(s, lengths[0]) <= 0:
            out.append(f"{where}: {lengths[0]} must be > 0")
        if s.schedule not in ("cosine", "constant"):
            out.append(f"{where}: schedule must be 'cosine' or 'constant', got {s.schedule!r}")
        if s.grad_clip < 0 or not 0 <= s.min_lr_fraction <= 1 or s.warmup_images < 0:
            out.append(f"{where}: need grad_clip >= 0, 0 <= min_lr_fraction <= 1, warmup_images >= 0")
        if not 0 <= s.ema.decay < 1:
            out.append(f"{where}: ema.decay must be in [0, 1), got {s.ema.decay}")
        if model is not None and s.mask_strategy == "block":
            size = s.input_size or model.input_size
            grid = (size[0] // model.patch_size, size[1] // model.patch_size)
            if grid[0] % s.mask_block_size or grid[1] % s.mask_block_size:
                out.append(f"{where}: mask_block_size {s.mask_block_size} does not divide the token grid {grid}")
    if budget and fractions and abs(fractions - 1) > 1e-6:
        out.append(f"stages' budget_fraction values sum to {fractions}, expected 1")
    return out


def validate(cfg: TrainConfig, world_size: int = 1) -> None:
    """Raise ValueError listing every problem of ``cfg``."""
    found = problems(cfg, world_size)
    if found:
        raise ValueError("invalid training config:\n  - " + "\n  - ".join(found))
