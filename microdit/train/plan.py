"""Stage plans: a run's compute budget in FLOPs and each stage's length in images and steps, from
whichever of images, steps, FLOPs or budget fraction the stage gives. Used by the trainer and by
the GPU cost estimate, so both size stages the same way."""

from __future__ import annotations

import dataclasses

from microdit.train.config import StageConfig, TrainConfig, stage_model_config
from microdit.train.flops import flops_per_image


@dataclasses.dataclass
class StagePlan:
    """A stage resolved to images: its length, the FLOPs per training image and per step."""

    images: int
    steps: int
    flops_per_image: float


def budget_flops(cfg: TrainConfig, peak_flops: float) -> float | None:
    """The run's training FLOPs budget: ``trainer.budget_flops``, or ``trainer.budget_dollars``
    converted at ``peak_flops`` per device times ``trainer.expected_mfu``; None without a budget."""
    t = cfg.trainer
    if t.budget_dollars is not None:
        return t.budget_dollars / t.price_per_device_hour * 3600 * peak_flops * t.expected_mfu
    return t.budget_flops


def stage_flops_per_image(cfg: TrainConfig, stage: StageConfig, caption_len: int) -> float:
    """Training FLOPs per image in ``stage`` (3 x forward, at its mask ratio, strategy and resolution)."""
    model_cfg = stage_model_config(cfg, stage)
    grid = (model_cfg.input_size[0] // model_cfg.patch_size, model_cfg.input_size[1] // model_cfg.patch_size)
    return flops_per_image(model_cfg, grid, caption_len, stage.mask_ratio, stage.mask_strategy,
                           stage.mask_block_size).train


def plan_stage(cfg: TrainConfig, stage: StageConfig, caption_len: int, budget: float | None) -> StagePlan:
    """``stage``'s length in whole global batches (at least one) and its FLOPs per image."""
    gb = cfg.trainer.batch_size
    fpi = stage_flops_per_image(cfg, stage, caption_len)
    if stage.images is not None:
        images = stage.images
    elif stage.steps is not None:
        images = stage.steps * gb
    elif stage.flops is not None:
        images = stage.flops / fpi
    else:
        images = stage.budget_fraction * budget / fpi
    steps = max(1, int(images // gb))
    return StagePlan(steps * gb, steps, fpi)
