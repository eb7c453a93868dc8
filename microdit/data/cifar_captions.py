"""cifar-captions: image-caption pairs whose caption names exactly one CIFAR-10 class.

The paper built it from COYO-700M; it was never released. Our construction (see
experiments/README.md, Method: cifar-captions):
1. keep a pair if its caption mentions exactly one CIFAR-10 class, matched case-insensitively on
   whole words over the class name and a few common synonyms and plurals (``CLASS_WORDS``);
   captions naming two classes are dropped as ambiguous, and counted;
2. keep images whose shorter side is at least ``min_side`` (256 in the paper);
3. resize the shorter side to ``size`` and centre-crop a square; the class index is the label.
The encoding to latents is the same step as for any dataset (``microdit-data encode``).

Sources: (a) an img2dataset dump — webdataset tars (image + ``.txt``) or parquet files with an
image-bytes column and a caption column; (b) an image folder ``ROOT/<class>/*.jpg|png`` with
captions from templates or a captions file; (c) torchvision's CIFAR-10 (downloads, so online only).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from microdit.data.images import IMAGE_EXTS, decode_image, resize_center_crop
from microdit.data.manifest import DataError
from microdit.data.shards import iter_shard
from microdit.files import not_a_folder

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CLASS_WORDS = {
    "airplane": ("airplane", "airplanes", "aeroplane", "aeroplanes", "plane", "planes", "aircraft", "jet", "jets"),
    "automobile": ("automobile", "automobiles", "car", "cars"),
    "bird": ("bird", "birds"),
    "cat": ("cat", "cats", "kitten", "kittens"),
    "deer": ("deer", "fawn"),
    "dog": ("dog", "dogs", "puppy", "puppies"),
    "frog": ("frog", "frogs"),
    "horse": ("horse", "horses", "pony", "ponies"),
    "ship": ("ship", "ships", "boat", "boats"),
    "truck": ("truck", "trucks", "lorry", "lorries"),
}
_PATTERNS = [re.compile(r"\b(" + "|".join(words) + r")\b", re.IGNORECASE) for words in CLASS_WORDS.values()]
TEMPLATES = ("a photo of a {}", "a picture of a {}", "an image of a {}", "a close-up photo of a {}",
             "a {} in the wild", "a blurry photo of a {}", "a good photo of a {}")


def matched_classes(caption: str) -> list[int]:
    """Indices of every CIFAR-10 class the caption names."""
    return [i for i, pattern in enumerate(_PATTERNS) if pattern.search(caption)]


def class_index(name: str, where: str) -> int:
    """Index of a CIFAR-10 class name; DataError naming ``where`` for an unknown one."""
    if name not in CIFAR10_CLASSES:
        raise DataError(f"{where}: unknown class name {name!r}; CIFAR-10 classes are {', '.join(CIFAR10_CLASSES)}")
    return CIFAR10_CLASSES.index(name)


class Filter:
    """Applies the construction rules to raw (key, image, caption) pairs and counts what it drops."""

    def __init__(self, size: int, min_side: int) -> None:
        self.size, self.min_side = size, min_side
        self.counts: Counter = Counter()

    def __call__(self, key: str, image: Image.Image, caption: str, label: int | None = None):
        """The kept sample (key, image, caption, labels), or None."""
        self.counts["seen"] += 1
        if label is None:
            hits = matched_classes(caption)
            if len(hits) != 1:
                self.counts["no_class" if not hits else "several_classes"] += 1
                return None
            label = hits[0]
        if min(image.size) < self.min_side:
            self.counts["too_small"] += 1
            return None
        self.counts["kept"] += 1
        labels = {"class": label, "class_name": CIFAR10_CLASSES[label]}
        return key, resize_center_crop(image, self.size), caption, labels


def from_webdataset_dump(folder: Path, keep: Filter) -> Iterator:
    """Pairs from img2dataset webdataset tars: ``KEY.jpg|png|webp`` + ``KEY.txt``."""
    shards = sorted(folder.glob("*.tar"))
    if not shards:
        raise DataError(f"{folder}: no .tar shards found")
    for shard in shards:
        for key, members in iter_shard(shard):
            ext = next((e for e in IMAGE_EXTS if e in members), None)
            if ext is None or "txt" not in members:
                raise DataError(f"shard {shard}: sample {key!r} lacks an image ({'/'.join(IMAGE_EXTS)}) or a .txt")
            image = decode_image(members[ext], f"shard {shard}: sample {key!r}")
            sample = keep(f"{shard.stem}_{key}", image, members["txt"].decode("utf-8", "replace"))
            if sample is not None:
                yield sample


def from_parquet_dump(folder: Path, keep: Filter) -> Iterator:
    """Pairs from parquet files with an image-bytes column (jpg/png/image) and a caption column
    (caption/text/TEXT), as img2dataset's parquet output writes them."""
    import pyarrow.parquet as pq

    files = sorted(folder.glob("*.parquet"))
    if not files:
        raise DataError(f"{folder}: no .parquet files found")
    for path in files:
        table = pq.read_table(path)
        image_col = next((c for c in ("jpg", "png", "image") if c in table.column_names), None)
        text_col = next((c for c in ("caption", "text", "TEXT") if c in table.column_names), None)
        if image_col is None or text_col is None:
            raise DataError(f"{path}: needs an image-bytes column (jpg, png or image) and a caption column "
                            f"(caption, text or TEXT); has {table.column_names}")
        for row, (data, caption) in enumerate(zip(table[image_col].to_pylist(), table[text_col].to_pylist(),
                                                  strict=True)):
            if data is None or caption is None:
                keep.counts["missing_field"] += 1
                continue
            image = decode_image(data, f"{path}: row {row}")
            sample = keep(f"{path.stem}_{row:08d}", image, caption)
            if sample is not None:
                yield sample


