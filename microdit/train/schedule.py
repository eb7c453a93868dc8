"""Learning-rate schedules as pure functions of the images seen in a stage (``nimg``), so they do
not change with batch size or process count."""

from __future__ import annotations

import math


def lr_factor(images: int, stage_images: int, warmup_images: int, schedule: str, min_fraction: float) -> float:
    """Multiplier of the stage's peak learning rate after ``images`` of ``stage_images``.

    Linear warmup from 0 over ``warmup_images``, then constant, or cosine decay to
    ``min_fraction`` at the end of the stage.
    """
    if warmup_images > 0 and images < warmup_images:
        return images / warmup_images
    if schedule == "constant":
        return 1.0
    span = max(stage_images - warmup_images, 1)
    progress = min(max((images - warmup_images) / span, 0.0), 1.0)
    return min_fraction + (1 - min_fraction) * 0.5 * (1 + math.cos(math.pi * progress))
