"""Files written whole: a private temporary name per writer, the atomic write through it, the
clean-up of the temporaries a killed writer left behind, and one error naming the file where a full
disk or quota refuses a write (:class:`WriteError`).

Several processes may write one file at once (a shared cache, a sweep's points on one dataset):
each writes under its own :func:`private_tmp` name (host, pid and thread in it) and renames the
finished file into place, so a reader sees one writer's file, whole, never a mix. A writer killed
before its rename leaves its temporary behind: :func:`remove_stale_tmps` deletes those of dead
processes on this host (another host's processes cannot be checked from here).
"""

from __future__ import annotations

import errno
import io
import os
import re
import socket
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine."""
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    return True


def ended(pid: int) -> bool:
    """Whether the process ``pid`` of this machine has ended (never true of this process): what it
    wrote under its private names can be deleted."""
    return pid != os.getpid() and not alive(pid)


def host_pid() -> str:
    """``HOST-PID`` of this process: part of every name a process writes privately."""
    return f"{socket.gethostname()}-{os.getpid()}"


def private_tmp(path: Path) -> Path:
    """A temporary name beside ``path`` that no other process or thread uses, for writing a file
    whole and renaming it into place (two writers of one file then never mix their bytes)."""
    return path.with_name(f".{path.name}.{host_pid()}-{threading.get_ident()}.tmp")


# What a write meets when the disk or the user's quota is full, or the device fails: no file to name.
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG)


class WriteError(OSError):
    """A file that could not be written for want of space (a full disk, a quota) or a failing device:
    ``errno`` is the write's, the message (``strerror``, and ``str()``) names the file and what was kept."""

    def __str__(self) -> str:
        return self.strerror


@contextmanager
def naming_full_disk(path: Path, kept: str = "what was there before is unchanged") -> Iterator[None]:
    """Inside, a write that meets a full disk or quota (or a failing device) raises :class:`WriteError`
    naming ``path`` and saying what was ``kept``; other errors pass as they are."""
    try:
        yield
    except OSError as err:
        if err.errno not in DISK_ERRNOS:
            raise
        raise WriteError(err.errno, f"{path} could not be written ({err.strerror}; is the disk or your quota "
                                    f"full?); {kept}") from None


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a private temporary file and a rename: never half-written,
    and when several processes write it at once, the file is one of their writes, whole. A full disk
    or quota raises :class:`WriteError` naming ``path`` (``path`` as it was, the temporary removed)."""
    tmp = private_tmp(path)
    try:
        with naming_full_disk(path), open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def create_exclusive(path: Path, data: bytes, kept: str) -> bool:
    """Create ``path`` holding ``data`` only if it does not exist (``O_EXCL``: of several processes
    one creates it); False if it exists. A write that fails removes the file again, so no empty or
    cut record is left to be read as damaged; a full disk or quota raises :class:`WriteError` naming
    ``path`` and what was ``kept``, other errors pass as they are."""
    with naming_full_disk(path, kept):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
    return True


def write_figure(path: Path, fig, dpi: int = 120) -> None:
    """Save the matplotlib figure ``fig`` to ``path`` (its format from the suffix) with :func:`write_atomic`."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format=Path(path).suffix.lstrip(".") or "png", dpi=dpi)
    write_atomic(Path(path), buffer.getvalue())


def remove_stale_tmps(folder: Path) -> None:
    """Delete the :func:`private_tmp` files in ``folder`` whose writer was killed on this host (kill
    -9, out of memory) before renaming them into place. Another host's are left alone."""
    pattern = re.compile(rf"^\..+\.{re.escape(socket.gethostname())}-(\d+)-\d+\.tmp$")
    for path in folder.glob(".*.tmp"):
        match = pattern.match(path.name)
        if match and ended(int(match[1])):
            path.unlink(missing_ok=True)


def not_a_folder(path: Path) -> str:
    """Why ``path`` cannot be read as a folder: ``"does not exist"`` or ``"is a file, not a folder"``."""
    return "is a file, not a folder" if Path(path).exists() else "does not exist"


def not_a_file(path: Path) -> str:
    """Why ``path`` cannot be read as a file: ``"does not exist"`` or ``"is a folder, not a file"``."""
    return "is a folder, not a file" if Path(path).exists() else "does not exist"


def unwritable(path: Path, folder: bool = True) -> str | None:
    """Why ``path`` cannot be written as a folder (``folder``) or a file, checked before any work
    and without creating anything (None: it can): an existing path of the other kind, or a
    missing one whose nearest existing parent is a file or not writable."""
    path = Path(path)
    if path.exists():
        if folder != path.is_dir():
            return not_a_folder(path) if folder else not_a_file(path)
        why = _uncreatable_in(path if folder else path.parent)
        return None if why is None else f"is not writable{why}"
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return f"cannot be created: {parent} is a file, not a folder"
    why = _uncreatable_in(parent)
    return None if why is None else f"cannot be created: {parent} is not writable{why}"


def _uncreatable_in(folder: Path) -> str | None:
    """Why no file can be made in the existing ``folder`` ("" or " (the system's reason)"; None:
    one can). The permission bits (``os.access``) are asked first; where they say yes, a temporary
    file is made there and removed at once, because they are not the whole answer: root may write
    every folder by its bits, yet not ``/proc``, an NFS share that squashes root, or a folder an
    ACL closes."""
    if not os.access(folder, os.W_OK | os.X_OK):
        return ""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return None
    except OSError as err:
        return f" ({err.strerror or err})"

