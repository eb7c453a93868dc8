"""Reading latent datasets for training: a deterministic, resumable stream of batches.

The sample order is a pure function of (seed, manifests, weights) and **independent of the
number of processes, accumulation steps and workers**: global position p of the stream maps to
one sample; global batch j (one optimizer step) is positions [j*GB, (j+1)*GB), cut into
world_size x accum slices of B; accumulation step a of rank r reads slice a * world_size + r.
So 1 process and 2 processes at the same global batch see the same samples, and resuming from
"global batches consumed" is exact.

Order per dataset and epoch: ``shuffle="global"`` (a full permutation) or ``shuffle="buffer"``
(shards in a permuted order, samples through a shuffle buffer of ``shuffle_buffer`` — the
webdataset order, simulated on indices so it needs no reading). Several datasets are mixed by
drawing the dataset of each position with the given weights. Samples are read by random access
into the tar shards (each shard's member offsets are indexed once per worker); nothing that is
skipped is ever decoded.

Shapes: B per-rank batch, C latent channels, (h, w) latent size, L caption tokens, Dy width.
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from microdit.data.manifest import DataError, Manifest
from microdit.data.remote import DEFAULT_LIMIT_GB, ShardCache, dataset_manifest, file_url, is_remote
from microdit.data.shards import load_npy
from microdit.data.synthetic import SCENES

SHUFFLES = ("global", "buffer")
MIXES = ("weights", "samples")
PREPARE = ("none", "synthetic")
BLOCK = 1 << 14  # positions per block of mixture draws
MEMBERS = ("text.npy", "mask.npy", "txt", "json")  # and the latents of the resolution read


@dataclass
class DataConfig:
    """The latent datasets a run reads and how (:meth:`LatentBatches.from_config`).

    ``folders`` are mixed with ``weights`` (None: equal), or with ``mix="samples"`` in proportion to
    their sample counts (every image of the union equally often: the paper's one stream over its
    five training sets, Sec. 3.4); ``shuffle`` is ``global`` or ``buffer``
    (webdataset order, ``shuffle_buffer`` samples); ``caption_dropout`` replaces a caption by the
    all-zero embedding (the unconditional input of classifier-free guidance; the paper uses 0.1);
    ``use_text_mask`` masks caption padding in attention (the reference implementation attends
    it). ``prepare="synthetic"`` builds and encodes the synthetic dataset into ``folders[0]`` when
    it has no manifest (``prepare_samples`` images of ``prepare_size`` pixels, drawn with
    ``prepare_seed``: a property of the data, not of the run, so runs with other ``trainer.seed``
    values train on the same images; held-out splits use ``prepare_seed + 1``), of
    ``prepare_scene`` (``mixed``: every attribute varies; ``one_object``: one large object in the
    middle of a white background, where the named shape is learned at CPU budgets; see
    :mod:`microdit.data.synthetic`). A folder built with another seed or scene is refused, and so
    is a folder holding latents of another source (train on those with ``prepare="none"``).
    A folder may be a URL (:mod:`microdit.data.remote`), its shards cached in ``cache_dir`` (None:
    ``$MICRODIT_SHARD_CACHE`` or ``~/.cache/microdit/shards``), ``cache_gb`` GB at most. ``resolution``
    (pixels) picks those latents of datasets encoded at several (None: their first).
    """

    folders: list[str] = field(default_factory=lambda: ["data/synthetic"])
    weights: list[float] | None = None
    mix: str = "weights"
    shuffle: str = "global"
    shuffle_buffer: int = 1000
    caption_dropout: float = 0.1
    num_workers: int = 0
    skip_bad_samples: bool = False
    use_text_mask: bool = False
    prepare: str = "none"
    prepare_samples: int = 20000
    prepare_size: int = 32
    prepare_seed: int = 0
    prepare_scene: str = "mixed"
    cache_dir: str | None = None
    cache_gb: float = DEFAULT_LIMIT_GB
    resolution: int | None = None

    def problems(self) -> list[str]:
        """One message per invalid field (empty when valid)."""
        out = []
        if not self.folders:
            out.append("folders is empty: name at least one latent dataset folder")
        if self.weights is not None and (len(self.weights) != len(self.folders) or any(w < 0 for w in self.weights)
                                         or sum(self.weights) <= 0):
            out.append(f"weights must be {len(self.folders)} non-negative numbers (one per folder) with a positive "
                       f"sum, got {self.weights}")
        if self.mix not in MIXES or (self.mix == "samples" and self.weights is not None):
            out.append(f"mix must be one of {MIXES}, and weights only go with mix=weights; got mix={self.mix!r}, "
                       f"weights={self.weights}")
        if self.shuffle not in SHUFFLES:
            out.append(f"shuffle must be one of {SHUFFLES}, got {self.shuffle!r}")
        if self.shuffle_buffer < 1 or self.num_workers < 0:
            out.append(f"need shuffle_buffer >= 1 and num_workers >= 0, got {self.shuffle_buffer}, {self.num_workers}")
        if not 0 <= self.caption_dropout < 1:
            out.append(f"caption_dropout must be in [0, 1), got {self.caption_dropout}")
        if self.prepare not in PREPARE:
            out.append(f"prepare must be one of {PREPARE}, got {self.prepare!r}")
        if self.resolution is not None and self.resolution < 1:
            out.append(f"resolution must be a positive number of pixels, got {self.resolution}")
        if self.cache_gb <= 0:
            out.append(f"cache_gb must be positive, got {self.cache_gb}")
        if self.prepare_scene not in SCENES:
            out.append(f"prepare_scene must be one of {SCENES}, got {self.prepare_scene!r}")
        if self.prepare_samples < 1 or self.prepare_seed < 0:
            out.append(f"need prepare_samples >= 1 and prepare_seed >= 0, got {self.prepare_samples}, "
                       f"{self.prepare_seed}")
        return out


@dataclass
class _Source:
    folder: str  # a path, or the URL of a remote dataset
    manifest: Manifest  # as seen at the resolution read (Manifest.at)
    offsets: np.ndarray  # (S + 1,) cumulative sample counts of the shards
    latent: str  # the tar member of the latents read


class _ShardIndex:
    """Per-worker lazy index of tar members: shard -> list of (key, {ext: (offset, size)})."""

    def __init__(self) -> None:
        self._index: dict[Path, list] = {}

    def sample(self, path: Path, i: int, expected: int) -> tuple[str, dict[str, bytes]]:
        if path not in self._index:
            self._index[path] = self._scan(path, expected)
        key, members = self._index[path][i]
        out = {}
        with open(path, "rb") as f:
            for ext, (offset, size) in members.items():
                f.seek(offset)
                out[ext] = f.read(size)
                if len(out[ext]) != size:
                    raise DataError(f"shard {path}: sample {key!r} is truncated ({ext})")
        return key, out

    @staticmethod
    def _scan(path: Path, expected: int) -> list:
        if not path.is_file():
            raise DataError(f"shard {path} listed in the manifest is missing")
        samples, by_key = [], {}
        try:
            with tarfile.open(path, "r:") as tar:
                for info in tar:
                    if not info.isfile():
                        continue
                    key, _, ext = info.name.rsplit("/", 1)[-1].partition(".")
                    if key not in by_key:
                        by_key[key] = {}
                        samples.append((key, by_key[key]))
                    by_key[key][ext] = (info.offset_data, info.size)
        except (tarfile.TarError, EOFError, OSError) as err:
            raise DataError(f"shard {path}: corrupt or truncated tar ({err})") from None
        if len(samples) != expected:
            raise DataError(f"shard {path} holds {len(samples)} samples, its manifest entry says {expected}: "
                            "truncated or replaced")
        return samples


def _buffer_order(rng: np.random.Generator, shard_order: np.ndarray, offsets: np.ndarray, buffer: int) -> np.ndarray:
    """Sample indices in webdataset order: shards in ``shard_order``, then a shuffle buffer."""
    stream = np.concatenate([np.arange(offsets[s], offsets[s + 1]) for s in shard_order])
    out = np.empty_like(stream)
    pool: list[int] = []
    n = 0
    for idx in stream:
        pool.append(int(idx))
        if len(pool) >= buffer:
            j = rng.integers(len(pool))
            pool[j], pool[-1] = pool[-1], pool[j]
            out[n] = pool.pop()
            n += 1
    rng.shuffle(pool)
    out[n:] = pool
    return out


class LatentBatches(IterableDataset):
    """Infinite, deterministic stream of collated batches from one or more latent datasets.

    Each item is a dict: ``latent`` (B, C, h, w) float32, ``text`` (B, L, Dy) float32,
    ``text_mask`` (B, L) bool, ``caption`` list[str], ``labels`` list[dict], ``key`` list[str],
    ``batch_index`` (global batch number), ``accum_index`` and ``bad_samples`` (skipped so far by
    this worker). ``batch_size`` is B, one slice; each global batch yields ``accum`` items in turn.
    Use with :func:`make_loader` (``batch_size=None``).
    """

    def __init__(self, folders: str | Path | list, batch_size: int, weights: list[float] | None = None,
                 seed: int = 0, shuffle: str = "global", shuffle_buffer: int = 1000, caption_dropout: float = 0.0,
                 rank: int = 0, world_size: int = 1, accum: int = 1, start_batch: int = 0,
                 skip_bad_samples: bool = False, cache: ShardCache | None = None, mix: str = "weights",
                 resolution: int | None = None) -> None:
        super().__init__()
        folders = [folders] if isinstance(folders, (str, Path)) else list(folders)
        if not folders:
            raise DataError("no dataset folders given")
        weights = [1.0] * len(folders) if weights is None else list(weights)
        if len(weights) != len(folders) or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise DataError(f"weights must be {len(folders)} non-negative numbers with a positive sum, got {weights}")
        if shuffle not in SHUFFLES:
            raise DataError(f"shuffle must be one of {SHUFFLES}, got {shuffle!r}")
        if not 0 <= caption_dropout < 1:
            raise DataError(f"caption_dropout must be in [0, 1), got {caption_dropout}")
        if batch_size < 1 or accum < 1 or not 0 <= rank < world_size:
            raise DataError(f"need batch_size >= 1, accum >= 1 and 0 <= rank < world_size, got {batch_size}, "
                            f"{accum}, {rank}, {world_size}")
        self.sources = []
        self.cache = cache or ShardCache()
        for folder in folders:
            manifest = dataset_manifest(folder)
            if manifest.kind != "latents" or not manifest.complete or manifest.samples == 0:
                raise DataError(f"{folder}: not a complete, non-empty latent dataset (kind {manifest.kind!r}, "
                                f"complete {manifest.complete}, {manifest.samples} samples)")
            offsets = np.concatenate([[0], np.cumsum([s.samples for s in manifest.shards])])
            try:
                seen = manifest.at(resolution)
            except DataError as err:
                raise DataError(f"{folder}: {err}") from None
            self.sources.append(_Source(str(folder), seen, offsets, manifest.latent_member(resolution)))
        first = self.sources[0].manifest
        for src in self.sources[1:]:
            if (src.manifest.latent_shape, src.manifest.text_shape) != (first.latent_shape, first.text_shape):
                raise DataError(f"cannot mix {src.folder} (latents {src.manifest.latent_shape}, text "
                                f"{src.manifest.text_shape}) with {self.sources[0].folder} (latents "
                                f"{first.latent_shape}, text {first.text_shape})")
        if mix == "samples":
            weights = [float(src.manifest.samples) for src in self.sources]
        elif mix != "weights":
            raise DataError(f"mix must be one of {MIXES}, got {mix!r}")
        self.weights = np.asarray(weights, dtype=np.float64) / sum(weights)
        self.batch_size, self.seed, self.shuffle, self.shuffle_buffer = batch_size, seed, shuffle, shuffle_buffer
        self.caption_dropout, self.rank, self.world_size, self.accum = caption_dropout, rank, world_size, accum
        self.start_batch, self.skip_bad_samples = start_batch, skip_bad_samples
        self._orders: dict[tuple[int, int], np.ndarray] = {}
        self._block_counts = {0: np.zeros(len(self.sources), dtype=np.int64)}
        self._index = _ShardIndex()
        self.bad_samples = 0

    @classmethod
    def from_config(cls, cfg: DataConfig, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                    accum: int = 1, start_batch: int = 0) -> LatentBatches:
        """The stream ``cfg`` describes: rank ``rank`` of ``world_size`` reads slices of
        ``batch_size`` (global batch = batch_size x world_size x accum), from global batch
        ``start_batch`` on."""
        return cls(cfg.folders, batch_size, cfg.weights, seed, cfg.shuffle, cfg.shuffle_buffer, cfg.caption_dropout,
                   rank, world_size, accum, start_batch, cfg.skip_bad_samples, ShardCache(cfg.cache_dir, cfg.cache_gb),
                   cfg.mix, cfg.resolution)

    @property
    def manifest(self) -> Manifest:
        """The first dataset's manifest (all mixed datasets share shapes)."""
        return self.sources[0].manifest

    # -- the global order -------------------------------------------------------------------------
    def _epoch_order(self, s: int, epoch: int) -> np.ndarray:
        if (s, epoch) not in self._orders:
            self._orders = {k: v for k, v in self._orders.items() if k[0] != s}  # keep one epoch per dataset
            src = self.sources[s]
            rng = np.random.default_rng([self.seed, s, epoch])
            n = int(src.offsets[-1])
            if self.shuffle == "global":
                order = rng.permutation(n)
            else:
                order = _buffer_order(rng, rng.permutation(len(src.manifest.shards)), src.offsets, self.shuffle_buffer)
            self._orders[(s, epoch)] = order
        return self._orders[(s, epoch)]

    def _block_sources(self, block: int) -> np.ndarray:
        if len(self.sources) == 1:
            return np.zeros(BLOCK, dtype=np.int64)
        rng = np.random.default_rng([self.seed, 1_000_003, block])
        return rng.choice(len(self.sources), size=BLOCK, p=self.weights)

    def _used_before(self, block: int) -> np.ndarray:
        """Samples drawn from each dataset before ``block`` (cached, extended incrementally)."""
        known = max(b for b in self._block_counts if b <= block)
        used = self._block_counts[known].copy()
        for b in range(known, block):
            used += np.bincount(self._block_sources(b), minlength=len(self.sources))
            self._block_counts[b + 1] = used.copy()
        return used

    def _positions(self, start: int, count: int) -> list[tuple[int, int]]:
        """(dataset, sample index) of global positions [start, start + count)."""
        first_block = start // BLOCK
        used = self._used_before(first_block)
        out = []
        block, choices = first_block, self._block_sources(first_block)
        used += np.bincount(choices[: start - block * BLOCK], minlength=len(self.sources))
        for p in range(start, start + count):
            if p // BLOCK != block:
                block, choices = p // BLOCK, self._block_sources(p // BLOCK)
                self._block_counts[block] = used.copy()
            s = int(choices[p - block * BLOCK])
            q = int(used[s])
            used[s] += 1
            n = int(self.sources[s].offsets[-1])
            out.append((s, int(self._epoch_order(s, q // n)[q % n])))
        return out

    # -- reading ----------------------------------------------------------------------------------
    def _read(self, s: int, index: int) -> dict | None:
        src = self.sources[s]
        shard = int(np.searchsorted(src.offsets, index, side="right") - 1)
        info = src.manifest.shards[shard]
        remote = is_remote(src.folder)
        path = self.cache.local(src.folder, info) if remote else Path(src.folder) / info.name
        key, members = self._index.sample(path, index - int(src.offsets[shard]), info.samples)
        where = f"shard {file_url(src.folder, info.name) if remote else path}: sample {key!r}"
        try:
            return self._decode(members, where, src.manifest, src.latent) | {"key": key}
        except DataError:
            if not self.skip_bad_samples:
                raise
            self.bad_samples += 1
            return None

    @staticmethod
    def _decode(members: dict[str, bytes], where: str, manifest: Manifest, latent_member: str) -> dict:
        missing = [m for m in (latent_member, *MEMBERS) if m not in members]
        if missing:
            raise DataError(f"{where} lacks {missing}")
        latent = load_npy(members[latent_member], f"{where} latent")
        text = load_npy(members["text.npy"], f"{where} text")
        mask = load_npy(members["mask.npy"], f"{where} mask")
        for name, array, shape, kinds in (("latent", latent, manifest.latent_shape, "f"),
                                          ("text", text, manifest.text_shape, "f"),
                                          ("mask", mask, manifest.text_shape[:1], "b")):
            if list(array.shape) != list(shape) or array.dtype.kind != kinds:
                raise DataError(f"{where}: {name} is {array.dtype} {list(array.shape)}, expected shape {list(shape)} "
                                f"({'float' if kinds == 'f' else 'bool'})")
            if kinds == "f" and not np.isfinite(array).all():
                raise DataError(f"{where}: {name} contains NaN or Inf")
        try:
            labels = json.loads(members["json"])
            caption = members["txt"].decode("utf-8")
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DataError(f"{where}: unreadable caption or labels ({err})") from None
        return {"latent": latent, "text": text, "mask": mask, "caption": caption, "labels": labels}

    def batch(self, j: int, accum_index: int = 0) -> dict:
        """This rank's slice of global batch ``j`` for accumulation step ``accum_index``."""
        gb = self.batch_size * self.world_size * self.accum
        start = j * gb + (accum_index * self.world_size + self.rank) * self.batch_size
        samples = [self._read(s, i) for s, i in self._positions(start, self.batch_size)]
        keep = [k for k, x in enumerate(samples) if x is not None]
        samples = [samples[k] for k in keep]
        if not samples:
            raise DataError(f"every sample of batch {j} was bad")
        text = torch.from_numpy(np.stack([x["text"] for x in samples])).float()
        mask = torch.from_numpy(np.stack([x["mask"] for x in samples]))
        if self.caption_dropout > 0:
            drop = np.random.default_rng([self.seed, 7, j]).random(gb)[start - j * gb:][: self.batch_size][keep]
            drop = torch.from_numpy(drop < self.caption_dropout)
            text[drop] = 0.0
            mask[drop] = True
        return {"latent": torch.from_numpy(np.stack([x["latent"] for x in samples])).float(),
                "text": text, "text_mask": mask,
                "caption": [x["caption"] for x in samples], "labels": [x["labels"] for x in samples],
                "key": [x["key"] for x in samples], "batch_index": j, "accum_index": accum_index,
                "bad_samples": self.bad_samples}

    def __iter__(self):
        info = get_worker_info()
        workers, worker = (1, 0) if info is None else (info.num_workers, info.id)
        item = self.start_batch * self.accum + worker  # worker w serves items start + w, start + w + W, ...
        while True:
            yield self.batch(*divmod(item, self.accum))
            item += workers


def make_loader(dataset: LatentBatches, num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """A DataLoader over the batch stream (in-order round robin over workers keeps it deterministic);
    ``pin_memory`` for asynchronous copies to a GPU."""
    return DataLoader(dataset, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                      persistent_workers=False, prefetch_factor=4 if num_workers else None)


def read_dataset(folder: str | Path, limit: int | None = None, seed: int = 0,
                 resolution: int | None = None) -> tuple[torch.Tensor, list[dict], list]:
    """Up to ``limit`` samples of a latent dataset in a fixed (seeded) order, all in memory:
    latents (N, C, h, w), labels, and [caption embeddings (N, L, Dy), masks (N, L), captions]."""
    manifest = dataset_manifest(folder)
    n = manifest.samples if limit is None else min(limit, manifest.samples)
    reader = LatentBatches(folder, batch_size=min(n, 1024), seed=seed, resolution=resolution)
    latents, labels, texts, masks, captions = [], [], [], [], []
    while sum(len(x) for x in latents) < n:
        b = reader.batch(len(latents))  # batch j, j = the batches read so far
        latents.append(b["latent"])
        labels += b["labels"]
        texts.append(b["text"])
        masks.append(b["text_mask"])
        captions += b["caption"]
    return torch.cat(latents)[:n], labels[:n], [torch.cat(texts)[:n], torch.cat(masks)[:n], captions[:n]]
