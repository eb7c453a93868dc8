"""Evaluation: sampling from runs, FID / Clip-FID / CLIP score, offline probe metrics, results tables."""

from microdit.eval.evaluate import METRICS, EvalSettings, evaluate, read_metrics, record_metrics
from microdit.eval.frechet import FeatureStats, frechet_distance
from microdit.eval.generate import generate, load_model

__all__ = ["METRICS", "EvalSettings", "FeatureStats", "evaluate", "frechet_distance", "generate", "load_model",
           "read_metrics", "record_metrics"]
