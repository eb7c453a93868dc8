"""The stage resolver: what each stage of a run config means once every default, override and
budget is applied. ``resolve(cfg)`` is the one place that answers "which network config, EDM
constants, mask, learning rate, EMA, sampler, data (and how to build it) and length does this
stage use"; the trainer and its training step, the job pipeline (:mod:`microdit.pipeline`),
model loading (:mod:`microdit.run`) and the GPU plan (:mod:`microdit.perf.gpu_plan`) read its
:class:`Stage`.

A stage's length is given as images, steps, FLOPs or a fraction of the run's budget; ``resolve``
turns it into whole global batches, using the FLOPs meter (:mod:`microdit.train.flops`) for the
stage's own network, resolution, caption length and mask.
"""

from __future__ import annotations

import dataclasses

from microdit.data.encode import build_synthetic_dataset
from microdit.data.reader import DataConfig
from microdit.data.synthetic import SyntheticRecipe
from microdit.diffusion.edm import EDMConfig
from microdit.diffusion.samplers import SamplerConfig
from microdit.masking import MaskConfig
from microdit.models.config import MicroDiTConfig
from microdit.train.config import StageConfig, TrainConfig
from microdit.train.ema import EMAConfig
from microdit.train.flops import flops_per_image


@dataclasses.dataclass
class Stage:
    """One stage with everything it uses resolved: its ``index`` in run order and ``name``, the
    stage's own settings (``config``), the network config at its resolution (``model``), the EDM
    constants with its sigma distribution (``edm``), its ``mask``, peak learning rate ``lr``,
    ``ema`` and ``sampler`` (sample grids), the data it reads (``data``: the run's data config
    with the stage's folders), the synthetic ``dataset`` recipe of its first folder (used when
    ``data.prepare`` is ``synthetic``, and for a held-out split: ``held_out``; None for a stage
    built outside a run config, as the benchmarks build one) and, when a caption
    length was given, its length: ``images`` and ``steps`` (whole global batches) and the training
    ``flops_per_image``."""

    index: int
    name: str
    config: StageConfig
    model: MicroDiTConfig
    edm: EDMConfig
    mask: MaskConfig
    lr: float
    ema: EMAConfig
    sampler: SamplerConfig
    data: DataConfig
    dataset: SyntheticRecipe | None = None
    images: int | None = None
    steps: int | None = None
    flops_per_image: float | None = None

    @property
    def held_out(self) -> str:
        """The folder of the held-out split of this stage's data (``FOLDER-eval`` beside it)."""
        return self.dataset.folder + "-eval"

    @property
    def mae_weight(self) -> float:
        """Weight of MaskDiT's auxiliary loss: the stage's ``mae_loss_weight`` for a network with a
        MaskDiT decoder (it predicts the masked patches), 0 otherwise."""
        return self.config.mae_loss_weight if self.model.decoder_depth > 0 else 0.0


def budget_flops(cfg: TrainConfig, peak_flops: float | None) -> float | None:
    """The run's training FLOPs budget: ``trainer.budget_flops``, or ``trainer.budget_dollars``
    converted at ``peak_flops`` per device times ``trainer.expected_mfu``; None without a budget."""
    t = cfg.trainer
    if t.budget_dollars is not None:
        if peak_flops is None:
            raise ValueError("trainer.budget_dollars needs the device's peak FLOP/s to convert dollars to FLOPs")
        return t.budget_dollars / t.price_per_device_hour * 3600 * peak_flops * t.expected_mfu
    return t.budget_flops


def _images(stage: StageConfig, flops_per_image: float, batch_size: int, budget: float | None) -> int:
    """``stage``'s length in images, before rounding to whole global batches."""
    if stage.images is not None:
        return stage.images
    if stage.steps is not None:
        return stage.steps * batch_size
    if stage.flops is not None:
        return stage.flops / flops_per_image
    return stage.budget_fraction * budget / flops_per_image


def _recipe(cfg: TrainConfig, stage: StageConfig, data: DataConfig) -> SyntheticRecipe:
    """How the stage's first folder is built as a synthetic dataset: at ``data.prepare_size``, or
    for a stage at its own resolution with latents of its ``input_size``."""
    d = cfg.data
    return SyntheticRecipe(data.folders[0], d.prepare_samples, d.prepare_size, d.prepare_seed, cfg.encoder.autoencoder,
                           cfg.encoder.text_encoder, d.prepare_scene,
                           stage.input_size[0] if stage.input_size is not None else None)


