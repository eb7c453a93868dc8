"""Writing image datasets: the target folder holds a whole dataset or nothing, whatever stops the writer."""

import os
import signal
import socket
import subprocess
import sys

import pytest

from microdit.data import DataError, load_manifest, synthetic_sample, verify_dataset, write_image_dataset
from microdit.data.synthetic import SHAPES


def samples(n, interrupt_at=None):
    for i in range(n):
        if i == interrupt_at:
            raise KeyboardInterrupt("stopped")
        s = synthetic_sample(0, i, 16)
        yield f"{i:08d}", s.image, s.caption, s.labels


def test_an_interrupted_write_leaves_nothing(tmp_path):
    target = tmp_path / "img"
    with pytest.raises(KeyboardInterrupt):
        write_image_dataset(target, samples(25, interrupt_at=23), 16, list(SHAPES), "test", shard_size=10)
    assert not target.exists() and list(tmp_path.iterdir()) == []  # two finished shards removed as well
    (tmp_path / "empty").mkdir()  # an empty folder is a valid target and stays one after a failure
    with pytest.raises(DataError, match="expected"):
        write_image_dataset(tmp_path / "empty", [("k", b"not an image", "c", {})], 16, [], "test")
    assert [p.name for p in tmp_path.iterdir()] == ["empty"] and not any((tmp_path / "empty").iterdir())
    assert write_image_dataset(tmp_path / "empty", samples(5), 16, list(SHAPES), "test").samples == 5
    assert load_manifest(tmp_path / "empty").complete


KILLED_WRITER = """
import sys, time
from microdit.data import synthetic_sample, write_image_dataset
def slow():
    for i in range(1000):
        if i == 25:
            print("written", flush=True)
            time.sleep(60)
        s = synthetic_sample(0, i, 16)
        yield f"{i:08d}", s.image, s.caption, s.labels
write_image_dataset(sys.argv[1], slow(), 16, [], "test", shard_size=10)
"""


def test_a_killed_write_is_redone_and_its_leftovers_removed(tmp_path):
    target = tmp_path / "img"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "written"  # two shards on disk, a third open
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    leftovers = list(tmp_path.iterdir())
    assert not target.exists() and [p.name for p in leftovers] == [f".img.partial-{socket.gethostname()}-{proc.pid}"]
    names = sorted(p.name for p in leftovers[0].iterdir())  # the open shard under its private temporary name
    assert names[1:] == ["images-00000.tar", "images-00001.tar"]
    assert names[0].startswith(f".images-00002.tar.{socket.gethostname()}-{proc.pid}-") and names[0].endswith(".tmp")
    manifest = write_image_dataset(target, samples(25), 16, list(SHAPES), "test", shard_size=10)
    assert [p.name for p in tmp_path.iterdir()] == ["img"]  # the killed writer's folder is gone
    assert manifest.complete and manifest.samples == 25 and load_manifest(target) == manifest
    verify_dataset(target)


def test_a_live_writers_folder_is_left_alone(tmp_path):
    target = tmp_path / "img"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        theirs = tmp_path / f".img.partial-{socket.gethostname()}-{other.pid}"
        theirs.mkdir()
        write_image_dataset(target, samples(5), 16, list(SHAPES), "test")
        assert theirs.is_dir() and load_manifest(target).samples == 5  # still being written by a live process
    finally:
        other.kill()
        other.wait()
