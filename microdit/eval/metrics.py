"""The metric registry: every metric ``microdit-eval`` can compute is one :class:`Metric` here, and
everything that names metrics (``evaluate``, ``microdit-eval --metrics`` and ``stats``, the results
tables' quality columns, the notebooks) reads :data:`METRICS`.

A metric is a name, the feature space it measures in (``features``: a key of :data:`EXTRACTORS`,
or ``probe`` / ``latent``), a ``compute`` function from :class:`EvalInputs` to the values it adds
to a ``metrics.json`` entry, its ``direction`` and whether it ``counts_as_quality`` (a table's
quality column). ``offline`` metrics need no downloaded network (the probe); ``stats`` metrics
compare against reference statistics that ``microdit-eval stats`` can cache ahead of time.

Adding a metric: one ``register(Metric(...))`` below (its compute function beside it) and its test.

Shapes: N generated samples, M reference samples, F features.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from microdit.data import load_manifest
from microdit.data.cache import dataset_cache
from microdit.data.images import to_uint8
from microdit.data.reader import read_dataset
from microdit.encoders import load_autoencoder
from microdit.eval.features import ClipModel, InceptionFeatures
from microdit.eval.frechet import FeatureStats, frechet_distance, kernel_inception_distance

LOWER, HIGHER = "lower", "higher"


@dataclass(frozen=True)
class Metric:
    """One metric: ``compute(inputs)`` returns the values it adds to a metrics.json entry;
    ``direction`` maps each of its columns to ``lower`` or ``higher`` (which way is better)."""

    name: str
    description: str
    features: str
    compute: Callable[[EvalInputs], dict]
    direction: dict[str, str]
    counts_as_quality: bool = True
    offline: bool = False
    stats: bool = False
    other_columns: tuple[str, ...] = ()  # keys compute also adds, ranked neither way (intervals, chance, floors)

    @property
    def outputs(self) -> tuple[str, ...]:
        """The keys ``compute`` adds to a metrics.json entry (a results column each, or one per
        attribute: ``probe_acc.shape``): those of ``direction``, then ``other_columns``."""
        return (*self.direction, *self.other_columns)


METRICS: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    """Add ``metric`` to the registry (a name is registered once)."""
    if metric.name in METRICS:
        raise ValueError(f"metric {metric.name!r} is already registered")
    if not metric.direction or set(metric.direction.values()) - {LOWER, HIGHER}:
        raise ValueError(f"metric {metric.name!r}: direction maps each column to {LOWER!r} or {HIGHER!r}")
    METRICS[metric.name] = metric
    return metric


def check_names(names: list[str], allowed: list[str] | None = None, where: str = "") -> list[str]:
    """``names`` if each is a registered metric (and in ``allowed``); else one clear ValueError,
    its message starting with ``where`` (e.g. ``"--metrics: "``)."""
    allowed = list(METRICS) if allowed is None else allowed
    unknown = sorted(set(names) - set(allowed))
    if unknown or not names:
        found = f"unknown metric(s) {unknown}" if unknown else "no metric given"
        raise ValueError(f"{where}{found}; choose from {','.join(allowed)}")
    return names


def metric_columns(names: list[str]) -> list[str]:
    """The keys the metrics ``names`` add to an evaluation entry (``probe_fd``, ``probe_acc``, ...)."""
    return [column for name in names if name in METRICS for column in METRICS[name].outputs]


def stats_metrics() -> list[str]:
    """Metrics whose reference statistics ``microdit-eval stats`` caches."""
    return [m.name for m in METRICS.values() if m.stats]


def direction(column: str) -> str | None:
    """``lower`` or ``higher`` for a results column of a registered metric (``eval.heldout.fid``;
    ``eval.heldout.probe_acc.colour`` is a ``probe_acc`` column), None for any other column."""
    for part in reversed(column.split(".")):
        for metric in METRICS.values():
            if part in metric.direction:
                return metric.direction[part]
    return None


def quality_columns(rows: list[dict]) -> list[str]:
    """The quality columns present in results ``rows`` (``eval.<name>.<column>``): those of the
    pixel-space metrics (FID family) where measured, otherwise those of the offline metrics."""
    present = sorted({k for r in rows for k, v in r.items() if v is not None and k.startswith("eval.")})
    quality = [m for m in METRICS.values() if m.counts_as_quality]
    for group in ([m for m in quality if not m.offline], [m for m in quality if m.offline]):
        columns = {c for m in group for c in m.direction}  # leaves only: probe_acc.* is not a leaf match
        found = [k for k in present if k.rsplit(".", 1)[-1] in columns]
        if found:
            return found
    return []


CHUNK = 256  # images decoded and measured at a time: a 30k-sample evaluation never holds all its images


def decode(latents: torch.Tensor, autoencoder, batch: int = 64, device="cpu") -> torch.Tensor:
    """Latents -> uint8 images with ``autoencoder`` (a loaded one, or the dataset's name of it)."""
    ae = load_autoencoder(autoencoder).to(device) if isinstance(autoencoder, str) else autoencoder
    return torch.cat([to_uint8(ae.decode(latents[i:i + batch].to(device)).cpu())
                      for i in range(0, len(latents), batch)])


def iter_dataset_images(folder: str | Path, limit: int, device="cpu", chunk: int = CHUNK):
    """uint8 images (n, 3, H, W) of a dataset, ``chunk`` at a time, ``limit`` in all: read from an
    image dataset (whose images must share one size), decoded from a latent one."""
    manifest = load_manifest(folder)
    if manifest.kind == "images":
        from microdit.data.images import IMAGE_EXTS, decode_image
        from microdit.data.shards import iter_shard

        images, seen = [], 0
        for info in manifest.shards:
            for key, members in iter_shard(Path(folder) / info.name):
                ext = next(e for e in IMAGE_EXTS if e in members)
                images.append(torch.from_numpy(np.array(decode_image(members[ext], key))).permute(2, 0, 1))
                seen += 1
                if len(images) == chunk or seen == limit:
                    yield torch.stack(images)
                    images = []
                if seen == limit:
                    return
        if images:
            yield torch.stack(images)
        return
    latents, _, _ = read_dataset(folder, limit)
    ae = load_autoencoder(manifest.autoencoder).to(device)
    for i in range(0, len(latents), chunk):
        yield decode(latents[i:i + chunk], ae, device=device)


def dataset_images(folder: str | Path, limit: int, device="cpu") -> torch.Tensor:
    """uint8 images of a dataset: read from an image dataset, decoded from a latent one."""
    return torch.cat(list(iter_dataset_images(folder, limit, device)))


def reference_stats(folder: str | Path, extractor, limit: int = 50000, device="cpu") -> FeatureStats:
    """Feature statistics of a dataset's images, cached as ``FOLDER/eval_stats/<extractor>-<n>.npz``
    (for a read-only dataset, in the user's cache: :func:`microdit.data.cache.dataset_cache`)."""
    n = min(limit, load_manifest(folder).samples)
    path = dataset_cache(folder, f"eval_stats/{extractor.name}-{n}.npz")
    if path.is_file():
        return FeatureStats.load(path)
    stats = FeatureStats.of(torch.cat([extractor(chunk) for chunk in iter_dataset_images(folder, n, device)]))
    stats.save(path)
    return stats


class EvalInputs:
    """What a metric reads, computed once however many metrics read it: the generated latents
    (N, C, h, w), the evaluation set's reference latents (M, C, h, w) with the prompts' ``labels``
    and ``captions``, other real latents of the set (``real_twin``, for real-vs-real floors), their
    images (decoded with the dataset's ``autoencoder``, ``CHUNK`` at a time), feature extractors by
    name, and the trained probe. ``settings`` is the evaluation's
    :class:`~microdit.eval.evaluate.EvalSettings`; reference statistics are those of
    ``reference_dataset`` (default: the evaluation set; e.g. COCO's real images, not their latents)."""

    def __init__(self, generated: torch.Tensor, reference: torch.Tensor, labels: list[dict], captions: list[str],
                 eval_dataset: str | Path, probe_dataset: str | Path, autoencoder: str, settings, device="cpu",
                 real_twin: torch.Tensor | None = None, reference_dataset: str | Path | None = None,
                 networks: dict | None = None):
        self.generated, self.reference, self.labels, self.captions = generated, reference, labels, captions
        self._memo = dict(networks or {})  # what load_networks built before generation, by _once's keys
        self.real_twin = real_twin
        self.eval_dataset, self.probe_dataset, self.autoencoder = eval_dataset, probe_dataset, autoencoder
        self.reference_dataset = reference_dataset or eval_dataset
        self.settings, self.device = settings, device

    def _once(self, key: tuple, make: Callable):
        """``make()`` the first time ``key`` is asked for on this instance (the memo dies with it,
        unlike functools.cache, which would keep every evaluation's tensors alive)."""
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    @staticmethod
    def load_networks(metrics: list[str], autoencoder: str, settings, device="cpu",
                      probe_dataset: str | Path | None = None) -> dict:
        """The networks ``metrics`` read images through (the dataset's autoencoder, each feature
        extractor) and, given ``probe_dataset``, the probe, built now for the ``networks`` of an
        instance made later: weights that cannot be fetched, or a probe dataset without labels, stop an
        evaluation before its samples are generated (hours for COCO-30K), not after."""
        used = {METRICS[m].features for m in metrics}
        names = used & EXTRACTORS.keys()
        networks = {("autoencoder",): load_autoencoder(autoencoder).to(device)} if names else {}
        networks |= {("extractor", name): EXTRACTORS[name](settings, device) for name in sorted(names)}
        if "probe" in used and probe_dataset:  # after the weights: a fetch that fails costs no probe training
            networks[("probe",)] = _dataset_probe(probe_dataset, settings)
        return networks

    def chunks(self, latents: torch.Tensor):
        """(start, uint8 images) of ``latents`` decoded ``CHUNK`` at a time."""
        ae = self._once(("autoencoder",), lambda: load_autoencoder(self.autoencoder).to(self.device))
        for start in range(0, len(latents), CHUNK):
            yield start, decode(latents[start:start + CHUNK], ae, device=self.device)

    def extractor(self, name: str):
        """The feature network ``name`` of :data:`EXTRACTORS`, built once."""
        return self._once(("extractor", name), lambda: EXTRACTORS[name](self.settings, self.device))

    def features(self, name: str) -> torch.Tensor:
        """(N, F): the generated images in feature space ``name``."""
        return self._once(("features", name), lambda: torch.cat(
            [self.extractor(name)(images) for _, images in self.chunks(self.generated)]))

    def reference_features(self, name: str) -> torch.Tensor:
        """(M, F): the reference images of the same prompts in feature space ``name``."""
        return self._once(("reference", name), lambda: torch.cat(
            [self.extractor(name)(images) for _, images in self.chunks(self.reference)]))

    def reference_stats(self, name: str) -> FeatureStats:
        """Cached statistics of the reference dataset in feature space ``name`` (all its images, at
        most 50,000; :func:`reference_stats`)."""
        return reference_stats(self.reference_dataset, self.extractor(name), device=self.device)

    @property
    def probe(self):
        """The probe of the probe dataset (trained once per dataset and length, then cached)."""
        return self._once(("probe",), lambda: _dataset_probe(self.probe_dataset, self.settings))


def _dataset_probe(folder: str | Path, settings):
    """The probe of ``folder`` at the evaluation's ``settings.probe_steps`` (trained once, then cached)."""
    from microdit.eval.probe import dataset_probe

    return dataset_probe(folder, steps=settings.probe_steps)


EXTRACTORS: dict[str, Callable] = {
    "inception": lambda settings, device: InceptionFeatures(settings.inception_weights, device),
    "clip_fid": lambda settings, device: ClipModel(settings.clip_fid_model, device),
    "clip_score": lambda settings, device: ClipModel(settings.clip_score_model, device),
}


def _probe(inputs: EvalInputs) -> dict:
    from microdit.eval.probe import probe_metrics

    out = probe_metrics(inputs.probe, inputs.generated, inputs.labels, inputs.reference, inputs.real_twin,
                        inputs.settings.seed)
    return {**out, "probe_heldout_acc": inputs.probe.heldout_accuracy}


def _frechet(features: str) -> Callable[[EvalInputs], float]:
    def compute(inputs: EvalInputs) -> float:
        return frechet_distance(FeatureStats.of(inputs.features(features)), inputs.reference_stats(features))
    return compute


def _clip_score(inputs: EvalInputs) -> dict:
    clip = inputs.extractor("clip_score")
    scores = [clip.clip_score(images, inputs.captions[start:start + len(images)])
              for start, images in inputs.chunks(inputs.generated)]
    return {"clip_score": float(torch.cat(scores).mean())}


register(Metric("probe", "offline probe: Fréchet distance and KID in its features (probe_fd, probe_kid; their "
                "real-vs-real floor probe_fd_real, probe_kid_real), the fraction of samples whose attributes "
                "match the prompt (probe_acc.*, probe_acc_mean) and the same against shuffled prompts "
                "(probe_chance.*); not FID", "probe", _probe,
                {"probe_fd": LOWER, "probe_kid": LOWER, "probe_acc_mean": HIGHER, "probe_acc": HIGHER},
                offline=True, other_columns=("probe_acc_low", "probe_acc_high", "probe_chance", "probe_chance_mean",
                                             "probe_fd_real", "probe_kid_real", "probe_heldout_acc")))
register(Metric("fid", "FID: Fréchet distance in InceptionV3 pool features against the evaluation set's statistics",
                "inception", lambda inputs: {"fid": _frechet("inception")(inputs)}, {"fid": LOWER}, stats=True))
register(Metric("clip_fid", "Clip-FID: Fréchet distance in CLIP image features", "clip_fid",
                lambda inputs: {"clip_fid": _frechet("clip_fid")(inputs)}, {"clip_fid": LOWER}, stats=True))
register(Metric("clip_score", "CLIP score: 100 x cosine of each image's and its caption's CLIP features",
                "clip_score", _clip_score, {"clip_score": HIGHER}))


def _kid(inputs: EvalInputs) -> dict:
    mean, std = kernel_inception_distance(inputs.features("inception"), inputs.reference_features("inception"))
    return {"kid": mean, "kid_std": std}


register(Metric("kid", "KID: unbiased squared MMD in InceptionV3 features against the evaluation set's images of the "
                "same prompts (the small-sample companion of FID)", "inception", _kid, {"kid": LOWER}))

