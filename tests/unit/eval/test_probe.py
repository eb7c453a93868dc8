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
