"""Manifests: clear errors for missing, malformed or inconsistent manifest files."""

import json

import pytest

from microdit.data import DataError, load_manifest
from microdit.data.manifest import Manifest, ShardInfo, save_manifest


def test_manifest_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_manifest(tmp_path / "nope")
    with pytest.raises(DataError, match=f"manifest.json is missing: .* a download of one of the paper's sets becomes "
                                        f"one with microdit-data prepare SOURCE OUT --from {tmp_path}$"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"kind": "latents", "colour": 1}))
    with pytest.raises(DataError, match=r"unknown manifest field\(s\) \['colour'\]"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"kind": "latents"}))
    with pytest.raises(DataError, match="needs latent_shape and text_shape"):
        load_manifest(tmp_path)
    save_manifest(tmp_path, Manifest(kind="images", samples=3, image_size=[8, 8]))
    with pytest.raises(DataError, match="a complete dataset must list its shards"):
        load_manifest(tmp_path)
    shard = ShardInfo("images-00000.tar", 3, 100, "0" * 64)
    save_manifest(tmp_path, Manifest(kind="images", samples=4, image_size=[8, 8], shards=[shard]))
    with pytest.raises(DataError, match=r"samples is 4 but shards\[\]\.samples add up to 3 \(shards\[0\]"):
        load_manifest(tmp_path)
    save_manifest(tmp_path, Manifest(kind="images", samples=3, image_size=[8, 8], shards=[shard]))
    assert load_manifest(tmp_path).image_size == [8, 8]
    save_manifest(tmp_path, Manifest(kind="images", samples=0, image_size=[8, 8], complete=False))
    assert not load_manifest(tmp_path).complete  # a dataset being written may list nothing yet

