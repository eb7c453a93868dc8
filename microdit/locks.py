"""Which process owns a file or folder: lock files that work between the processes of one machine
and between the nodes of a cluster that share a file system, and private temporary names for
atomic writes.

Several processes meet on one folder when a sweep starts its points at once (Hydra's
``submitit_local`` or SLURM launchers), when two people or two jobs train into the same run
folder, or when a SLURM job is requeued. microdit takes a lock where two writers would damage
each other: a run folder (one trainer at a time: ``RUN/.lock``), a dataset being encoded (the
others wait, then read it: ``.FOLDER.lock`` beside it) and a run's ``metrics.json`` (each
evaluation adds its entry in turn).

A lock is a file created with ``O_CREAT | O_EXCL`` (atomic on local file systems and on NFS v3
and later), holding its owner as JSON: host, pid, SLURM job id and restart count, start time and a
random token. While it is held a daemon thread touches it every :data:`HEARTBEAT` seconds. A lock
whose owner is gone is **stale** and is taken over, with a message naming it:

- its owner ran on this host and that process no longer exists (killed, out of memory), or is
  this very process (an earlier object that was never released);
- its owner was an earlier run of this SLURM job (a requeue keeps the job id and raises
  ``SLURM_RESTART_COUNT``);
- its heartbeat is older than :data:`STALE` seconds: the owner's node crashed or hung (a
  process on another host cannot be checked from here), or its pid was reused.

Two processes that find one stale lock at the same moment may both remove it; each then reads
its own token back after a short pause, and the one that does not find it waits (or fails) as
if the lock had been held.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import sys
import threading
import time
from pathlib import Path

HEARTBEAT = 30.0  # seconds between the owner's touches of its lock file
STALE = 300.0  # a lock not touched for this long is stale (10 missed heartbeats)
POLL = 1.0  # seconds between two looks at a lock while waiting for it
SETTLE = 0.2  # seconds between writing a lock and reading its token back


class LockHeld(RuntimeError):
    """The lock belongs to another live process: the message names the lock and its owner."""


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


def remove_stale_tmps(folder: Path) -> None:
    """Delete the :func:`private_tmp` files in ``folder`` whose writer was killed on this host (kill
    -9, out of memory) before renaming them into place. Another host's are left alone (its
    processes cannot be checked from here)."""
    pattern = re.compile(rf"^\..+\.{re.escape(socket.gethostname())}-(\d+)-\d+\.tmp$")
    for path in folder.glob(".*.tmp"):
        match = pattern.match(path.name)
        if match and ended(int(match[1])):
            path.unlink(missing_ok=True)


def _slurm() -> tuple[str | None, int]:
    return os.environ.get("SLURM_JOB_ID"), int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)


def _describe(owner: dict) -> str:
    job = f", SLURM job {owner['slurm_job']}" if owner.get("slurm_job") else ""
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.get("since", 0)))
    return f"pid {owner.get('pid')} on host {owner.get('host')}{job}, since {since}"


def _read(path: Path) -> tuple[dict | None, float | None]:
    """The owner recorded in a lock file and the file's age in seconds; (None, None) when there is
    no lock file, ({}, age) when it cannot be read (being written, or damaged)."""
    try:
        age = time.time() - path.stat().st_mtime
        return json.loads(path.read_text()), age
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError):
        try:
            return {}, time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return None, None


def stale_reason(owner: dict, age: float) -> str | None:
    """Why a lock with this owner and heartbeat age is stale, or None if its owner may be alive."""
    host, pid = owner.get("host"), owner.get("pid")
    job, restarts = _slurm()
    if host == socket.gethostname() and isinstance(pid, int):
        if pid == os.getpid():
            return "it was taken by this process and not released"
        if not alive(pid):
            return "its process no longer exists"
    if job is not None and owner.get("slurm_job") == job and owner.get("slurm_restart", 0) < restarts:
        return f"it belonged to an earlier run of this SLURM job (requeued, restart {restarts})"
    if age > STALE:
        return f"it has not been touched for {age:.0f} s (its owner's node crashed or hung)"
    return None


class Lock:
    """An acquired lock file; :meth:`release` (or leaving the ``with`` block) gives it back."""

    def __init__(self, path: Path, token: str) -> None:
        self.path, self.token = path, token
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name=f"lock {path.name}", daemon=True)
        self._beat.start()

    def _mine(self) -> bool:
        owner, _ = _read(self.path)
        return bool(owner) and owner.get("token") == self.token

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT):
            if self._mine():
                try:
                    os.utime(self.path)
                except OSError:
                    pass  # gone meanwhile: nothing to keep alive

    def release(self) -> None:
        """Stop the heartbeat and remove the lock file if it is still this one (idempotent)."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._mine():
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _create(path: Path, owner: dict) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump(owner, f)
    return True


def acquire(path: str | Path, what: str, wait: bool, log=None) -> Lock:
    """Take the lock file ``path`` guarding ``what`` (words for messages, e.g. "run runs/x").

    With ``wait`` a lock held by a live process is waited for (one line to ``log``, default
    stderr, names its owner); without, :class:`LockHeld` is raised at once. A stale lock (see the
    module docstring) is taken over, with one line to ``log``."""
    path = Path(path)
    say = log or (lambda line: print(line, file=sys.stderr, flush=True))
    job, restarts = _slurm()
    token = secrets.token_hex(8)
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job": job, "slurm_restart": restarts,
             "since": time.time(), "what": what, "token": token}
    announced = False
    while True:
        if _create(path, owner):
            time.sleep(SETTLE)  # a racing takeover of a stale lock may have removed ours meanwhile
            found, _ = _read(path)
            if found and found.get("token") == token:
                return Lock(path, token)
        found, age = _read(path)
        if found is None:
            continue  # released meanwhile: try again at once
        reason = stale_reason(found, age)
        if reason is not None:
            say(f"[lock] taking over {path} ({what}) from {_describe(found)}: {reason}")
            path.unlink(missing_ok=True)
            continue
        if not wait:
            holder = _describe(found) if found else "a process that is writing it now"
            raise LockHeld(f"{what} is in use by {holder} (lock file {path}); wait for it to finish, or, if "
                           f"that process is gone, delete {path}")
        if not announced:
            say(f"[lock] waiting for {_describe(found) if found else 'another process'} ({what}; lock file {path})")
            announced = True
        time.sleep(POLL)
