"""Files written whole (microdit.files): concurrent atomic writes, private temporary names, and
the clean-up of the temporaries killed writers left."""

from __future__ import annotations

import socket
import subprocess
import sys

from microdit import files

from conftest import run_together

WRITE_MANY = """
import sys
from pathlib import Path
from microdit.files import write_atomic
for k in range(150):
    write_atomic(Path(sys.argv[1]), bytes([int(sys.argv[2])]) * (1000 + k))
"""


def test_concurrent_atomic_writes_leave_one_whole_file(tmp_path):
    target = tmp_path / "probe.pt"
    run_together(WRITE_MANY, [[str(target), str(i)] for i in range(4)])  # one shared tmp name: 3 of 4 crashed
    data = target.read_bytes()
    assert data == bytes([data[0]]) * len(data)  # one writer's bytes, whole
    assert [p.name for p in tmp_path.iterdir()] == ["probe.pt"]  # no temporary file left behind


def test_private_tmp_names_differ_between_threads_and_hide_the_file(tmp_path):
    import threading

    names = []
    thread = threading.Thread(target=lambda: names.append(files.private_tmp(tmp_path / "a.json")))
    thread.start()
    thread.join()
    mine = files.private_tmp(tmp_path / "a.json")
    assert mine != names[0] and mine.parent == tmp_path and mine.name.startswith(".a.json.")
    assert files.host_pid() in mine.name


def test_private_tmps_of_killed_writers_are_removed(tmp_path):
    code = ("import pathlib, sys, time; from microdit import files; "
            "t = files.private_tmp(pathlib.Path(sys.argv[1]) / 'chunk-00000.pt'); t.write_bytes(b'half'); "
            "print(t.name, flush=True); time.sleep(120)")
    killed = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    dead_name = killed.stdout.readline().strip()
    killed.kill()  # kill -9 between writing the temporary and renaming it
    killed.wait()
    killed.stdout.close()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        host = socket.gethostname()
        kept = {files.private_tmp(tmp_path / "chunk-00001.pt").name,  # this process's own
                f".chunk-00002.pt.{host}-{live.pid}-7.tmp",  # a live writer's
                f".chunk-00003.pt.elsewhere-{killed.pid}-7.tmp",  # another host's: cannot be checked
                "chunk-00004.pt", ".chunk-00005.pt.tmp"}  # a finished chunk; a name private_tmp never makes
        for name in kept | {dead_name}:
            (tmp_path / name).write_bytes(b"x")
        files.remove_stale_tmps(tmp_path)
        assert {p.name for p in tmp_path.iterdir()} == kept
    finally:
        live.kill()
        live.wait()
