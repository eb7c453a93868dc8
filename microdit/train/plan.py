"""The stage resolver: what each stage of a run config means once every default, override and
budget is applied. ``resolve(cfg)`` is the one place that answers "which network config, EDM
constants, mask, data and length does this stage use"; the trainer, checkpoint loading, the
benchmarks, the roofline and the GPU plan all read it.

A stage's length is given as images, steps, FLOPs or a fraction of the run's budget; the plan
turns it into whole global batches, using the FLOPs meter (:mod:`microdit.train.flops`) for the
stage's own network, resolution, caption length and mask.
"""

from __future__ import annotations

import dataclasses

from microdit.data.reader import DataConfig
from microdit.diffusion.edm import EDMConfig
from microdit.masking import MaskConfig
from microdit.models.config import MicroDiTConfig
from microdit.train.config import StageConfig, TrainConfig
from microdit.train.flops import flops_per_image


@dataclasses.dataclass
class StagePlan:
    """A stage resolved to images: its length, the FLOPs per training image and per step."""

    images: int
    steps: int
    flops_per_image: float


@dataclasses.dataclass
class ResolvedStage:
    """One stage with everything it uses resolved: its ``index`` in run order and ``name``, the
    stage's own settings (``config``), the network config at its resolution (``model``), the EDM
    constants with its sigma distribution (``edm``), its ``mask``, the data it reads (``data``:
    the run's data config with the stage's folders) and, when a caption length was given, its
    ``plan``."""

    index: int
    name: str
    config: StageConfig
    model: MicroDiTConfig
    edm: EDMConfig
    mask: MaskConfig
    data: DataConfig
    plan: StagePlan | None

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


def _plan(stage: StageConfig, fpi: float, batch_size: int, budget: float | None) -> StagePlan:
    """``stage``'s length in whole global batches (at least one)."""
    if stage.images is not None:
        images = stage.images
    elif stage.steps is not None:
        images = stage.steps * batch_size
    elif stage.flops is not None:
        images = stage.flops / fpi
    else:
        images = stage.budget_fraction * budget / fpi
    steps = max(1, int(images // batch_size))
    return StagePlan(steps * batch_size, steps, fpi)


def resolve(cfg: TrainConfig, caption_len: int | None = None, peak_flops: float | None = None) -> list[ResolvedStage]:
    """Every active stage of ``cfg`` resolved, in run order. With ``caption_len`` (caption tokens
    per image, from the dataset's manifest) each stage also gets its plan; ``peak_flops`` (per
    device) is needed only to convert a dollar budget. Loading a model needs no plan."""
    base = cfg.model.build_config()
    budget = budget_flops(cfg, peak_flops) if caption_len is not None else None
    out = []
    for index, (name, stage) in enumerate(cfg.active_stages()):
        model = stage.model_config(base)
        d = cfg.diffusion
        edm = dataclasses.replace(d, P_mean=d.P_mean if stage.P_mean is None else stage.P_mean,
                                  P_std=d.P_std if stage.P_std is None else stage.P_std)
        data = dataclasses.replace(cfg.data, folders=list(stage.data_folders or cfg.data.folders))
        plan = None
        if caption_len is not None:
            fpi = flops_per_image(model, model.base_grid, caption_len, stage.mask, cfg.trainer.flops_accounting).train
            plan = _plan(stage, fpi, cfg.trainer.batch_size, budget)
        out.append(ResolvedStage(index, name, stage, model, edm, stage.mask, data, plan))
    return out


def stage_at(stages: list[ResolvedStage], index: int) -> ResolvedStage:
    """The stage a checkpoint taken at stage ``index`` belongs to: a checkpoint written after the
    last stage finished (index == number of stages) holds that last stage's network."""
    return stages[min(index, len(stages) - 1)]
