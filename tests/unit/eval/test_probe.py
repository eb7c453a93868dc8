"""Probe metrics rank real data above noise and above shuffled captions; the probe folds large
latents to its grid; its cache round-trips and is kept per training length."""

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from microdit.data.reader import read_dataset
from microdit.eval.probe import PROBE_GRID, dataset_probe, fold_factor, probe_metrics, probe_path, train_probe


def test_probe_ranks_real_above_noise_and_shuffled_captions(synthetic):
    latents, labels, _ = read_dataset(synthetic / "train")
    probe = train_probe(latents, labels, steps=400)
    assert set(probe.values) >= {"shape", "colour", "position", "count", "background", "size"}
    real, real_labels, _ = read_dataset(synthetic / "eval")
    half = len(real) // 2
    truth = probe_metrics(probe, real[:half], real_labels[:half], real[half:])
    noise = probe_metrics(probe, torch.randn_like(real[:half]) * real.std(), real_labels[:half], real[half:])
    shuffled_labels = [real_labels[i] for i in np.random.default_rng(0).permutation(half)]
    shuffled = probe_metrics(probe, real[:half], shuffled_labels, real[half:])
    assert truth["probe_acc_mean"] > 0.6
    assert truth["probe_acc_mean"] > noise["probe_acc_mean"] + 0.2
    assert truth["probe_acc_mean"] > shuffled["probe_acc_mean"] + 0.2
    assert truth["probe_fd"] < noise["probe_fd"] / 5
    for attribute in ("colour", "position"):
        assert truth["probe_acc"][attribute] > shuffled["probe_acc"][attribute]



