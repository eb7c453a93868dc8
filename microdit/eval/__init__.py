"""Evaluation: FID / Clip-FID / CLIP score, offline probe metrics, results tables."""

from microdit.eval.evaluate import METRICS, EvalSettings, evaluate, read_metrics, record_metrics
from microdit.eval.frechet import FeatureStats, frechet_distance

__all__ = ["METRICS", "EvalSettings", "FeatureStats", "evaluate", "frechet_distance", "read_metrics", "record_metrics"]
