"""Where files derived from a dataset are cached: its verification stamp, its probes, its reference
feature statistics.

A cache file lives beside the dataset (``FOLDER/RELATIVE``) when it is already there or the
dataset folder is writable, so whoever builds a dataset leaves its caches with it and every user of
that folder reads them. A read-only dataset (a shared folder on a cluster, a read-only mount) gets
its caches under the user's cache folder instead: ``$MICRODIT_CACHE`` (default
``~/.cache/microdit``) / ``NAME-HASH`` / ``RELATIVE``, where HASH identifies the dataset's resolved
path, so two datasets of one name do not share caches.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from microdit.files import unwritable

CACHE_ENV = "MICRODIT_CACHE"


def user_cache_root() -> Path:
    """``$MICRODIT_CACHE``, or ``~/.cache/microdit``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "microdit")


def _writable(path: Path, stop: Path) -> bool:
    """Whether ``path`` can be created or written: its first existing ancestor up to ``stop`` is a
    folder that takes a file (:func:`microdit.files.unwritable`: its permission bits, then a file
    made there and removed, since root passes every bit yet may not write a read-only mount)."""
    while not path.exists() and path != stop:
        path = path.parent
    return path.is_dir() and unwritable(path) is None


def dataset_cache(folder: str | Path, relative: str) -> Path:
    """The path of the cache file ``relative`` of the dataset ``folder``: beside the dataset when it
    is there or can be written there, else under :func:`user_cache_root`. Its parent folder exists."""
    folder = Path(folder)
    beside = folder / relative
    if beside.is_file() or _writable(beside.parent, folder):
        path = beside
    else:
        resolved = str(folder.resolve())
        key = f"{folder.resolve().name}-{hashlib.sha256(resolved.encode()).hexdigest()[:12]}"
        path = user_cache_root() / key / relative
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        where = ("beside the dataset" if path == beside else
                 f"in the user's cache folder (the dataset folder is read-only; ${CACHE_ENV} or ~/.cache/microdit)")
        raise PermissionError(f"the cache {relative} of dataset {folder} goes {where}, but {path.parent} cannot be "
                              f"created ({err.strerror or err}): set {CACHE_ENV} to a folder you can write") from None
    return path
