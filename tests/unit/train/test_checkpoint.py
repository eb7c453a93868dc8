"""Checkpoints: atomic commit (a crash mid-save keeps the last good one), pruning, loading."""

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from microdit import run as runs
from microdit.train import checkpoint as ckpt


def test_checkpoint_crash_during_save_keeps_the_last_good_one(tmp_path, monkeypatch):
    tmp = ckpt.begin(tmp_path, 8)
    good = ckpt.commit(tmp, {"x": torch.ones(2)}, {"nimg": 8}, keep=2)
    assert runs.latest(tmp_path) == good

    def crash(*args, **kwargs):
        raise OSError("disk died mid-save")

    tmp = ckpt.begin(tmp_path, 16)
    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(runs.CheckpointError, match=rf"000000000016 could not be written \(disk died mid-save; is the "
                                                   rf"disk full\?\); its partial folder was removed, the last "
                                                   rf"complete checkpoint is {good}"):
        ckpt.commit(tmp, {"x": torch.zeros(2)}, {"nimg": 16}, keep=2)
    monkeypatch.undo()
    assert not tmp.exists()  # a full disk is not filled further by the partial folder
    assert runs.latest(tmp_path) == good
    state, meta = runs.load(good)
    assert torch.equal(state["x"], torch.ones(2)) and meta["nimg"] == 8
    for nimg in (24, 32, 40):
        ckpt.commit(ckpt.begin(tmp_path, nimg), {"x": torch.ones(1)}, {"nimg": nimg}, keep=2)
    assert [p.name for p in runs.list_checkpoints(runs.checkpoint_root(tmp_path))] == ["000000000032", "000000000040"]
    assert not list(runs.checkpoint_root(tmp_path).glob(".tmp-*"))


def test_pinned_checkpoints_survive_retention(tmp_path):
    ckpt.commit(ckpt.begin(tmp_path, 0), {"x": torch.ones(1)}, {"nimg": 0, "pinned": True}, keep=2)
    for nimg in (8, 16, 24):
        ckpt.commit(ckpt.begin(tmp_path, nimg), {"x": torch.ones(1)}, {"nimg": nimg}, keep=2)
    kept = [p.name for p in runs.list_checkpoints(runs.checkpoint_root(tmp_path))]
    assert kept == ["000000000000", "000000000016", "000000000024"]  # the pinned one is not one of the two kept



class _Payload:
    """Unpickling this runs code (touches a marker file): what a crafted checkpoint file would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_random_states_round_trip_without_pickled_code(tmp_path):
    path = tmp_path / "rng-0.pt"
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    random.random(), np.random.normal(), torch.rand(1)  # states mid-stream (numpy's cached gaussian too)
    ckpt.save_rng(path)
    expected = (random.random(), np.random.normal(), torch.rand(3).tolist())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    ckpt.load_rng(path)
    assert (random.random(), np.random.normal(), torch.rand(3).tolist()) == expected


@pytest.mark.parametrize("target", ["rng-0.pt", "state.pt"])
def test_a_crafted_pickle_in_a_checkpoint_is_refused_not_run(tmp_path, target):
    folder = ckpt.commit(ckpt.begin(tmp_path, 8), {"x": torch.ones(1)}, {"nimg": 8}, keep=2)
    ckpt.save_rng(folder / "rng-0.pt")
    marker = tmp_path / "code-ran"
    torch.save({"python": _Payload(marker), "x": _Payload(marker)}, folder / target)
    with pytest.raises(RuntimeError, match=r"(checkpoint|random-state file) .* unreadable"):
        ckpt.load_rng(folder / "rng-0.pt") if target.startswith("rng") else runs.load(folder)
    assert not marker.exists()
