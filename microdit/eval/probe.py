"""Probe metrics: a small classifier trained on a dataset's own labels, working on latents, fully
offline. They are **not** FID: ``probe_fd`` is the Fréchet distance in the probe's feature space
and ``probe_acc`` (GenEval-like) the fraction of generated samples whose predicted attribute
matches the prompt's, per attribute.

Attributes are the categorical fields of the samples' label JSON (strings or integers with at
most ``MAX_VALUES`` distinct values): for the synthetic dataset shape, colour, size, position,
background, count; for cifar-captions the class.

The probe sees at most ``PROBE_GRID`` x ``PROBE_GRID`` positions: a larger latent is first folded
by space-to-depth (``pixel_unshuffle``) with the factor of :func:`fold_factor`. Its three conv
layers then span the same fraction of the image at 64 or 256 tokens: a 3 x 32 x 32 pixel latent
(256 tokens at patch 2) is probed as 12 x 16 x 16, exactly the input of the 64-token datasets of
the same images, so both give the same probe and comparable numbers; unfolded, its receptive
field would cover too little of a 32 x 32 image to tell the shapes apart.

Shapes: N samples, C latent channels, (h, w) latent size, F probe features.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from microdit.data.cache import dataset_cache
from microdit.data.reader import read_dataset
from microdit.files import write_atomic
from microdit.progress import progress

MAX_VALUES = 50
PROBE_GRID = 16
# The probe trains with this many intra-op threads on every machine: the thread count changes how
# CPU kernels split their sums, so a probe trained with another count has other weights and reads
# every metric (probe_fd most) a little differently. Two is what the committed results were made with.
PROBE_THREADS = 2


def attribute_values(labels: list[dict]) -> dict[str, list]:
    """Categorical attributes and their sorted values, from a list of label dicts: str/int fields
    with 2 to ``MAX_VALUES`` values, some value shared by two samples (a field with one value per
    sample, such as a source's file name, identifies samples: there is nothing to generalise)."""
    seen: dict[str, set] = {}
    count: dict[str, int] = {}
    for lab in labels:
        for key, value in lab.items():
            if isinstance(value, (str, int)) and not isinstance(value, bool):
                seen.setdefault(key, set()).add(value)
                count[key] = count.get(key, 0) + 1
    return {k: sorted(v, key=str) for k, v in sorted(seen.items()) if 1 < len(v) <= MAX_VALUES and len(v) < count[k]}


def fold_factor(height: int, width: int) -> int:
    """The space-to-depth factor f of the probe's input: the smallest power of two with
    max(height, width) / f <= PROBE_GRID, lowered to the largest power of two dividing both sides."""
    f = 1
    while max(height, width) > PROBE_GRID * f:
        f *= 2
    while height % f or width % f:
        f //= 2
    return f


class ProbeNet(nn.Module):
    """Conv net on latents: space-to-depth by ``fold``, 3 conv blocks, global average pool -> F
    features -> one head per attribute."""

    def __init__(self, channels: int, heads: dict[str, int], width: int = 64, features: int = 128,
                 fold: int = 1) -> None:
        super().__init__()
        self.channels, self.fold = channels, fold
        self.body = nn.Sequential(
            nn.Conv2d(channels * fold * fold, width, 3, padding=1), nn.GroupNorm(8, width), nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1, stride=2), nn.GroupNorm(8, width), nn.GELU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, stride=2), nn.GroupNorm(8, 2 * width), nn.GELU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, features), nn.GELU())
        self.heads = nn.ModuleDict({k: nn.Linear(features, n) for k, n in heads.items()})

    def features(self, latents: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) -> (N, F)."""
        return self.body(F.pixel_unshuffle(latents, self.fold) if self.fold > 1 else latents)

    def forward(self, latents: torch.Tensor) -> dict[str, torch.Tensor]:
        """(N, C, h, w) -> {attribute: logits (N, values)}."""
        f = self.features(latents)
        return {k: head(f) for k, head in self.heads.items()}


@dataclass
class Probe:
    """A trained probe with its attribute vocabulary and held-out accuracy."""

    net: ProbeNet
    values: dict[str, list]
    heldout_accuracy: dict[str, float]

    def targets(self, labels: list[dict]) -> dict[str, torch.Tensor]:
        """Label dicts -> {attribute: class indices (N,)}; -1 where a sample lacks the attribute."""
        index = {k: {v: i for i, v in enumerate(vals)} for k, vals in self.values.items()}
        return {k: torch.tensor([index[k].get(lab.get(k), -1) for lab in labels]) for k in self.values}

    @torch.no_grad()
    def predict(self, latents: torch.Tensor, batch: int = 512) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(features (N, F), {attribute: predicted index (N,)})."""
        self.net.eval()
        feats, preds = [], {k: [] for k in self.values}
        for start in range(0, len(latents), batch):
            x = latents[start:start + batch].float()
            f = self.net.features(x)
            feats.append(f)
            for k, head in self.net.heads.items():
                preds[k].append(head(f).argmax(dim=1))
        return torch.cat(feats), {k: torch.cat(v) for k, v in preds.items()}

    def hits(self, latents: torch.Tensor, labels: list[dict]) -> dict[str, torch.Tensor]:
        """Per attribute, whether each sample that has it was predicted right (bool, its samples)."""
        _, preds = self.predict(latents)
        out = {}
        for k, target in self.targets(labels).items():
            valid = target >= 0
            if valid.any():
                out[k] = preds[k][valid] == target[valid]
        return out

    def accuracy(self, latents: torch.Tensor, labels: list[dict]) -> dict[str, float]:
        """Per-attribute fraction of samples whose predicted attribute equals their label."""
        return {k: float(v.float().mean()) for k, v in self.hits(latents, labels).items()}

    def save(self, path: Path) -> None:
        """Write the probe (state dict + vocabulary + held-out accuracy)."""
        buffer = io.BytesIO()
        torch.save({"state": self.net.state_dict(), "values": self.values, "heldout": self.heldout_accuracy,
                    "channels": self.net.channels, "fold": self.net.fold}, buffer)
        write_atomic(path, buffer.getvalue())

    @classmethod
    def load(cls, path: Path) -> Probe:
        """Read a probe written by :meth:`save`."""
        data = torch.load(path, weights_only=True)
        net = ProbeNet(data["channels"], {k: len(v) for k, v in data["values"].items()}, fold=data["fold"])
        net.load_state_dict(data["state"])
        return cls(net, data["values"], data["heldout"])


