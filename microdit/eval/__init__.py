"""Evaluation: FID / Clip-FID / CLIP score, offline probe metrics, results tables."""

from microdit.eval.evaluate import EvalSettings, evaluate, read_metrics, record_metrics
from microdit.eval.frechet import FeatureStats, frechet_distance
from microdit.eval.metrics import METRICS, Metric, quality_columns

__all__ = ["METRICS", "EvalSettings", "FeatureStats", "Metric", "evaluate", "frechet_distance", "quality_columns",
           "read_metrics", "record_metrics"]