def resolve(cfg: TrainConfig, caption_len: int | None = None, peak_flops: float | None = None) -> list[Stage]:
    """Every active stage of ``cfg`` resolved, in run order. With ``caption_len`` (caption tokens
    per image, from the dataset's manifest) each stage also gets its length; ``peak_flops`` (per
    device) is needed only to convert a dollar budget. Loading a model needs no length."""
    base = cfg.model.build_config()
    budget = budget_flops(cfg, peak_flops) if caption_len is not None else None
    out = []
    for index, (name, sc) in enumerate(cfg.active_stages()):
        model = sc.model_config(base)
        d = cfg.diffusion
        edm = dataclasses.replace(d, P_mean=d.P_mean if sc.P_mean is None else sc.P_mean,
                                  P_std=d.P_std if sc.P_std is None else sc.P_std)
        data = dataclasses.replace(cfg.data, folders=list(sc.data_folders or cfg.data.folders),
                                   resolution=sc.resolution if sc.resolution is not None else cfg.data.resolution)
        stage = Stage(index, name, sc, model, edm, sc.mask, sc.lr if sc.lr is not None else cfg.optim.lr, sc.ema,
                      cfg.sampler, data, _recipe(cfg, sc, data))
        if caption_len is not None:
            per_image = flops_per_image(model, model.base_grid, caption_len, sc.mask,
                                        cfg.trainer.flops_accounting).train
            steps = max(1, int(_images(sc, per_image, cfg.trainer.batch_size, budget) // cfg.trainer.batch_size))
            stage.images, stage.steps, stage.flops_per_image = steps * cfg.trainer.batch_size, steps, per_image
        out.append(stage)
    return out


def plan_problems(stages: list[Stage]) -> list[str]:
    """What a sized plan would silently waste, one message per stage and problem: an EMA whose
    start lies at or beyond the stage's end (it never starts: the stage's end would be evaluated
    on raw weights), or a warm-up longer than the stage."""
    out = []
    for s in stages:
        if s.images is None:
            continue
        if s.ema.decay > 0 and s.ema.start_images >= s.images:
            out.append(f"stages.{s.name}: ema.start_images={s.ema.start_images} is not before the stage's end "
                       f"({s.images} images): its EMA never starts")
        if s.config.warmup_images > s.images:
            out.append(f"stages.{s.name}: warmup_images={s.config.warmup_images} is longer than the stage "
                       f"({s.images} images)")
    return out


def unused_budget(stages: list[Stage], budget: float | None) -> list[str]:
    """A compute budget (``trainer.budget_flops`` or ``budget_dollars``) that sizes no stage, since
    none has a ``budget_fraction``: legitimate (the ablation protocol carries its 60k-step budget
    for the equal-FLOPs experiments that inherit it), so the trainer only says so, once: a budget
    set on the command line is otherwise ignored unseen. (A job's run that fixes its steps sets
    ``trainer.budget_flops=null``, so a job prints no such note.)"""
    if budget is None or any(s.config.budget_fraction is not None for s in stages):
        return []
    return [f"the compute budget ({budget:.4g} FLOPs) sizes no stage (none has a budget_fraction): each stage runs "
            "its own images, steps or FLOPs"]


RUN_ANYWAY = "trainer.plan_check=warn"  # what runs a refused plan, as a run's command line sets it


def check_plan(stages: list[Stage], mode: str, say=print, budget: float | None = None,
               run_anyway: str = RUN_ANYWAY) -> None:
    """Refuse (``mode`` ``error``: one line with every problem and ``run_anyway``, how the caller's
    user runs it all the same) or report (``warn``: a line each through ``say``) the
    :func:`plan_problems` of ``stages``; say where ``budget`` sizes no stage."""
    problems = plan_problems(stages)
    if problems and mode == "error":
        raise ValueError("; ".join(problems) + f" ({run_anyway} runs it anyway)")
    for problem in problems:
        say(f"[train] warning: {problem}")
    for note in unused_budget(stages, budget):
        say(f"[train] note: {note}")


def stage_at(stages: list[Stage], index: int) -> Stage:
    """The stage a checkpoint taken at stage ``index`` belongs to: a checkpoint written after the
    last stage finished (index == number of stages) holds that last stage's network."""
    return stages[min(index, len(stages) - 1)]


def synthetic_recipes(cfg: TrainConfig) -> list[SyntheticRecipe]:
    """The synthetic datasets a run with ``data.prepare=synthetic`` builds where missing: that of
    its ``data.folders[0]`` and of every stage (its resolved ``dataset`` recipe), each once."""
    return list(dict.fromkeys([_recipe(cfg, StageConfig(), cfg.data)] + [stage.dataset for stage in resolve(cfg)]))


def prepare_synthetic(cfg: TrainConfig) -> None:
    """Build and encode, where missing, the run's :func:`synthetic_recipes`."""
    for recipe in synthetic_recipes(cfg):
        build_synthetic_dataset(recipe, cfg.trainer.progress,
                                why="data.prepare=synthetic; with data.prepare=none a missing folder is an error")

