"""The ``manifest.json`` beside every dataset's shards: what the samples are and how to check them.

Two kinds of dataset share the format:
- ``images``: image + caption shards (``KEY.png|jpg``, ``KEY.txt``, ``KEY.json``), the input of encoding;
  ``image_size`` is null when the images keep their own sizes (``microdit-data prepare``);
- ``latents``: training shards (``KEY.latent.npy`` fp16, ``KEY.text.npy`` fp16, ``KEY.mask.npy``,
  ``KEY.txt``, ``KEY.json``), what the trainer reads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from microdit.files import not_a_folder, write_atomic

MANIFEST = "manifest.json"
KINDS = ("images", "latents")


class DataError(ValueError):
    """Bad data: names the file (and sample key) and what was expected."""


@dataclass
class ShardInfo:
    """One shard: file name (relative to the dataset folder), sample count, size and sha256."""

    name: str
    samples: int
    bytes: int
    sha256: str


@dataclass
class Manifest:
    """Description of a sharded dataset."""

    kind: str
    samples: int = 0
    shards: list[ShardInfo] = field(default_factory=list)
    image_size: list[int] | None = None  # [H, W] of images (images) or of the source images (latents)
    label_names: list[str] = field(default_factory=list)  # class names, index = label["class"]
    autoencoder: str | None = None
    latent_shape: list[int] | None = None  # [C, h, w] (of the first resolution when there are several)
    latent_scale: float | None = None
    text_encoder: str | None = None
    text_shape: list[int] | None = None  # [L, Dy]
    source: str | None = None  # where the samples came from (builder, source folder, ...)
    licence: str | None = None  # the source's licence terms (prepared datasets)
    counts: dict[str, int] = field(default_factory=dict)  # images seen, kept and dropped by reason (prepare)
    empty_units: list[str] = field(default_factory=list)  # source units of which nothing was kept (prepare)
    resolutions: dict[str, list[int]] = field(default_factory=dict)  # pixels -> [C, h, w]: latent_<px>.npy members
    complete: bool = True

    def to_json(self) -> str:
        """Pretty JSON text."""
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_dict(cls, values: dict, where: str, check_total: bool = True) -> Manifest:
        """Parse, naming ``where`` (the file) on any problem; with ``check_total``, ``samples``
        must be the sum of the shards' counts."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise DataError(f"{where}: unknown manifest field(s) {unknown}")
        try:
            shards = [ShardInfo(**s) for s in values.get("shards", [])]
            manifest = cls(**{**values, "shards": shards})
        except TypeError as err:
            raise DataError(f"{where}: malformed manifest ({err})") from None
        if manifest.kind not in KINDS:
            raise DataError(f"{where}: kind must be one of {KINDS}, got {manifest.kind!r}")
        problems = _field_problems(manifest)
        if problems:
            raise DataError(f"{where}: " + "; ".join(problems))
        if manifest.kind == "latents" and (manifest.latent_shape is None or manifest.text_shape is None):
            raise DataError(f"{where}: a latents manifest needs latent_shape and text_shape")
        if manifest.complete and not manifest.shards:
            raise DataError(f"{where}: a complete dataset must list its shards, got none")
        if check_total and manifest.complete and manifest.samples != sum(s.samples for s in manifest.shards):
            counts = ", ".join(f"shards[{i}].samples={s.samples}" for i, s in enumerate(manifest.shards[:8]))
            more = ", ..." if len(manifest.shards) > 8 else ""
            raise DataError(f"{where}: samples is {manifest.samples} but shards[].samples add up to "
                            f"{sum(s.samples for s in manifest.shards)} ({counts}{more}): the total or a shard's "
                            f"count is wrong (microdit-data verify {Path(where).parent} names a wrong shard count)")
        return manifest


    def at(self, resolution: int | None) -> Manifest:
        """This manifest as a reader of ``resolution`` sees it: the latent shape and image size of
        that resolution of a multi-resolution dataset (None: its first; a single-resolution dataset
        is itself at None or at its own image size)."""
        if not self.resolutions:
            if resolution is None or self.image_size == [resolution, resolution]:
                return self
            raise DataError(f"the dataset holds latents of {self.image_size} px images only, not {resolution} px "
                            "(encode with --resolutions to hold several)")
        key = str(resolution) if resolution is not None else next(iter(self.resolutions))
        if key not in self.resolutions:
            raise DataError(f"the dataset holds resolutions {sorted(self.resolutions, key=int)} px, not {key}")
        return dataclasses.replace(self, latent_shape=list(self.resolutions[key]), image_size=[int(key), int(key)])

    def latent_member(self, resolution: int | None) -> str:
        """The tar member holding a sample's latents at ``resolution``."""
        if not self.resolutions:
            return "latent.npy"
        return f"latent_{resolution if resolution is not None else next(iter(self.resolutions))}.npy"


def _is_int(value, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _field_problems(m: Manifest) -> list[str]:
    """One message per manifest field of the wrong type (each names the field and what it expects)."""
    out = []
    for name, length in (("latent_shape", 3), ("text_shape", 2), ("image_size", 2)):
        value = getattr(m, name)
        if value is not None and not (isinstance(value, list) and len(value) == length
                                      and all(_is_int(v, 1) for v in value)):
            out.append(f"{name} must be a list of {length} positive integers, got {value!r}")
    if not isinstance(m.resolutions, dict) or not all(
            isinstance(k, str) and k.isdigit() and isinstance(v, list) and len(v) == 3 and all(_is_int(x, 1) for x in v)
            for k, v in m.resolutions.items()):
        out.append(f"resolutions must map pixel sizes (\"256\") to latent shapes [C, h, w], got {m.resolutions!r}")
    if not _is_int(m.samples):
        out.append(f"samples must be a non-negative integer, got {m.samples!r}")
    for i, shard in enumerate(m.shards):
        if not (isinstance(shard.name, str) and shard.name):
            out.append(f"shards[{i}].name must be a file name, got {shard.name!r}")
        for name in ("samples", "bytes"):
            if not _is_int(getattr(shard, name)):
                out.append(f"shards[{i}].{name} must be a non-negative integer, got {getattr(shard, name)!r}")
    return out


def from_download(folder: str | Path, source: str = "SOURCE") -> str:
    """How a download in ``folder`` (the paper's five sets, COCO: :mod:`microdit.data.sources`)
    becomes a dataset: the command, said alike wherever a folder without a manifest is met."""
    return f"microdit-data prepare {source} OUT --from {folder}"


def no_manifest(folder: str | Path) -> str:
    """Why an existing ``folder`` without ``manifest.json`` is no dataset, and how a download becomes one."""
    return (f"{Path(folder) / MANIFEST} is missing: not a microdit dataset folder (or its writing never finished); "
            f"a download of one of the paper's sets becomes one with {from_download(folder)}")


def load_manifest(folder: str | Path, check_total: bool = True) -> Manifest:
    """Read ``folder/manifest.json`` with clear errors for a missing or malformed file
    (``check_total``: see :meth:`Manifest.from_dict`)."""
    path = Path(folder) / MANIFEST
    if not Path(folder).is_dir():
        raise DataError(f"dataset folder {folder} {not_a_folder(folder)}")
    if not path.is_file():
        raise DataError(no_manifest(folder))
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(values, dict):
        raise DataError(f"{path}: a manifest is a JSON object, got {type(values).__name__}")
    return Manifest.from_dict(values, str(path), check_total)


def save_manifest(folder: str | Path, manifest: Manifest) -> None:
    """Write ``folder/manifest.json`` atomically."""
    write_atomic(Path(folder) / MANIFEST, manifest.to_json().encode())


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
