"""A full disk (or quota) while microdit writes: one error naming what could not be written, what was
there before unchanged, no partial file left to fill the disk further. The disk is made full by
making the write calls fail as a full disk makes them fail (ENOSPC)."""

from __future__ import annotations

import errno
import importlib
import os

import pytest
import torch

from microdit import files
from microdit.cli import data as data_cli
from microdit.cli import eval as eval_cli
from microdit.data import DataError, encode_dataset, load_manifest, shards
from microdit.data.shards import ShardWriter
from microdit.encoders import load_autoencoder, load_text_encoder
from microdit.eval.results import read_csv, write_csv
from microdit.files import WriteError

evaluate_module = importlib.import_module("microdit.eval.evaluate")  # the module, not its function


def _full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_an_atomic_write_names_its_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    files.write_atomic(path, b"before")
    monkeypatch.setattr(files.os, "fsync", _full)
    with pytest.raises(WriteError, match=rf"^{path} could not be written \(No space left on device; is the disk"):
        files.write_atomic(path, b"after")
    assert path.read_bytes() == b"before" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_other_write_errors_keep_their_kind(tmp_path, monkeypatch):
    def denied(*args):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(files.os, "fsync", denied)
    with pytest.raises(PermissionError):
        files.write_atomic(tmp_path / "x", b"x")


def test_a_results_csv_on_a_full_disk_stays_as_it_was(tmp_path, monkeypatch):
    path = tmp_path / "results.csv"
    write_csv([{"run": "a", "probe_fd": 1.5}], path)
    monkeypatch.setattr(files.os, "fsync", _full)
    with pytest.raises(WriteError, match="results.csv could not be written"):
        write_csv([{"run": "b", "probe_fd": 2.5}], path)
    assert read_csv(path) == [{"run": "a", "probe_fd": 1.5}]


class _FillingFile:
    """A file on a disk with ``disk["room"]`` bytes left: past them, writes fail as on a full disk,
    and so does closing (the last buffered bytes cannot be written)."""

    def __init__(self, real, disk: dict) -> None:
        self.real, self.disk, self.failed = real, disk, False

    def write(self, data) -> int:
        if len(data) > self.disk["room"]:  # what fits is written, then the disk is full
            self.real.write(data[:self.disk["room"]])
            self.disk["room"], self.failed = 0, True
            _full()
        self.disk["room"] -= len(data)
        return self.real.write(data)

    def close(self) -> None:
        self.real.close()
        if self.failed:
            _full()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getattr__(self, name):
        return getattr(self.real, name)


def _disk_with_room(room: int, monkeypatch) -> None:
    """Shards are written to a disk that is full after ``room`` more bytes."""
    disk = {"room": room}

    def filling_open(path, mode="r", *args, **kwargs):
        real = open(path, mode, *args, **kwargs)
        return _FillingFile(real, disk) if "w" in mode else real

    monkeypatch.setattr(shards, "open", filling_open, raising=False)


