"""Image + caption datasets: resize / centre-crop, and writing image shards with their manifest."""

from __future__ import annotations

import glob
import io
import json
import shutil
import socket
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from microdit.data.manifest import DataError, Manifest, save_manifest
from microdit.data.shards import ShardWriter
from microdit.files import DISK_ERRNOS, ended, host_pid, write_atomic

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")
# The largest image side microdit writes a dataset at (the paper trains at 256 and 512): a typo such
# as 100000 would ask for tens of GB per image (a terabyte for the supersampled synthetic drawing).
MAX_SIDE = 1024


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``size`` (bicubic, antialiased) and crop the centre square."""
    image = image.convert("RGB")
    w, h = image.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    image = image.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return image.crop((left, top, left + size, top + size))


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] (N, 3, H, W) -> uint8 (N, 3, H, W) (clamped, rounded)."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def from_uint8(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float32 images in [-1, 1]."""
    return images.float() / 127.5 - 1


def save_grid(images: torch.Tensor, path: str | Path, columns: int = 8) -> None:
    """Save uint8 images (N, 3, H, W) as one PNG, ``columns`` per row (a short last row is padded black),
    whole or not at all (:func:`microdit.files.write_atomic`)."""
    n, _, h, w = images.shape
    rows = -(-n // columns)
    grid = torch.zeros(3, rows * h, columns * w, dtype=torch.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        grid[:, r * h:(r + 1) * h, c * w:(c + 1) * w] = image
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_atomic(Path(path), png_bytes(grid.permute(1, 2, 0).cpu().numpy()))


def png_bytes(image: np.ndarray | Image.Image) -> bytes:
    """Lossless PNG bytes of an RGB image."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def decode_image(data: bytes, where: str) -> Image.Image:
    """Open image bytes as RGB, naming ``where`` if they are not an image."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as err:  # PIL raises many types for bad files
        raise DataError(f"{where}: not a readable image ({err})") from None
    return image.convert("RGB")


def _partial_folder(folder: Path) -> Path:
    """The hidden sibling this process builds ``folder`` in before renaming it into place."""
    return folder.with_name(f".{folder.name}.partial-{host_pid()}")


def _remove_stale_partials(folder: Path) -> None:
    """Delete what builds of ``folder`` killed on this host (kill -9, out of memory) left behind:
    partial folders whose process is gone. Another host's partials are left alone (its processes
    cannot be checked from here)."""
    prefix = f".{folder.name}.partial-{socket.gethostname()}-"
    for stale in folder.parent.glob(glob.escape(prefix) + "*"):
        pid = stale.name[len(prefix):]
        if pid.isdigit() and ended(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


def refuse_filled(folder: Path) -> None:
    """A new dataset goes into a new or empty folder only (DataError, nothing changed)."""
    if folder.is_dir() and any(folder.iterdir()):
        raise DataError(f"{folder} is not empty ({'a dataset' if (folder / 'manifest.json').is_file() else 'files'} "
                        "already there): write a new dataset into a new or empty folder; nothing was changed")


def write_image_dataset(
    folder: str | Path,
    samples: Iterable[tuple[str, Image.Image | np.ndarray, str, dict]],
    size: int,
    label_names: list[str],
    source: str,
    shard_size: int = 1000,
) -> Manifest:
    """Write (key, image, caption, labels) samples as image shards ``images-NNNNN.tar`` + manifest.

    Images must already be ``size`` x ``size``. Returns the manifest (also written). The dataset
    is built in a hidden sibling folder and renamed to ``folder`` when complete, so ``folder``
    never holds half a dataset: an interrupted or killed build leaves it as it was, and the next
    build removes the killed one's leftovers.
    """
    folder = Path(folder)
    refuse_filled(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(folder.resolve())
    work = _partial_folder(folder.resolve())
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    manifest = Manifest(kind="images", image_size=[size, size], label_names=list(label_names), source=source,
                        complete=False)
    writer = None
    try:
        for key, image, caption, labels in samples:
            array = np.asarray(image)
            if array.shape != (size, size, 3):
                raise DataError(f"sample {key!r}: image is {array.shape}, expected ({size}, {size}, 3)")
            if writer is None:
                writer = ShardWriter(work / f"images-{len(manifest.shards):05d}.tar")
            writer.write(key, {"png": png_bytes(array), "txt": caption.encode(), "json": json.dumps(labels).encode()})
            if writer.samples == shard_size:
                manifest.shards.append(writer.close())
                writer = None
        if writer is not None:
            manifest.shards.append(writer.close())
            writer = None
        manifest.samples = sum(s.samples for s in manifest.shards)
        if manifest.samples == 0:
            raise DataError(f"no samples to write to {folder}")
        manifest.complete = True
        save_manifest(work, manifest)
        try:
            work.replace(folder)  # atomic; refused if another process filled ``folder`` meanwhile
        except OSError as err:
            raise DataError(f"{folder}: could not move the finished dataset into place ({err.strerror}: another "
                            "process may have filled it meanwhile); nothing in it was changed") from None
    except BaseException as err:  # a bad sample, an interrupt, a lost race, a full disk: ``folder`` stays as it was
        if writer is not None:
            writer.abort()
        shutil.rmtree(work, ignore_errors=True)
        if isinstance(err, OSError) and err.errno in DISK_ERRNOS:  # a full disk or quota while writing
            raise DataError(f"{folder}: the dataset could not be written ({err.strerror or err}); nothing in it was "
                            "changed and its partial files were removed") from None
        raise
    return manifest