def from_image_folder(root: Path, keep: Filter, captions_file: Path | None = None, seed: int = 0) -> Iterator:
    """Pairs from ``ROOT/<class>/*.jpg|png``; captions from ``captions_file`` (JSON mapping
    ``<class>/<file>`` to a caption) or else from templates with the class name."""
    if not root.is_dir():
        raise DataError(f"image folder {root} {not_a_folder(root)}")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir())
    if not class_dirs:
        raise DataError(f"image folder {root} has no class sub-folders (expected ROOT/<class>/*.jpg)")
    captions = {}
    if captions_file is not None:
        try:
            captions = json.loads(Path(captions_file).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise DataError(f"captions file {captions_file}: {err}") from None
    rng = np.random.default_rng(seed)
    found = 0
    for class_dir in class_dirs:
        label = class_index(class_dir.name, f"image folder {class_dir}")
        for path in sorted(p for p in class_dir.iterdir() if p.suffix.lower().lstrip(".") in IMAGE_EXTS):
            found += 1
            relative = f"{class_dir.name}/{path.name}"
            caption = captions.get(relative) or TEMPLATES[rng.integers(len(TEMPLATES))].format(class_dir.name)
            image = decode_image(path.read_bytes(), str(path))
            sample = keep(f"{class_dir.name}_{path.stem}", image, caption, label)
            if sample is not None:
                yield sample
    if found == 0:
        raise DataError(f"image folder {root}: no images ({', '.join(IMAGE_EXTS)}) in its class sub-folders")


def from_torchvision_cifar10(root: Path, keep: Filter, train: bool = True, seed: int = 0) -> Iterator:
    """Pairs from torchvision's CIFAR-10 (downloads it into ``root`` if needed), template captions."""
    from torchvision.datasets import CIFAR10

    try:
        dataset = CIFAR10(str(root), train=train, download=True)
    except Exception as err:  # network errors come in many types
        raise DataError(f"could not load CIFAR-10 into {root} (it needs a download; offline?): {err}") from None
    rng = np.random.default_rng(seed)
    for i, (image, label) in enumerate(dataset):
        caption = TEMPLATES[rng.integers(len(TEMPLATES))].format(CIFAR10_CLASSES[label])
        sample = keep(f"cifar10_{'train' if train else 'test'}_{i:05d}", image, caption, label)
        if sample is not None:
            yield sample