def test_a_shard_is_dropped_where_even_its_end_cannot_be_written(tmp_path, monkeypatch):
    """On a full disk the tar's end marker and the file's last bytes fail to write too: abort still
    removes the temporary file and raises nothing (it runs while another error is handled)."""
    _disk_with_room(3000, monkeypatch)
    writer = ShardWriter(tmp_path / "images-00000.tar")
    with pytest.raises(OSError, match="No space left"):
        for i in range(10):
            writer.write(f"k{i}", {"txt": b"x" * 1000})
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_an_image_dataset_on_a_full_disk(tmp_path, monkeypatch, capsys):
    _disk_with_room(5000, monkeypatch)  # full within the first shard
    with pytest.raises(SystemExit) as stop:
        data_cli.main(["synthetic", str(tmp_path / "syn"), "--num-samples", "30", "--shard-size", "10", "--size", "16"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"microdit-data synthetic: error: {tmp_path / 'syn'}: the dataset could not be written (No space "
                   "left on device); nothing in it was changed and its partial files were removed")
    assert list(tmp_path.iterdir()) == []  # no dataset, no hidden partial folder


def test_an_encode_on_a_full_disk_keeps_its_shards_and_resumes(tmp_path, monkeypatch):
    data_cli.main(["synthetic", str(tmp_path / "img"), "--num-samples", "30", "--shard-size", "10", "--size", "16"])
    encoders = load_autoencoder("pixel:2"), load_text_encoder("offline:32:16")
    reference = encode_dataset(tmp_path / "img", tmp_path / "ref", *encoders, progress=False)
    with monkeypatch.context() as patch:
        _disk_with_room(reference.shards[0].bytes + reference.shards[1].bytes // 2, patch)  # full in the second
        with pytest.raises(DataError, match=rf"^{tmp_path / 'lat'}: the latent shards could not be written \(No "
                                            "space left on device\\); the shards finished before are kept"):
            encode_dataset(tmp_path / "img", tmp_path / "lat", *encoders, progress=False)
    assert [s.name for s in load_manifest(tmp_path / "lat").shards] == ["latents-00000.tar"]
    assert sorted(p.name for p in (tmp_path / "lat").iterdir()) == ["latents-00000.tar", "manifest.json"]
    resumed = encode_dataset(tmp_path / "img", tmp_path / "lat", *encoders, progress=False)  # space freed
    assert [(s.name, s.sha256) for s in resumed.shards] == [(s.name, s.sha256) for s in reference.shards]


def test_generated_samples_on_a_full_disk(tmp_path, monkeypatch, capsys):
    """A chunk of generated samples that cannot be written is named (and leaves no file); the
    command ends with that line."""
    monkeypatch.setattr(files.os, "fsync", _full)
    with pytest.raises(WriteError, match="samples-0000000-0000004.pt could not be written"):
        evaluate_module._chunks(tmp_path / "eval", lambda lo, hi: torch.zeros(hi - lo, 4, 2, 2), 8, 4, 0, 1)
    assert list((tmp_path / "eval").iterdir()) == []

    def full_evaluation(*args, **kwargs):
        evaluate_module._chunks(tmp_path / "eval", lambda lo, hi: torch.zeros(hi - lo, 4, 2, 2), 8, 4, 0, 1)

    monkeypatch.setattr(eval_cli, "evaluate", full_evaluation)
    with pytest.raises(SystemExit) as stop:
        eval_cli.main(["run", str(tmp_path), "--dataset", str(tmp_path), "--metrics", "probe"])
    assert str(stop.value.code).startswith("microdit-eval: error: ") and "could not be written" in stop.value.code


def test_a_training_log_row_on_a_full_disk_names_the_file_and_resumes_clean(tmp_path, monkeypatch):
    """The disk fills while a log row is appended: one error naming stats.jsonl and what to do; the
    cut row is dropped when the run resumes, the rows before it kept."""
    from microdit.train import logging as train_logging
    from microdit.train.logging import StatsFile

    path = tmp_path / "stats.jsonl"
    stats = StatsFile(path, 0)
    stats.write({"nimg": 8, "loss": 1.0})
    disk = {"room": 10}
    monkeypatch.setattr(train_logging, "open", lambda p, mode: _FillingFile(open(p, mode), disk), raising=False)
    with pytest.raises(WriteError, match=rf"^{path} could not be written \(No space left on device; is the disk "
                                         r"or your quota full\?\); the run stopped: free space and run the same"):
        stats.write({"nimg": 16, "loss": 0.5, "lr": 0.001})
    assert path.read_text() == '{"nimg": 8, "loss": 1.0}\n{"nimg": 1'  # the cut row
    monkeypatch.undo()
    StatsFile(path, 8)  # the run resumes from its checkpoint at 8 images
    assert path.read_text() == '{"nimg": 8, "loss": 1.0}\n'


def test_a_measurement_outlives_a_full_disk(tmp_path, monkeypatch, capsys):
    """microdit-bench prints its report before writing it: a full disk names the file and the
    minutes of measuring are still on the screen (or in the log)."""
    from microdit.cli import bench

    monkeypatch.setattr(bench, "run_all", lambda quick, device, compile, results: results.update(device="cpu"))
    monkeypatch.setattr(bench, "summary_markdown", lambda results: "| the report |")
    monkeypatch.setattr(files.os, "fsync", _full)
    with pytest.raises(SystemExit) as stop:
        bench.main(["--quick", "--out", str(tmp_path / "bench")])
    assert stop.value.code == (f"microdit-bench: error: {tmp_path / 'bench' / 'bench.json'} could not be written (No "
                               "space left on device; is the disk or your quota full?); what was there before is "
                               "unchanged (the report is printed above)")
    assert "| the report |" in capsys.readouterr().out
    assert list((tmp_path / "bench").iterdir()) == []


@pytest.mark.parametrize("fails", ["creating", "writing"])
def test_a_lock_on_a_full_disk_leaves_no_lock_file(tmp_path, monkeypatch, fails):
    """A lock file whose creation (a directory block: ext4) or record (tmpfs) meets a full disk: the
    lock file is named and none is left behind, so the next try after freeing space takes the lock
    at once (an empty one would be refused as damaged: "delete it")."""
    from microdit import locks

    path = tmp_path / ".lock"
    if fails == "creating":
        monkeypatch.setattr(locks.os, "open", _full)
    else:
        monkeypatch.setattr(locks.os, "fdopen", lambda fd, mode: _FillingFile(open(fd, mode), {"room": 5}))
    with pytest.raises(WriteError, match=rf"^{path} could not be written \(No space left on device; is the disk or "
                                         r"your quota full\?\); no lock file was left behind$"):
        locks.acquire(path, "run x", wait=False)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    with locks.acquire(path, "run x", wait=False):
        assert path.is_file()


def test_a_job_claiming_its_results_folder_on_a_full_disk_leaves_no_record(tmp_path, monkeypatch):
    """The job's ownership record (job.json) on a full disk: named, nothing left behind, and the job
    owns its folder once it is run again after freeing space."""
    from microdit import pipeline

    job = pipeline.compose_job("main")
    monkeypatch.setattr(files.os, "fdopen", lambda fd, mode: _FillingFile(open(fd, mode), {"room": 3}))
    with pytest.raises(WriteError, match=r"job\.json could not be written \(No space left on device; .*\); no run was "
                                         "trained and no record was left$"):
        pipeline.report_dir(job, tmp_path, claim=True)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    assert pipeline.report_dir(job, tmp_path, claim=True) == tmp_path and (tmp_path / "job.json").is_file()


def test_a_run_folder_on_a_full_disk_is_named_and_left_empty(tmp_path, monkeypatch):
    """The trainer's first write (its test that the run folder can be written) meets a full disk: the
    file is created, its bytes are not. One line saying so, and the test file not left behind."""
    from microdit.train import checkpoint

    def full_write(path, text):
        path.touch()
        _full()

    run_dir = tmp_path / "runs" / "r1"
    monkeypatch.setattr(checkpoint.Path, "write_text", full_write)
    with pytest.raises(WriteError, match=rf"^{run_dir} could not be written \(No space left on device; is the disk "
                                         r"or your quota full\?\); nothing was trained: free space and run"):
        checkpoint.check_writable(run_dir, 0)
    assert list(run_dir.iterdir()) == []
