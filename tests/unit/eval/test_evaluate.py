"""Evaluation bookkeeping: metrics.json round trip and cached reference statistics."""

import numpy as np
import torch

from microdit.eval import read_metrics, record_metrics

from conftest import run_together


def test_metrics_json_round_trip(tmp_path):
    entry = {"name": "eval", "nimg": 64, "ema": True, "sampler": {"solver": "heun", "steps": 4}, "num_samples": 8,
             "seed": 0, "metrics": {"probe_fd": 1.5, "probe_acc": {"shape": 0.5}}}
    record_metrics(tmp_path, entry)
    record_metrics(tmp_path, entry | {"nimg": 128})
    record_metrics(tmp_path, entry | {"metrics": {"probe_fd": 0.5}})  # same key: replaced
    entries = read_metrics(tmp_path)
    assert [e["nimg"] for e in entries] == [128, 64] and entries[1]["metrics"] == {"probe_fd": 0.5}


class MeanColour:
    """A stand-in feature extractor (mean and std of each channel) to test the statistics plumbing."""

    name = "mean-colour"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)


def test_reference_statistics_are_built_and_cached(synthetic):
    from microdit.eval.metrics import dataset_images, reference_stats

    latents = synthetic / "eval"
    images = dataset_images(synthetic / "eval-img", 300)  # an image dataset: its real images (file order)
    decoded = dataset_images(latents, 300)  # a latent dataset: its decodings (reader order; pixel:2 + fp16)
    assert images.dtype == torch.uint8 and images.shape == decoded.shape == (300, 3, 32, 32)
    sums = [x.flatten(1).float().sum(dim=1).sort().values for x in (images, decoded)]
    assert torch.allclose(sums[0], sums[1], atol=3 * 32 * 32)  # the same images, at most 1 level off per pixel
    stats = reference_stats(latents, MeanColour(), limit=200)
    cache = latents / "eval_stats" / "mean-colour-200.npz"
    assert cache.is_file() and stats.count == 200
    cache.write_bytes(cache.read_bytes())  # the second call reads the cache, not the data
    again = reference_stats(latents, MeanColour(), limit=200)
    assert np.array_equal(again.mu, stats.mu)


RECORD = """
import sys, time
from pathlib import Path
from microdit.eval import record_metrics
run, name = Path(sys.argv[1]), sys.argv[2]
(run / f"ready-{name}").touch()  # start writing together, once all four have imported
while len(list(run.glob("ready-*"))) < 4:
    time.sleep(0.01)
for nimg in range(5):
    record_metrics(run, {"name": name, "nimg": nimg, "ema": True, "sampler": {}, "num_samples": 8, "seed": 0,
                         "metrics": {"probe_fd": 1.0}})
"""


def test_evaluations_finishing_at_once_lose_no_entry(tmp_path):
    run_together(RECORD, [[str(tmp_path), f"eval{i}"] for i in range(4)])
    assert sorted((e["name"], e["nimg"]) for e in read_metrics(tmp_path)) == [(f"eval{i}", n) for i in range(4)
                                                                              for n in range(5)]
