"""Which process owns a folder or file: an exclusively created lock file holding its owner.

Several processes meet on one folder when a sweep starts its points at once (Hydra's
``submitit_local`` or SLURM launchers), when a job is submitted twice, or when a SLURM job is
requeued. microdit takes a lock where two writers would damage each other: a run folder (one
trainer at a time: ``RUN/.lock``), a dataset being encoded (the others wait, then read it:
``.FOLDER.lock`` beside it), a run's ``metrics.json`` (each evaluation adds its entry in turn) and
``microdit-sample``'s output folder (``OUT/.lock``: a second command into it is refused).

A lock is a file created with ``O_CREAT | O_EXCL`` (atomic on local file systems and on NFS v3
and later) holding its owner as JSON: host, pid, SLURM job id and restart count, start time and a
random token. A lock is taken over, with a line naming it, only when its owner is known to be
gone: a process of this host that no longer exists (killed, out of memory) or this very process,
or an earlier run of this SLURM job (a requeue keeps the job id and raises
``SLURM_RESTART_COUNT``). A lock of a live-looking owner is waited for or refused with a message
naming the owner and the file to delete if that owner is gone (a process on another host cannot
be checked from here); a lock file that stays unreadable is refused the same way. Two processes
taking over one stale lock at once each read their own token back after a short pause; the one
that does not find it goes on as if the lock were held.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sys
import time
from pathlib import Path

from microdit.files import alive, create_exclusive

POLL = 1.0  # seconds between two looks at a lock while waiting for it
SETTLE = 0.2  # seconds between writing a lock and reading its token back
DAMAGED = 60.0  # an unreadable lock file this old is damaged (an owner writes its record at once)


class LockHeld(RuntimeError):
    """The lock belongs to another live process: the message names the lock and its owner."""


def _slurm() -> tuple[str | None, int]:
    return os.environ.get("SLURM_JOB_ID"), int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)


def _describe(owner: dict) -> str:
    if not owner:
        return "a process that is writing it now (or a damaged lock file)"
    job = f", SLURM job {owner['slurm_job']}" if owner.get("slurm_job") else ""
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.get("since", 0)))
    return f"pid {owner.get('pid')} on host {owner.get('host')}{job}, since {since}"


def _read(path: Path) -> dict | None:
    """The owner recorded in a lock file; None when there is none, {} when it cannot be read."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


def stale_reason(owner: dict) -> str | None:
    """Why a lock with this owner is stale, or None if its owner may be alive."""
    host, pid = owner.get("host"), owner.get("pid")
    job, restarts = _slurm()
    if host == socket.gethostname() and isinstance(pid, int):
        if pid == os.getpid():
            return "it was taken by this process and not released"
        if not alive(pid):
            return "its process no longer exists"
    if job is not None and owner.get("slurm_job") == job and owner.get("slurm_restart", 0) < restarts:
        return f"it belonged to an earlier run of this SLURM job (requeued, restart {restarts})"
    return None


class Lock:
    """An acquired lock file; :meth:`release` (or leaving the ``with`` block) gives it back."""

    def __init__(self, path: Path, token: str) -> None:
        self.path, self.token, self.released = path, token, False

    def release(self) -> None:
        """Remove the lock file if it is still this one (idempotent)."""
        if not self.released:
            self.released = True
            if (_read(self.path) or {}).get("token") == self.token:
                self.path.unlink(missing_ok=True)

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _create(path: Path, owner: dict) -> bool:
    """Create the lock file holding ``owner``; False if it exists (:func:`microdit.files.create_exclusive`:
    on a full disk no empty lock file is left to be refused as damaged on the next try)."""
    return create_exclusive(path, json.dumps(owner).encode(), kept="no lock file was left behind")


def acquire(path: str | Path, what: str, wait: bool, log=None) -> Lock:
    """Take the lock file ``path`` guarding ``what`` (words for messages, e.g. "run runs/x").

    With ``wait`` a lock held by a live-looking owner is waited for (one line to ``log``, default
    stderr, names it); without, :class:`LockHeld` is raised at once. A stale lock (see the module
    docstring) is taken over, with one line to ``log``."""
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
            if (_read(path) or {}).get("token") == token:
                return Lock(path, token)
        found = _read(path)
        if found is None:
            continue  # released meanwhile: try again at once
        reason = stale_reason(found)
        if reason is not None:
            say(f"[lock] taking over {path} ({what}) from {_describe(found)}: {reason}")
            path.unlink(missing_ok=True)
            continue
        damaged = not found and time.time() - path.stat().st_mtime > DAMAGED if path.exists() else False
        if not wait or damaged:
            raise LockHeld(f"{what} is in use by {_describe(found)} (lock file {path}); wait for it to finish, or, if "
                           f"that process is gone, delete {path}")
        if not announced:
            say(f"[lock] waiting for {_describe(found)} ({what}; lock file {path})")
            announced = True
        time.sleep(POLL)
