"""Probe metrics rank real data above noise and above shuffled captions."""

import numpy as np
import torch

from microdit.data.reader import read_dataset
from microdit.eval.probe import probe_metrics, train_probe


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

