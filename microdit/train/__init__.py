"""Training: typed configs, optimizer groups and schedules, EMA, cost meter, checkpoints, logging
and the trainer (the only module that imports accelerate, lazily)."""

from microdit.train.config import StageConfig, TrainConfig, problems, validate
from microdit.train.flops import flops_per_image

__all__ = ["StageConfig", "TrainConfig", "flops_per_image", "problems", "validate"]
