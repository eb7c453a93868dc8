"""Checkpoints: atomic commit (a crash mid-save keeps the last good one), pruning, loading."""

import pytest
import torch

from microdit.train import checkpoint as ckpt


def test_checkpoint_crash_during_save_keeps_the_last_good_one(tmp_path, monkeypatch):
    tmp = ckpt.begin(tmp_path, 8)
    good = ckpt.commit(tmp, {"x": torch.ones(2)}, {"nimg": 8}, keep=2)
    assert ckpt.latest(tmp_path) == good

    def crash(*args, **kwargs):
        raise OSError("disk died mid-save")

    tmp = ckpt.begin(tmp_path, 16)
    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        ckpt.commit(tmp, {"x": torch.zeros(2)}, {"nimg": 16}, keep=2)
    monkeypatch.undo()
    assert ckpt.latest(tmp_path) == good  # the half-written .tmp-... folder is not a checkpoint
    state, meta = ckpt.load(good)
    assert torch.equal(state["x"], torch.ones(2)) and meta["nimg"] == 8
    for nimg in (24, 32, 40):
        ckpt.commit(ckpt.begin(tmp_path, nimg), {"x": torch.ones(1)}, {"nimg": nimg}, keep=2)
    assert [p.name for p in ckpt.list_checkpoints(ckpt.checkpoint_root(tmp_path))] == ["000000000032", "000000000040"]
    assert not list(ckpt.checkpoint_root(tmp_path).glob(".tmp-*"))

