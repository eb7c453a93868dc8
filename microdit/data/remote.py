"""Dataset folders behind a URL, read through a local shard cache with a size limit.

A dataset folder (``manifest.json`` and its shards) can sit in object storage or behind HTTP:
``data.folders`` then holds its URL (``https://host/path/ds``, ``s3://bucket/ds``, ``gs://bucket/ds``)
or a ``pipe:`` command with ``{name}`` where the file name goes (``pipe:aws s3 cp s3://b/ds/{name} -``,
webdataset's convention). The manifest is fetched when the dataset is opened; a shard is fetched
the first time a sample of it is read, into ``CACHE/<hash of the URL>/``, checked against the
manifest's size and sha256 exactly as a local shard is, and read from there by random access as
a local one. Order and resume are those of the same folder on local disk: both are a function of
the manifest alone. When the cache would grow over its limit, the shards read longest ago are
deleted first (a deleted shard is fetched again when needed).

Fetching goes through fsspec (``s3fs`` / ``gcsfs`` / ``aiohttp`` for its s3, gs and http file
systems), and, where fsspec's backend is not installed, webdataset's ``gopen`` (``curl`` for
http(s), ``gsutil`` for gs); ``pipe:`` always runs through ``gopen``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from microdit.data.manifest import DataError, Manifest, ShardInfo, sha256_of
from microdit.files import private_tmp, remove_stale_tmps, write_atomic

SCHEMES = ("http://", "https://", "s3://", "gs://", "pipe:")
CACHE_ENV = "MICRODIT_SHARD_CACHE"
DEFAULT_LIMIT_GB = 100.0


def is_remote(folder: str | Path) -> bool:
    """Whether ``folder`` names a dataset behind a URL (or a ``pipe:`` command) rather than a path."""
    return isinstance(folder, str) and folder.startswith(SCHEMES)


def file_url(folder: str, name: str) -> str:
    """The URL of file ``name`` of the dataset at ``folder``."""
    if folder.startswith("pipe:"):
        if "{name}" not in folder:
            raise DataError(f"{folder}: a pipe: dataset needs {{name}} where the file name goes")
        return folder.replace("{name}", name)
    return f"{folder.rstrip('/')}/{name}"


def _open(url: str):
    """A readable binary stream of ``url`` (fsspec, else webdataset's gopen)."""
    if not url.startswith("pipe:"):
        import fsspec

        try:
            return fsspec.open(url, "rb").open()
        except ImportError as err:
            if url.startswith("s3://"):
                raise DataError(f"{url}: reading s3:// needs s3fs (pip install s3fs): {err}") from None
        except FileNotFoundError:
            raise DataError(f"{url} does not exist") from None
        except OSError as err:
            raise DataError(f"{url}: {err}") from None
    from webdataset.gopen import gopen

    return gopen(url, "rb")


def fetch(url: str, dest: Path | None = None) -> bytes | None:
    """The bytes of ``url`` (``dest`` None), or written to ``dest`` through a temporary file."""
    try:
        stream = _open(url)
        try:
            if dest is None:
                return stream.read()
            tmp = private_tmp(dest)
            try:
                with open(tmp, "wb") as f:
                    shutil.copyfileobj(stream, f, 1 << 20)
                tmp.replace(dest)
            finally:
                tmp.unlink(missing_ok=True)
        finally:
            stream.close()
    except DataError:
        raise
    except Exception as err:  # curl / gsutil exits, network errors: their types vary by backend
        import re

        detail = " ".join(str(err).split())
        code = re.search(r"\['(curl|gsutil)'.*exit (\d+)", detail)
        if code:  # webdataset's gopen: the command's exit status (curl: 7 no connection, 22 an HTTP error)
            detail = f"{code[1]} exited with status {code[2]}"
        elif len(detail) > 160:
            detail = "..." + detail[-160:]
        raise DataError(f"could not read {url} ({detail})") from None
    return None


def load_remote_manifest(folder: str, check_total: bool = True) -> Manifest:
    """The manifest of the dataset at URL ``folder``, fetched now."""
    import json

    url = file_url(folder, "manifest.json")
    data = fetch(url)
    try:
        values = json.loads(data)
    except ValueError as err:
        raise DataError(f"{url}: not valid JSON ({err})") from None
    if not isinstance(values, dict):
        raise DataError(f"{url}: a manifest is a JSON object, got {type(values).__name__}")
    return Manifest.from_dict(values, url, check_total)


def dataset_manifest(folder: str | Path, check_total: bool = True) -> Manifest:
    """The manifest of a dataset folder, local or behind a URL."""
    from microdit.data.manifest import load_manifest

    return load_remote_manifest(folder, check_total) if is_remote(folder) else load_manifest(folder, check_total)


class ShardCache:
    """Local copies of remote shards under ``root`` (default ``$MICRODIT_SHARD_CACHE`` or
    ``~/.cache/microdit/shards``), at most ``limit_gb`` GB in all."""

    def __init__(self, root: str | Path | None = None, limit_gb: float = DEFAULT_LIMIT_GB) -> None:
        default = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "microdit" / "shards"
        self.root = Path(root or default)
        self.limit = int(limit_gb * 1e9)

    def folder(self, url: str) -> Path:
        """The cache folder of the dataset at ``url``."""
        return self.root / hashlib.sha256(url.encode()).hexdigest()[:16]

    def local(self, url: str, info: ShardInfo) -> Path:
        """A local, checked copy of shard ``info`` of the dataset at ``url`` (fetched if missing)."""
        folder = self.folder(url)
        path = folder / info.name
        if path.is_file() and path.stat().st_size == info.bytes:
            os.utime(path)  # read now: the last to be evicted
            return path
        if info.bytes > self.limit:
            raise DataError(f"shard {file_url(url, info.name)} ({info.bytes / 1e9:.2f} GB) is larger than the shard "
                            f"cache's limit ({self.limit / 1e9:g} GB, data.cache_gb)")
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale_tmps(folder)
        self._evict(info.bytes)
        fetch(file_url(url, info.name), path)
        if path.stat().st_size != info.bytes or sha256_of(path) != info.sha256:
            path.unlink(missing_ok=True)
            raise DataError(f"shard {file_url(url, info.name)} does not match its manifest entry (size or sha256): "
                            "corrupt or replaced at the source")
        write_atomic(folder / "url", url.encode())
        return path

    def _evict(self, incoming: int) -> None:
        """Delete the shards read longest ago until ``incoming`` more bytes fit under the limit."""
        shards = [p for p in self.root.glob("*/*.tar") if p.is_file()]
        used = sum(p.stat().st_size for p in shards)
        for path in sorted(shards, key=lambda p: p.stat().st_mtime):
            if used + incoming <= self.limit:
                break
            used -= path.stat().st_size
            path.unlink(missing_ok=True)
