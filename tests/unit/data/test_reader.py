"""The training reader on the committed latent fixture: determinism, world-size independence,
workers, exact resume, epochs, mixing, caption dropout, bad data, model fit."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from microdit.data import DataConfig, DataError, LatentBatches, make_loader
from microdit.data.shards import ShardWriter, iter_shard, npy_bytes

from conftest import FIXTURE_DIR

FIXTURE = FIXTURE_DIR / "latents"


def keys(batches):
    return [k for b in batches for k in b["key"]]


def take(dataset, n, workers=0):
    it = iter(make_loader(dataset, workers))
    return [next(it) for _ in range(n)]


def test_batch_contents_and_types():
    b = LatentBatches(FIXTURE, batch_size=5).batch(0)
    assert b["latent"].shape == (5, 12, 16, 16) and b["latent"].dtype == torch.float32
    assert b["text"].shape == (5, 16, 32) and b["text_mask"].dtype == torch.bool
    assert len(b["caption"]) == 5 and all(isinstance(lab["class"], int) for lab in b["labels"])
    assert b["batch_index"] == 0 and b["bad_samples"] == 0


def test_deterministic_per_seed():
    a = keys(take(LatentBatches(FIXTURE, 4, seed=1), 5))
    assert a == keys(take(LatentBatches(FIXTURE, 4, seed=1), 5))
    assert a != keys(take(LatentBatches(FIXTURE, 4, seed=2), 5))


@pytest.mark.parametrize("shuffle", ["global", "buffer"])
def test_each_epoch_is_a_permutation(shuffle):
    ds = LatentBatches(FIXTURE, 8, shuffle=shuffle, shuffle_buffer=5, seed=3)
    first, second = keys(take(ds, 3)), keys([ds.batch(j) for j in range(3, 6)])
    assert sorted(first) == sorted(second) == sorted(f"{i:08d}" for i in range(24))
    assert first != second


def test_two_ranks_equal_one_rank_at_the_same_global_batch():
    whole = LatentBatches(FIXTURE, 6, seed=4, caption_dropout=0.3)
    halves = [LatentBatches(FIXTURE, 3, seed=4, caption_dropout=0.3, rank=r, world_size=2) for r in range(2)]
    for j in range(6):
        ref = whole.batch(j)
        parts = [h.batch(j) for h in halves]
        assert ref["key"] == parts[0]["key"] + parts[1]["key"]
        assert torch.equal(ref["text"], torch.cat([p["text"] for p in parts]))
        assert torch.equal(ref["latent"], torch.cat([p["latent"] for p in parts]))


def test_workers_and_resume_give_the_same_stream():
    plain = take(LatentBatches(FIXTURE, 5, seed=5), 7)
    with_workers = take(LatentBatches(FIXTURE, 5, seed=5), 7, workers=2)
    assert keys(plain) == keys(with_workers)
    assert [b["batch_index"] for b in with_workers] == list(range(7))
    resumed = take(LatentBatches(FIXTURE, 5, seed=5, start_batch=3), 4, workers=2)
    assert keys(resumed) == keys(plain[3:])
    assert all(torch.equal(a["latent"], b["latent"]) for a, b in zip(resumed, plain[3:], strict=True))


def test_caption_dropout_zeroes_text_and_unmasks():
    ds = LatentBatches(FIXTURE, 24, caption_dropout=0.5, seed=6)
    dropped = 0
    for j in range(20):
        b = ds.batch(j)
        rows = b["text"].abs().sum(dim=(1, 2)) == 0
        assert torch.all(b["text_mask"][rows])
        dropped += rows.sum().item()
    assert 0.4 < dropped / (20 * 24) < 0.6


@pytest.fixture()
def fixture_copy(tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(FIXTURE, dst)
    return dst


def test_mixing_follows_weights(fixture_copy):
    manifest = json.loads((fixture_copy / "manifest.json").read_text())
    manifest["source"] = "second copy"
    (fixture_copy / "manifest.json").write_text(json.dumps(manifest))
    ds = LatentBatches([FIXTURE, fixture_copy], 50, weights=[3, 1], seed=7)
    assert len(ds.batch(3)["key"]) == 50
    positions = ds._positions(0, 40_000)  # crosses mixture blocks
    counts = np.bincount([s for s, _ in positions], minlength=2)
    assert abs(counts[0] / 40_000 - 0.75) < 0.01
    fresh = LatentBatches([FIXTURE, fixture_copy], 50, weights=[3, 1], seed=7)
    assert positions[30_000:30_050] == fresh._positions(30_000, 50)  # any start gives the same draws
    first = [i for s, i in positions if s == 0][:24]
    assert sorted(first) == list(range(24))  # each dataset runs through its own epochs
    with pytest.raises(DataError, match="weights must be 2"):
        LatentBatches([FIXTURE, fixture_copy], 5, weights=[1])


def _rewrite_sample(folder: Path, index: int, change) -> None:
    """Rewrite shard 0 of a dataset copy with sample ``index`` changed (manifest size updated)."""
    shard = folder / "latents-00000.tar"
    samples = list(iter_shard(shard))
    shard.unlink()
    with ShardWriter(shard) as w:
        for i, (key, members) in enumerate(samples):
            w.write(key, change(dict(members)) if i == index else members)
        info = w.close()
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["shards"][0] = info.__dict__
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _read_all(folder, **kw):
    ds = LatentBatches(folder, 24, shuffle="global", **kw)
    return ds, ds.batch(0)


def test_nan_latent_names_shard_and_key(fixture_copy):
    _rewrite_sample(fixture_copy, 2, lambda m: m | {"latent.npy": npy_bytes(np.full((12, 16, 16), np.nan, np.float16))})
    with pytest.raises(DataError, match=r"latents-00000.tar: sample '00000002': latent contains NaN or Inf"):
        _read_all(fixture_copy)
    ds, batch = _read_all(fixture_copy, skip_bad_samples=True)
    assert len(batch["key"]) == 23 and batch["bad_samples"] == 1 and "00000002" not in batch["key"]


def test_wrong_shape_dtype_and_missing_member(fixture_copy):
    _rewrite_sample(fixture_copy, 1, lambda m: m | {"text.npy": npy_bytes(np.zeros((16, 31), np.float16))})
    with pytest.raises(DataError, match=r"sample '00000001': text is float16 \[16, 31\], expected shape \[16, 32\]"):
        _read_all(fixture_copy)
    _rewrite_sample(fixture_copy, 1, lambda m: {k: v for k, v in m.items() if k != "mask.npy"} |
                    {"text.npy": npy_bytes(np.zeros((16, 32), np.float16))})
    with pytest.raises(DataError, match=r"sample '00000001' lacks \['mask.npy'\]"):
        _read_all(fixture_copy)
    _rewrite_sample(fixture_copy, 1, lambda m: m | {"mask.npy": npy_bytes(np.zeros(16, np.int64))})
    with pytest.raises(DataError, match=r"mask is int64 \[16\], expected shape \[16\] \(bool\)"):
        _read_all(fixture_copy)


def test_truncated_or_missing_shard(fixture_copy):
    shard = fixture_copy / "latents-00001.tar"
    shard.write_bytes(shard.read_bytes()[:100_000])
    with pytest.raises(DataError, match="latents-00001.tar.*(truncated|corrupt)"):
        _read_all(fixture_copy)
    shard.unlink()
    with pytest.raises(DataError, match="latents-00001.tar listed in the manifest is missing"):
        _read_all(fixture_copy)


def test_incomplete_or_wrong_kind_refused(fixture_copy):
    manifest = json.loads((fixture_copy / "manifest.json").read_text())
    (fixture_copy / "manifest.json").write_text(json.dumps(manifest | {"complete": False}))
    with pytest.raises(DataError, match="not a complete, non-empty latent dataset"):
        LatentBatches(fixture_copy, 4)
    with pytest.raises(DataError, match="does not exist"):
        LatentBatches(fixture_copy / "nope", 4)


def test_accumulation_slices_cover_the_global_batch():
    one = LatentBatches(FIXTURE, 8, seed=9, caption_dropout=0.3)
    parts = {(r, a): LatentBatches(FIXTURE, 2, seed=9, caption_dropout=0.3, rank=r, world_size=2, accum=2)
             for r in range(2) for a in range(2)}
    for j in range(4):
        ref = one.batch(j)
        got = [parts[(r, a)].batch(j, a) for a in range(2) for r in range(2)]  # slice a * world + r
        assert ref["key"] == [k for g in got for k in g["key"]]
        assert torch.equal(ref["text"], torch.cat([g["text"] for g in got]))
    stream = take(LatentBatches(FIXTURE, 2, seed=9, rank=1, world_size=2, accum=2, start_batch=1), 4, workers=2)
    assert [(b["batch_index"], b["accum_index"]) for b in stream] == [(1, 0), (1, 1), (2, 0), (2, 1)]


def test_mixing_by_sample_counts_weighs_each_dataset_by_its_size(tmp_path):
    from microdit.cli.data import main as data_main
    from microdit.data import encode_dataset
    from microdit.encoders import load_autoencoder, load_text_encoder

    folders = []
    for name, n in (("big", 30), ("small", 10)):
        data_main(["synthetic", str(tmp_path / f"{name}-img"), "--num-samples", str(n), "--size", "16",
                   "--seed", str(n)])
        encode_dataset(tmp_path / f"{name}-img", tmp_path / name, load_autoencoder("pixel:2"),
                       load_text_encoder("offline:32:16"), progress=False)
        folders.append(tmp_path / name)
    by_size = LatentBatches(folders, 8, mix="samples", seed=1)
    assert by_size._positions(0, 5000) == LatentBatches(folders, 8, weights=[30, 10], seed=1)._positions(0, 5000)
    counts = np.bincount([s for s, _ in by_size._positions(0, 20_000)], minlength=2)
    assert abs(counts[0] / 20_000 - 0.75) < 0.015
    cfg = DataConfig(folders=[str(f) for f in folders], mix="samples")
    assert cfg.problems() == [] and LatentBatches.from_config(cfg, 8, seed=1)._positions(0, 50) == \
        by_size._positions(0, 50)
    assert "weights only go with mix=weights" in DataConfig(folders=["a"], weights=[1.0], mix="samples").problems()[0]
    assert "mix must be one of" in DataConfig(mix="size").problems()[0]


def test_reader_from_its_config():
    cfg = DataConfig(folders=[str(FIXTURE)], shuffle="buffer", shuffle_buffer=5, caption_dropout=0.3)
    assert cfg.problems() == []
    a = take(LatentBatches.from_config(cfg, 4, seed=3, rank=1, world_size=2, start_batch=1), 3)
    b = take(LatentBatches(FIXTURE, 4, seed=3, shuffle="buffer", shuffle_buffer=5, caption_dropout=0.3, rank=1,
                           world_size=2, start_batch=1), 3)
    assert keys(a) == keys(b) and all(torch.equal(x["text"], y["text"]) for x, y in zip(a, b, strict=True))
    bad = DataConfig(folders=[], weights=[1.0, -1.0], shuffle="random", caption_dropout=1.0, prepare="cifar")
    assert len(bad.problems()) == 5
