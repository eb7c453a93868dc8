"""Evaluation: Fréchet distance, probe metrics, CLIP and Inception paths on random-init networks of
the real architectures, generation, metrics.json and results.csv round trips, the CLIs."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from microdit.cli.data import main as data_main
from microdit.data.reader import read_dataset
from microdit.eval import FeatureStats, frechet_distance, read_metrics, record_metrics
from microdit.eval.features import ClipModel, InceptionFeatures
from microdit.eval.probe import probe_metrics, train_probe
from microdit.eval.results import collect, flatten, markdown_table, plot, read_csv, write_csv


def test_frechet_of_gaussians_against_the_closed_form():
    rng = np.random.default_rng(0)
    a = np.diag(rng.uniform(0.5, 2, 6))
    b = np.diag(rng.uniform(0.5, 2, 6))
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    closed = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(np.diag(a)) - np.sqrt(np.diag(b))) ** 2)  # commuting case
    assert frechet_distance(FeatureStats(mu1, a, 10), FeatureStats(mu2, b, 10)) == pytest.approx(closed, rel=1e-10)
    import scipy.linalg

    m1, m2 = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    s1, s2 = m1 @ m1.T + 0.1 * np.eye(6), m2 @ m2.T + 0.1 * np.eye(6)  # non-commuting
    oracle = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(FeatureStats(mu1, s1, 10), FeatureStats(mu2, s2, 10)) == pytest.approx(oracle, rel=1e-8)


def test_a_set_against_itself_and_save_load(tmp_path):
    x = torch.randn(500, 16)
    stats = FeatureStats.of(x)
    assert abs(frechet_distance(stats, FeatureStats.of(x))) < 1e-8
    stats.save(tmp_path / "s.npz")
    loaded = FeatureStats.load(tmp_path / "s.npz")
    assert np.array_equal(loaded.sigma, stats.sigma) and loaded.count == 500
    assert frechet_distance(stats, FeatureStats.of(torch.randn(500, 16) + 1)) > 10
    with pytest.raises(ValueError, match="N >= 2"):
        FeatureStats.of(torch.randn(1, 4))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    for name, num, seed in (("train", 1500, 0), ("eval", 300, 1)):
        data_main(["synthetic", str(root / f"{name}-img"), "--num", str(num), "--seed", str(seed)])
        data_main(["encode", str(root / f"{name}-img"), str(root / name), "--text-encoder", "offline:128:32",
                   "--device", "cpu"])
    return root


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


@pytest.fixture(scope="module")
def small_clip(small_clip_arch):
    return ClipModel(small_clip_arch)


def test_clip_score_on_a_random_init_model(small_clip):
    images = torch.randint(0, 256, (3, 3, 40, 48), dtype=torch.uint8)
    captions = ["a red circle", "a blue square", "two shapes"]
    scores = small_clip.clip_score(images, captions)
    assert scores.shape == (3,) and torch.isfinite(scores).all() and scores.abs().max() <= 100
    image_f = small_clip.model.encode_image(small_clip._prepare(images))
    text_f = small_clip.model.encode_text(small_clip.tokenizer(captions))
    expected = 100 * torch.nn.functional.cosine_similarity(image_f, text_f, dim=-1)
    torch.testing.assert_close(scores, expected.detach())
    assert small_clip(images).shape == (3, 32)  # Clip-FID features


def test_inception_path_with_random_init_weights(tmp_path, monkeypatch):
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    monkeypatch.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, strict=True: None)
    monkeypatch.setattr(fe, "load_state_dict_from_url", lambda *a, **k: {})
    random_net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    torch.save(random_net.state_dict(), tmp_path / "inception-random.pt")
    monkeypatch.undo()
    extractor = InceptionFeatures(str(tmp_path / "inception-random.pt"))  # the real loading path, local weights
    features = extractor(torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8))
    assert features.shape == (3, 2048) and torch.isfinite(features).all()


def test_metrics_json_round_trip(tmp_path):
    entry = {"name": "eval", "nimg": 64, "ema": True, "sampler": {"solver": "heun", "steps": 4}, "num_samples": 8,
             "seed": 0, "metrics": {"probe_fd": 1.5, "probe_acc": {"shape": 0.5}}}
    record_metrics(tmp_path, entry)
    record_metrics(tmp_path, entry | {"nimg": 128})
    record_metrics(tmp_path, entry | {"metrics": {"probe_fd": 0.5}})  # same key: replaced
    entries = read_metrics(tmp_path)
    assert [e["nimg"] for e in entries] == [128, 64] and entries[1]["metrics"] == {"probe_fd": 0.5}


def _fake_run(root: Path, name: str, ratio: float, seed: int, fd: float) -> None:
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(f"trainer:\n  name: {name}\n  seed: {seed}\nstages:\n- mask_ratio: {ratio}\n")
    (run / "summary.json").write_text(json.dumps({"flops": 1e12, "dollars": 0.5}))
    record_metrics(run, {"name": "ev", "nimg": 10, "ema": False, "sampler": {}, "num_samples": 4, "seed": 0,
                         "metrics": {"probe_fd": fd, "probe_acc": {"shape": 0.25}}})


def test_results_csv_round_trip_and_tables(tmp_path):
    for i, (ratio, seed, fd) in enumerate([(0.0, 0, 1.0), (0.0, 1, 3.0), (0.75, 0, 5.0)]):
        _fake_run(tmp_path / "runs", f"r{i}", ratio, seed, fd)
    rows = collect([tmp_path / "runs"])
    assert rows[0]["stages.0.mask_ratio"] == 0.0 and rows[0]["eval.ev.probe_acc.shape"] == 0.25
    assert rows[2]["cost.flops"] == 1e12
    write_csv(rows, tmp_path / "results.csv")
    assert read_csv(tmp_path / "results.csv") == rows
    table = markdown_table(rows, ["stages.0.mask_ratio"], ["eval.ev.probe_fd"])
    assert "| 0.0 | 2 ± 1.4 (n=2) | 2 |" in table and "| 0.75 | 5 | 1 |" in table
    plot(rows, "stages.0.mask_ratio", "eval.ev.probe_fd", tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 1000
    assert flatten({"a": {"b": [1, 2]}, "c": [{"d": 1}]}) == {"a.b": [1, 2], "c.0.d": 1}


class MeanColour:
    """A stand-in feature extractor (mean and std of each channel) to test the statistics plumbing."""

    name = "mean-colour"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)


def test_reference_statistics_are_built_and_cached(synthetic):
    from microdit.eval.evaluate import dataset_images, reference_stats

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
