"""microdit-eval coco end to end on the COCO fixture: the caption draw, the real-image reference,
FID and CLIP score with random-init networks of the real architectures, and the Table 3 notebook."""

import importlib
import json
import re

import nbformat
import pytest
import torch
from nbclient import NotebookClient

from microdit.cli.data import main as data_main
from microdit.cli.eval import main as eval_main
from microdit.cli.results import main as results_main
from microdit.data import DataError, load_manifest
from microdit.eval.coco import coco30k_pairs
from microdit.eval.features import InceptionFeatures
from microdit.eval.frechet import FeatureStats, frechet_distance
from microdit.eval.metrics import dataset_images, decode
from microdit.train.trainer import train

from conftest import FIXTURE_DIR, fixture_script
from train_helpers import base_overrides, compose_config

pytestmark = pytest.mark.slow
ROOT = FIXTURE_DIR.parents[1]
fixtures = fixture_script("make_source_fixtures")


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    fixtures.main(root / "raw", ["coco2014"])
    data_main(["prepare", "coco2014", str(root / "coco2014"), "--from", str(root / "raw" / "coco2014")])
    return root / "coco2014"


def _random_inception(path):
    """InceptionV3 of torch-fidelity's architecture with random (He-initialised) weights, whose
    features vary with the image (its own default init gives ~0 features)."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    load, fetch = fe.FeatureExtractorInceptionV3.load_state_dict, fe.load_state_dict_from_url
    fe.FeatureExtractorInceptionV3.load_state_dict = lambda self, sd, strict=True: None
    fe.load_state_dict_from_url = lambda *a, **k: {}
    try:
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    finally:
        fe.FeatureExtractorInceptionV3.load_state_dict, fe.load_state_dict_from_url = load, fetch
    generator = torch.Generator().manual_seed(0)
    state = {k: (torch.randn(v.shape, generator=generator) * (2 / max(1, v[0].numel())) ** 0.5
                 if k.endswith("conv.weight") or k.endswith("fc.weight") else v) for k, v in net.state_dict().items()}
    torch.save(state, path)
    return str(path)


def test_the_caption_draw_is_fixed_one_caption_per_image(coco):
    pairs = coco30k_pairs(coco, count=4, seed=0)
    assert pairs == coco30k_pairs(coco, count=4, seed=0) and pairs != coco30k_pairs(coco, count=4, seed=1)
    assert len({key for key, _, _ in pairs}) == 4 and len(coco30k_pairs(coco)) == load_manifest(coco).samples == 6
    assert all(caption.startswith("A teal disc") for _, caption, _ in pairs)


def test_the_raw_download_is_named_with_the_command_that_prepares_it(coco):
    """--coco given the COCO download itself: one line with the prepare command; nothing built beside it."""
    from microdit.eval.coco import coco30k_dataset

    raw = coco.parent / "raw" / "coco2014"
    before = sorted(raw.parent.iterdir())
    with pytest.raises(DataError, match=re.escape(f"{raw}: not a prepared coco2014 dataset (no manifest.json); the "
                                                  f"COCO 2014 validation download becomes one with microdit-data "
                                                  f"prepare coco2014 OUT --from {raw}: give OUT")):
        coco30k_dataset(raw, 16, None, None, count=4)
    assert sorted(raw.parent.iterdir()) == before


def test_the_evaluation_set_is_built_in_one_read_of_the_drawn_pairs(coco, tmp_path, monkeypatch):
    import shutil

    import microdit.eval.coco as coco_module
    from microdit.data.shards import iter_shard
    from microdit.encoders import load_autoencoder, load_text_encoder

    copy = shutil.copytree(coco, tmp_path / "coco2014")  # the set is built beside it
    pairs = coco30k_pairs(copy, count=4, seed=3)
    reads = []
    monkeypatch.setattr(coco_module, "iter_shard", lambda path: reads.append(path.name) or iter_shard(path))
    images, _ = coco_module.coco30k_dataset(copy, 16, load_autoencoder("pixel:2"), load_text_encoder("offline:128:32"),
                                            count=4, seed=3, progress=False)
    assert sorted(reads) == sorted(info.name for info in load_manifest(copy).shards)  # each shard once
    built = [(key, members["txt"].decode()) for info in load_manifest(images).shards
             for key, members in iter_shard(images / info.name)]
    assert built == [(key, caption) for key, caption, _ in pairs]


def test_microdit_eval_coco_end_to_end(coco, tmp_path, capsys, monkeypatch):
    data_main(["synthetic", str(tmp_path / "images"), "--num-samples", "64", "--size", "32"])
    data_main(["encode", str(tmp_path / "images"), str(tmp_path / "data"), "--device", "cpu"])
    train(compose_config(base_overrides(tmp_path, tmp_path / "data", "tiny")))
    run = tmp_path / "runs" / "tiny"
    weights = _random_inception(tmp_path / "inception.pt")
    loads, load = [], importlib.import_module("microdit.run").load_model
    counted = lambda *a, **k: loads.append(a[0]) or load(*a, **k)  # noqa: E731
    for module in ("microdit.run", "microdit.eval.evaluate"):
        monkeypatch.setattr(importlib.import_module(module), "load_model", counted)
    eval_main(["coco", str(run), "--coco", str(coco), "--inception-weights", weights, "--clip-score-model",
               "ViT-B-32", "--steps", "2", "--batch-size", "4", "--device", "cpu"])
    out = capsys.readouterr().out
    assert '"fid"' in out and '"clip_score"' in out  # printed as well as recorded
    entry = json.loads((run / "metrics.json").read_text())["entries"][-1]
    assert entry["name"] == "coco30k" and entry["num_samples"] == 6
    assert len(loads) == 1  # the model is loaded once, for the encoders' names, its resolution and sampling
    assert entry["sampler"]["steps"] == 2 and entry["sampler"]["cfg_scale"] == 5.0  # the protocol's CFG kept
    assert set(entry["metrics"]) == {"fid", "clip_score"}
    real = entry["reference_dataset"]
    assert real.endswith("-32px-images") and load_manifest(real).image_size == [32, 32]  # nano: 16 latents x 2

    # FID recomputed independently: the generated chunks decoded, the real images read, one extractor
    chunks = sorted((run / "eval").glob("coco30k-*/samples-*.pt"))
    generated = decode(torch.cat([torch.load(c, weights_only=True).float() for c in chunks]), "pixel:2")
    extractor = InceptionFeatures(weights)
    reference = FeatureStats.of(extractor(dataset_images(real, 6)))
    oracle = frechet_distance(FeatureStats.of(extractor(generated)), reference)
    assert entry["metrics"]["fid"] == pytest.approx(oracle, rel=1e-6) and oracle > 0

    results_main([str(tmp_path / "runs"), "--out", str(tmp_path / "results.csv")])
    monkeypatch.setenv("MICRODIT_RESULTS", str(tmp_path / "results.csv"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    book = nbformat.read(ROOT / "notebooks" / "table3_coco.ipynb", as_version=4)
    NotebookClient(book, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "".join(str(o.get("data", {}).get("text/markdown", "")) for c in book.cells for o in c.get("outputs", []))
    assert "1 runs with a `coco30k` evaluation" in text and "| tiny |" in text and "12.7" in text
