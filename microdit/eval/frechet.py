"""Fréchet distance between Gaussians fitted to feature sets (the distance behind FID, Clip-FID
and probe_fd), computed in float64 without scipy.

FD = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)), where tr((S1 S2)^(1/2)) is the sum of
the square roots of the eigenvalues of S1^(1/2) S2 S1^(1/2) (symmetric positive semi-definite).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from microdit.files import write_atomic


@dataclass
class FeatureStats:
    """Mean and covariance of a feature set, with its size."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int

    @classmethod
    def of(cls, features: np.ndarray | torch.Tensor) -> FeatureStats:
        """Fit to features (N, F); needs N >= 2."""
        f = np.asarray(features.detach().cpu() if isinstance(features, torch.Tensor) else features, dtype=np.float64)
        if f.ndim != 2 or f.shape[0] < 2:
            raise ValueError(f"need a (N >= 2, F) feature array, got shape {f.shape}")
        return cls(f.mean(axis=0), np.cov(f, rowvar=False), f.shape[0])

    def save(self, path: str | Path) -> None:
        """Write as .npz (whole or not at all: a killed write leaves no file at ``path``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.savez(buffer, mu=self.mu, sigma=self.sigma, count=self.count)
        write_atomic(path, buffer.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> FeatureStats:
        """Read a .npz written by :meth:`save`."""
        with np.load(path) as data:
            return cls(data["mu"], data["sigma"], int(data["count"]))


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(a: FeatureStats, b: FeatureStats) -> float:
    """Fréchet distance between the Gaussians of two feature sets."""
    if a.mu.shape != b.mu.shape:
        raise ValueError(f"feature sizes differ: {a.mu.shape} vs {b.mu.shape}")
    root = _sqrt_psd(a.sigma)
    middle = root @ b.sigma @ root
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    diff = a.mu - b.mu
    return float(diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2 * trace_sqrt)
