"""Distances between feature sets: the Fréchet distance between Gaussians fitted to them (behind
FID, Clip-FID and probe_fd), computed in float64 without scipy, and the kernel distance behind KID
(:func:`kernel_inception_distance`).

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


def kernel_inception_distance(generated: torch.Tensor, reference: torch.Tensor, subsets: int = 100,
                              subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """KID (Bińkowski et al. 2018, "Demystifying MMD GANs", Eq. 4): the unbiased estimate of the
    squared MMD between two feature sets (N, F) and (M, F) under the cubic polynomial kernel
    k(x, y) = (x·y / F + 1)^3, averaged over ``subsets`` random subsets of
    m = min(``subset_size``, N, M) from each set; (mean, standard deviation over the subsets).
    Unlike a Fréchet distance it has no bias at small N, so it compares runs evaluated on a few
    hundred samples; values near 0 (also slightly negative) mean "indistinguishable"."""
    x_all, y_all = (np.asarray(f.detach().cpu() if isinstance(f, torch.Tensor) else f, dtype=np.float64)
                    for f in (generated, reference))
    m, dim = min(subset_size, len(x_all), len(y_all)), x_all.shape[1]
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples in each set, got {len(x_all)} and {len(y_all)}")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        x = x_all[rng.choice(len(x_all), m, replace=False)]  # (m, F)
        y = y_all[rng.choice(len(y_all), m, replace=False)]  # (m, F)
        k_xx, k_yy, k_xy = ((a @ b.T / dim + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))  # (m, m) each
        within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
        values.append(within - 2 * k_xy.sum() / (m * m))
    return float(np.mean(values)), float(np.std(values))