def train_probe(latents: torch.Tensor, labels: list[dict], steps: int = 2000, batch: int = 128, lr: float = 3e-3,
                seed: int = 0, heldout_fraction: float = 0.1) -> Probe:
    """Train a probe on (latents, labels) with :data:`PROBE_THREADS` threads, whatever the caller's
    setting (restored after); a held-out part measures its accuracy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(PROBE_THREADS)
    try:
        return _train_probe(latents, labels, steps, batch, lr, seed, heldout_fraction)
    finally:
        torch.set_num_threads(threads)


def _train_probe(latents: torch.Tensor, labels: list[dict], steps: int, batch: int, lr: float, seed: int,
                 heldout_fraction: float) -> Probe:
    values = attribute_values(labels)
    if not values:
        raise ValueError("the labels have no categorical attribute to probe (need a str/int field with 2-50 values, "
                         "each shared by several samples)")
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    order = torch.randperm(len(latents), generator=g)
    n_held = max(1, int(len(latents) * heldout_fraction))
    held, train = order[:n_held], order[n_held:]
    heads = {k: len(v) for k, v in values.items()}
    probe = Probe(ProbeNet(latents.shape[1], heads, fold=fold_factor(*latents.shape[2:])), values, {})
    targets = probe.targets(labels)
    opt = torch.optim.AdamW(probe.net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    probe.net.train()
    for _ in progress(range(steps), desc="probe training", unit="step"):
        idx = train[torch.randint(0, len(train), (batch,), generator=g)]
        logits = probe.net(latents[idx].float())
        loss = sum(F.cross_entropy(logits[k], targets[k][idx], ignore_index=-1) for k in logits)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    probe.heldout_accuracy = probe.accuracy(latents[held], [labels[i] for i in held.tolist()])
    return probe


def probe_path(folder: str | Path, steps: int) -> Path:
    """Where the probe of a dataset trained for ``steps`` steps is cached: ``FOLDER/probe/probe-{steps}steps.pt``
    (for a read-only dataset, in the user's cache: :func:`microdit.data.cache.dataset_cache`)."""
    return dataset_cache(folder, f"probe/probe-{steps}steps.pt")


def dataset_probe(folder: str | Path, steps: int = 2000, limit: int = 20000) -> Probe:
    """The probe of a latent dataset trained for ``steps`` steps on up to ``limit`` samples, trained
    once and cached at :func:`probe_path` with a JSON summary beside it (a probe trained for other
    steps is another file: its accuracies and feature scale differ)."""
    path = probe_path(folder, steps)
    if path.is_file():
        return Probe.load(path)
    latents, labels, _ = read_dataset(folder, limit)
    try:
        probe = train_probe(latents, labels, steps=steps)
    except ValueError as err:
        raise ValueError(f"probe dataset {folder}: {err}; the probe metrics need one (the synthetic set's shape "
                         "and colour, cifar-captions' class): use another probe dataset, or metrics that need no "
                         "labels (fid, clip_fid, clip_score, kid)") from None
    probe.save(path)
    summary = {"values": probe.values, "heldout_accuracy": probe.heldout_accuracy, "samples": len(latents),
               "steps": steps, "fold": probe.net.fold}
    write_atomic(path.with_suffix(".json"), json.dumps(summary, indent=2).encode())
    return probe


def distinct_attributes(labels: list[dict], names: list[str]) -> list[str]:
    """``names`` without the attributes that duplicate an earlier one: an attribute whose values
    are in one-to-one correspondence with an earlier attribute's over ``labels`` (the synthetic
    dataset's ``class`` is its ``shape`` by index) measures the same thing twice."""
    kept = []
    for name in names:
        values = [lab.get(name) for lab in labels]
        if not any(len(set(zip(values, (lab.get(k) for lab in labels), strict=True))) == len(set(values))
                   == len({lab.get(k) for lab in labels}) for k in kept):
            kept.append(name)
    return kept


def bootstrap_interval(hits: dict[str, torch.Tensor], seed: int = 0, resamples: int = 1000,
                       confidence: float = 0.95) -> tuple[dict[str, float], dict[str, float]]:
    """Percentile bootstrap over the samples (prompts) of each attribute's accuracy: (low, high)
    bounds of its ``confidence`` interval, from ``resamples`` draws with replacement."""
    g = torch.Generator().manual_seed(seed)
    low, high = {}, {}
    for k, h in hits.items():
        draws = h.float()[torch.randint(0, len(h), (resamples, len(h)), generator=g)].mean(dim=1)  # (resamples,)
        tail = (1 - confidence) / 2
        low[k], high[k] = float(draws.quantile(tail)), float(draws.quantile(1 - tail))
    return low, high


def probe_metrics(probe: Probe, generated: torch.Tensor, prompt_labels: list[dict], reference: torch.Tensor,
                  real_twin: torch.Tensor | None = None, seed: int = 0) -> dict:
    """The probe's reading of generated latents (N, C, h, w) for prompts with ``prompt_labels``
    against the evaluation set's real latents of the same prompts (``reference``):

    - ``probe_fd``: Fréchet distance in probe features; ``probe_kid``: KID there (unbiased at
      small N); with ``real_twin`` (other real latents of the set, as many as there are
      references) the same two between real and real, ``probe_fd_real`` / ``probe_kid_real``: the
      floor a generator is measured against at this sample count (not measured from fewer: both
      distances grow as the count falls, so a floor from a smaller twin would read too high);
    - ``probe_acc.<attribute>``: the fraction of samples whose predicted attribute is the prompt's,
      with its 95% bootstrap interval over the prompts (``probe_acc_low`` / ``probe_acc_high``:
      the evaluation's own uncertainty, for one seed);
      ``probe_acc_mean`` over the distinct attributes (:func:`distinct_attributes`; of a named
      attribute and its integer code, such as ``shape`` and ``class``, the name counts);
    - ``probe_chance.<attribute>`` / ``probe_chance_mean``: the same accuracies against the
      prompts shuffled (seeded by ``seed``): chance for these samples and this prompt
      distribution, measured rather than assumed to be 1 / number of values."""
    from microdit.eval.frechet import FeatureStats, frechet_distance, kernel_inception_distance

    gen_features, _ = probe.predict(generated)
    ref_features, _ = probe.predict(reference)
    hits = probe.hits(generated, prompt_labels)
    acc = {k: float(v.float().mean()) for k, v in hits.items()}
    low, high = bootstrap_interval(hits, seed)
    order = torch.randperm(len(prompt_labels), generator=torch.Generator().manual_seed(seed)).tolist()
    chance = probe.accuracy(generated, [prompt_labels[i] for i in order])
    named_first = sorted(acc, key=lambda k: (not isinstance(prompt_labels[0].get(k), str), k))  # shape before class
    distinct = distinct_attributes(prompt_labels, named_first)
    out = {"probe_fd": frechet_distance(FeatureStats.of(gen_features), FeatureStats.of(ref_features)),
           "probe_kid": kernel_inception_distance(gen_features, ref_features)[0]}
    if distinct:  # prompts that name none of the probe's attributes (another dataset's captions): no accuracy
        out.update({"probe_acc": acc, "probe_acc_mean": float(np.mean([acc[k] for k in distinct])),
                    "probe_acc_low": low, "probe_acc_high": high,
                    "probe_chance": chance, "probe_chance_mean": float(np.mean([chance[k] for k in distinct]))})
    if real_twin is not None and len(real_twin) == len(reference) >= 2:
        twin_features, _ = probe.predict(real_twin)
        out["probe_fd_real"] = frechet_distance(FeatureStats.of(twin_features), FeatureStats.of(ref_features))
        out["probe_kid_real"] = kernel_inception_distance(twin_features, ref_features)[0]
    return out