@pytest.mark.parametrize("size", [(8, 8), (16, 16), (32, 32), (64, 64), (34, 34), (24, 40), (48, 16)])
def test_fold_factor_is_the_smallest_power_of_two_reaching_the_grid(size):
    h, w = size
    f = fold_factor(h, w)
    assert f & (f - 1) == 0 and h % f == 0 and w % f == 0
    if max(h, w) <= PROBE_GRID:
        assert f == 1
    else:  # coarser than needed never; finer only where the next factor does not divide both sides
        assert max(h, w) / (f // 2 or 1) > PROBE_GRID
        assert max(h, w) / f <= PROBE_GRID or h % (2 * f) or w % (2 * f)


def test_a_folded_probe_equals_the_probe_of_the_space_to_depth_latents(synthetic):
    """3 x 32 x 32 images are probed exactly as their 12 x 16 x 16 space-to-depth latents."""
    latents, labels, _ = read_dataset(synthetic / "train", 400)
    images = F.pixel_shuffle(latents, 2)  # (N, 3, 32, 32)
    direct, folded = (train_probe(x, labels, steps=30, batch=32) for x in (latents, images))
    assert (direct.net.fold, folded.net.fold) == (1, 2)
    assert folded.heldout_accuracy == direct.heldout_accuracy
    features_direct, predicted_direct = direct.predict(latents[:64])
    features_folded, predicted_folded = folded.predict(images[:64])
    torch.testing.assert_close(features_folded, features_direct, rtol=1e-5, atol=1e-5)
    assert all(torch.equal(predicted_folded[k], predicted_direct[k]) for k in predicted_direct)


def test_dataset_probe_is_cached_per_training_length(synthetic, tmp_path):
    folder = tmp_path / "data"
    shutil.copytree(synthetic / "train", folder)
    probe = dataset_probe(folder, steps=20, limit=300)
    path = probe_path(folder, 20)
    assert path.is_file() and json.loads(path.with_suffix(".json").read_text())["steps"] == 20
    written = path.stat().st_mtime_ns
    again = dataset_probe(folder, steps=20, limit=300)  # read from the cache, not trained again
    assert path.stat().st_mtime_ns == written
    assert again.values == probe.values and again.heldout_accuracy == probe.heldout_accuracy
    x = read_dataset(folder, 16)[0]
    torch.testing.assert_close(again.predict(x)[0], probe.predict(x)[0])
    longer = dataset_probe(folder, steps=40, limit=300)  # another length: trained, not the cached one
    assert probe_path(folder, 40).is_file() and path.is_file()
    assert not torch.allclose(longer.predict(x)[0], probe.predict(x)[0])


def test_a_probe_summary_on_a_full_disk_is_named_and_the_probe_kept(synthetic, tmp_path, monkeypatch):
    """The disk fills between the probe and its JSON summary: the summary is named in one error and
    not left half-written; the probe itself is cached and read, not trained again, next time."""
    import errno
    import os

    from microdit import files

    folder = tmp_path / "data"
    shutil.copytree(synthetic / "train", folder)
    fsync, calls = files.os.fsync, []

    def second_fills(fd):
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        fsync(fd)

    monkeypatch.setattr(files.os, "fsync", second_fills)
    summary = probe_path(folder, 20).with_suffix(".json")
    with pytest.raises(files.WriteError, match=rf"^{summary} could not be written \(No space left on device"):
        dataset_probe(folder, steps=20, limit=300)
    assert probe_path(folder, 20).is_file() and not summary.exists()
    assert sorted(p.name for p in summary.parent.iterdir()) == [probe_path(folder, 20).name]  # no temporary left
    monkeypatch.undo()
    written = probe_path(folder, 20).stat().st_mtime_ns
    dataset_probe(folder, steps=20, limit=300)
    assert probe_path(folder, 20).stat().st_mtime_ns == written


def test_distinct_attributes_leave_out_a_renamed_copy():
    from microdit.eval.probe import distinct_attributes

    labels = [{"class": i % 3, "shape": "abc"[i % 3], "colour": "xy"[i % 2]} for i in range(12)]
    assert distinct_attributes(labels, ["class", "colour", "shape"]) == ["class", "colour"]
    labels[0]["shape"] = "b"  # no longer one-to-one with class: a different attribute
    assert distinct_attributes(labels, ["class", "colour", "shape"]) == ["class", "colour", "shape"]


def test_shuffled_chance_and_real_floor(synthetic):
    """On real held-out latents the probe reads the prompts far above the shuffled-prompt chance,
    and real vs real at the same n is a small distance: the rows a table reads its arms against
    (measured only at the same n)."""
    from microdit.data.reader import read_dataset
    from microdit.eval.probe import dataset_probe, probe_metrics

    probe = dataset_probe(synthetic / "train", steps=150)
    latents, labels, _ = read_dataset(synthetic / "eval", 300)
    real, twin = latents[:150], latents[150:]
    out = probe_metrics(probe, real, labels[:150], real, twin, seed=3)
    assert out["probe_acc"]["colour"] > out["probe_chance"]["colour"] + 0.3
    assert set(out["probe_chance"]) == set(out["probe_acc"]) and "class" in out["probe_acc"]
    mean_over = [k for k in out["probe_acc"] if k != "class"]  # class duplicates shape
    assert out["probe_acc_mean"] == pytest.approx(sum(out["probe_acc"][k] for k in mean_over) / len(mean_over))
    assert out["probe_fd"] == pytest.approx(0, abs=1e-6) and out["probe_fd_real"] > 0  # same set: zero
    noisy = probe_metrics(probe, real + 2 * torch.randn_like(real), labels[:150], real, twin, seed=3)
    assert noisy["probe_fd"] > out["probe_fd_real"] and noisy["probe_kid"] > out["probe_kid_real"]
    again = probe_metrics(probe, real, labels[:150], real, twin, seed=4)
    assert again["probe_acc"] == out["probe_acc"]  # only the shuffle depends on the seed
    short = probe_metrics(probe, real, labels[:150], real, twin[:149], seed=3)  # a floor at another n: none
    assert "probe_fd_real" not in short and "probe_kid_real" not in short and short["probe_fd"] == out["probe_fd"]


def test_bootstrap_interval_over_prompts():
    from microdit.eval.probe import bootstrap_interval

    hits = {"colour": torch.tensor([True] * 60 + [False] * 40), "shape": torch.ones(50, dtype=torch.bool)}
    low, high = bootstrap_interval(hits, seed=0)
    assert low["colour"] < 0.6 < high["colour"] and high["colour"] - low["colour"] == pytest.approx(0.19, abs=0.04)
    assert low["shape"] == high["shape"] == 1.0  # every prompt right: no spread to resample
    assert bootstrap_interval(hits, seed=0) == (low, high)  # seeded


def test_the_probe_trains_alike_whatever_the_callers_thread_count(synthetic):
    """Its weights are the same trained from a one-thread or a two-thread caller (without the pin
    they differ in the low bits: the kernels split their sums by thread), and the caller's
    setting is given back."""
    latents, labels, _ = read_dataset(synthetic / "train", 256)
    before = torch.get_num_threads()
    states = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            states.append(train_probe(latents, labels, steps=30, batch=64).net.state_dict())
            assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_a_field_with_one_value_per_sample_is_no_probe_attribute():
    """A source's file name (``image``) identifies samples: classifying it is memorising them."""
    from microdit.eval.probe import attribute_values

    labels = [{"image": f"{i:03d}.jpg", "colour": "xy"[i % 2], "nsfw": 0.1} for i in range(12)]
    assert attribute_values(labels) == {"colour": ["x", "y"]}
    with pytest.raises(ValueError, match="no categorical attribute.*each shared by several samples"):
        train_probe(torch.randn(12, 4, 8, 8), [{"image": lab["image"]} for lab in labels], steps=2)


def test_prompts_that_name_none_of_the_probes_attributes_get_no_accuracy(synthetic):
    """Another dataset's prompts (COCO captions read by a probe of the run's own data): the distances,
    and no accuracy at all rather than NaN means (metrics.json is JSON, NaN is not)."""
    probe = dataset_probe(synthetic / "train", steps=150)
    latents, labels, _ = read_dataset(synthetic / "eval", 40)
    out = probe_metrics(probe, latents[:20], [{"image": f"{i}.jpg"} for i in range(20)], latents[20:])
    assert set(out) == {"probe_fd", "probe_kid"} and all(np.isfinite(v) for v in out.values())
    json.dumps(out, allow_nan=False)


def test_a_probe_dataset_without_a_shared_attribute_is_named(tmp_path):
    """A prepared real dataset (JourneyDB's layout: only file names as labels) as the probe dataset:
    one line naming it and the metrics that need no labels, nothing cached."""
    from microdit.cli.data import main as data_main

    from conftest import fixture_script

    fixture_script("make_source_fixtures").main(tmp_path / "raw", ["jdb"])
    data_main(["prepare", "jdb", str(tmp_path / "jdb"), "--from", str(tmp_path / "raw" / "jdb")])
    data_main(["encode", str(tmp_path / "jdb"), str(tmp_path / "lat"), "--resolutions", "32", "--device", "cpu"])
    with pytest.raises(ValueError, match=f"^probe dataset {tmp_path / 'lat'}: the labels have no categorical "
                                         r"attribute.*\(fid, clip_fid, clip_score, kid\)$"):
        dataset_probe(tmp_path / "lat", steps=2)
    assert not probe_path(tmp_path / "lat", 2).exists()
