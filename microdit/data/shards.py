"""Webdataset tar shards: writing them atomically and reading samples back with checks.

A sample is the group of tar members sharing a key (``KEY.ext``). Reading yields raw bytes per
extension; decoding and validation are separate so that skipped samples are never decoded.
"""

from __future__ import annotations

import contextlib
import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import webdataset as wds

from microdit.data.manifest import DataError, ShardInfo, sha256_of
from microdit.files import private_tmp


class ShardWriter:
    """Write one tar shard to ``path`` via a private temporary file (:func:`microdit.files.private_tmp`);
    ``close()`` renames it into place.

    Use as a context manager: on an exception the temporary file is removed and nothing
    appears under the final name.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.tmp = private_tmp(self.path)
        self._file = open(self.tmp, "wb")
        self._writer = wds.TarWriter(self._file, encoder=False, mtime=0)  # byte-reproducible shards
        self.samples = 0

    def write(self, key: str, members: dict[str, bytes]) -> None:
        """Add one sample: ``members`` maps extensions (``latent.npy``, ``txt``, ...) to bytes."""
        if not key or "." in key or "/" in key:
            raise ValueError(f"sample key must be non-empty without '.' or '/', got {key!r}")
        self._writer.write({"__key__": key, **members})
        self.samples += 1

    def close(self) -> ShardInfo:
        """Finish the shard and move it to its final name; returns its manifest entry."""
        self._writer.close()
        self._file.close()
        self.tmp.replace(self.path)
        return ShardInfo(self.path.name, self.samples, self.path.stat().st_size, sha256_of(self.path))

    def abort(self) -> None:
        """Drop the partial shard, also where the disk is full (closing may fail to write the last
        bytes: they are dropped with the file)."""
        for close in (self._writer.close, self._file.close):
            with contextlib.suppress(OSError, ValueError):
                close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


def iter_shard(path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield (key, {extension: bytes}) for each sample of a tar shard, in file order.

    Raises DataError naming the shard (and the last good key) if the tar is corrupt or truncated
    (a complete tar ends with a two-block end-of-archive marker; tarfile alone misses a cut that
    falls on a header boundary).
    """
    if not path.is_file():
        raise DataError(f"shard {path} is missing")
    key, members, current, end = None, {}, None, 0
    try:
        with tarfile.open(path, "r|") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                base = info.name.rsplit("/", 1)[-1]
                member_key, _, ext = base.partition(".")
                current = member_key
                data = tar.extractfile(info).read()
                if len(data) != info.size:
                    raise EOFError(f"{info.name} has {len(data)} of {info.size} bytes")
                end = info.offset_data + -(-info.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
                if member_key != key:
                    if key is not None:
                        yield key, members
                    key, members = member_key, {}
                members[ext] = data
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DataError(f"shard {path}: corrupt or truncated tar at sample {current!r} ({err})") from None
    if path.stat().st_size < end + 2 * tarfile.BLOCKSIZE:
        raise DataError(f"shard {path}: truncated tar (no end-of-archive marker after sample {key!r})")
    if key is not None:
        yield key, members


def npy_bytes(array: np.ndarray) -> bytes:
    """Serialise an array as .npy bytes."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def load_npy(data: bytes, where: str) -> np.ndarray:
    """Parse .npy bytes (no pickles), naming ``where`` on failure."""
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise DataError(f"{where}: unreadable .npy ({err})") from None
