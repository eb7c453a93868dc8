"""From each source's raw fixture to a trained nano run: prepare --from, a two-resolution encode, and
one run whose first stage reads the dataset's 32-px latents and whose second its 64-px ones."""

import json

import pytest

from microdit.cli.data import main as data_main
from microdit.data import load_manifest
from microdit.train.trainer import train

from conftest import fixture_script
from train_helpers import base_overrides, compose_config, stats

pytestmark = pytest.mark.slow
fixtures = fixture_script("make_source_fixtures")


@pytest.mark.parametrize("source", sorted(fixtures.MAKERS))
def test_a_nano_run_trains_on_each_prepared_source_at_two_resolutions(source, tmp_path):
    fixtures.main(tmp_path / "raw", [source])
    data_main(["prepare", source, str(tmp_path / "images"), "--from", str(tmp_path / "raw" / source)])
    data_main(["encode", str(tmp_path / "images"), str(tmp_path / "latents"), "--resolutions", "32", "64",
               "--device", "cpu"])
    latents = tmp_path / "latents"
    assert load_manifest(latents).resolutions == {"32": [12, 16, 16], "64": [12, 32, 32]}
    stages = ["data.resolution=32", "+stages={pretrain: {images: 16, warmup_images: 0}, hires: {images: 8, "
              "warmup_images: 0, resolution: 64, input_size: [32, 32], pos_interp_scale: 2.0}}"]
    train(compose_config(base_overrides(tmp_path, latents, source, stages)))
    run = tmp_path / "runs" / source
    info = json.loads((run / "run_info.json").read_text())
    assert [(s["name"], s["images"]) for s in info["stages"]] == [("pretrain", 16), ("hires", 8)]
    per_image = [s["flops_per_image"] for s in info["stages"]]
    assert per_image[1] > 3 * per_image[0]  # the second stage ran on 4x the tokens
    rows = stats(run)
    assert rows and all(r["loss"] == r["loss"] for r in rows)  # finite losses at both resolutions
