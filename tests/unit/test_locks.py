"""Lock files between processes and hosts (microdit.locks): one holder at a time, stale locks taken
over for exactly the stated reasons, live ones waited for or refused."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from microdit import locks

from conftest import run_together

COUNT = """
import sys, time
from pathlib import Path
from microdit import locks
locks.POLL, locks.SETTLE = 0.02, 0.01
path, counter = sys.argv[1], Path(sys.argv[2])
for _ in range(15):  # read, sleep, write: an increment is lost whenever two holders overlap
    with locks.acquire(path, "a counter", wait=True, log=lambda line: None):
        value = int(counter.read_text())
        time.sleep(0.005)
        counter.write_text(str(value + 1))
"""


def test_one_holder_at_a_time_across_processes(tmp_path):
    counter = tmp_path / "counter"
    counter.write_text("0")
    run_together(COUNT, [[str(tmp_path / "x.lock"), str(counter)]] * 4)
    assert int(counter.read_text()) == 60  # every increment survived: no two holders overlapped
    assert not (tmp_path / "x.lock").exists()  # each holder removed its lock


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write_lock(path: Path, age: float = 0.0, **owner) -> None:
    record = {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job": None, "slurm_restart": 0,
              "since": time.time() - age, "what": "x", "token": "other"} | owner
    path.write_text(json.dumps(record))
    os.utime(path, (time.time() - age, time.time() - age))


def _slurm_env(monkeypatch, env: dict) -> None:
    """Exactly the SLURM variables of ``env`` (none of the machine's own)."""
    for key in ("SLURM_JOB_ID", "SLURM_RESTART_COUNT"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)


def test_a_live_holder_is_refused(tmp_path, lock_holder):
    path = tmp_path / "run.lock"
    holder = lock_holder(path)
    before = path.read_bytes()
    with pytest.raises(locks.LockHeld, match=rf"run x is in use by pid {holder.pid} on host .*lock file {path}"):
        locks.acquire(path, "run x", wait=False)
    assert path.read_bytes() == before


def test_a_waiter_gets_the_lock_when_its_holder_releases_it(tmp_path):
    path = tmp_path / "x.lock"
    code = ("import sys, time; from microdit.locks import acquire; lock = acquire(sys.argv[1], 'x', wait=False); "
            "print('held', flush=True); time.sleep(1.5); lock.release()")
    holder = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    lines = []
    with locks.acquire(path, "x", wait=True, log=lines.append) as lock:
        assert json.loads(path.read_text())["token"] == lock.token
    holder.wait()
    assert len(lines) == 1 and lines[0].startswith(f"[lock] waiting for pid {holder.pid} on host "), lines


@pytest.mark.parametrize("case, owner, env, age, taken", [
    ("owner process gone on this host", {"pid": None}, {}, 0, "its process no longer exists"),
    ("this very process, never released", {}, {}, 0, "taken by this process and not released"),
    ("earlier run of this SLURM job", {"host": "node-a", "pid": 1, "slurm_job": "77"},
     {"SLURM_JOB_ID": "77", "SLURM_RESTART_COUNT": "1"}, 0, "earlier run of this SLURM job"),
])
def test_stale_locks_are_taken_over(tmp_path, monkeypatch, case, owner, env, age, taken):
    path = tmp_path / "x.lock"
    _slurm_env(monkeypatch, env)
    _write_lock(path, age, **(owner | ({"pid": _dead_pid()} if owner.get("pid", 0) is None else {})))
    lines = []
    lock = locks.acquire(path, "x", wait=False, log=lines.append)
    assert len(lines) == 1 and taken in lines[0], (case, lines)
    assert json.loads(path.read_text())["token"] == lock.token
    lock.release()
    assert not path.exists()


@pytest.mark.parametrize("case, owner, env", [
    ("another host (its processes cannot be checked from here)", {"host": "node-a", "pid": 1}, {}),
    ("same SLURM job, same restart (two tasks of one job)", {"host": "node-a", "pid": 1, "slurm_job": "77"},
     {"SLURM_JOB_ID": "77", "SLURM_RESTART_COUNT": "0"}),
    ("another SLURM job", {"host": "node-a", "pid": 1, "slurm_job": "76"}, {"SLURM_JOB_ID": "77"}),
])
def test_live_looking_locks_are_respected(tmp_path, monkeypatch, case, owner, env):
    path = tmp_path / "x.lock"
    _slurm_env(monkeypatch, env)
    _write_lock(path, 10, **owner)
    before = path.read_bytes()
    with pytest.raises(locks.LockHeld, match=r"x is in use by pid 1 on host node-a"):
        locks.acquire(path, "x", wait=False)
    assert path.read_bytes() == before


def test_a_damaged_lock_file_is_named_not_waited_for_forever(tmp_path):
    path = tmp_path / "x.lock"
    path.write_text("{not json")
    with pytest.raises(locks.LockHeld, match=rf"damaged lock file.*delete {path}"):  # fresh: refused without wait
        locks.acquire(path, "x", wait=False)
    os.utime(path, (time.time() - locks.DAMAGED - 5, time.time() - locks.DAMAGED - 5))
    with pytest.raises(locks.LockHeld, match=rf"damaged lock file.*delete {path}"):  # old: refused even with wait
        locks.acquire(path, "x", wait=True, log=lambda line: None)
    assert path.read_text() == "{not json"


def test_release_leaves_a_lock_that_was_taken_over(tmp_path):
    path = tmp_path / "x.lock"
    lock = locks.acquire(path, "x", wait=False)
    _write_lock(path, 0, host="node-b", pid=2, token="theirs")
    lock.release()
    assert json.loads(path.read_text())["token"] == "theirs"
