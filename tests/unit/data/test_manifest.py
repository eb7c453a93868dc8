"""Manifests: clear errors for missing, malformed or inconsistent manifest files."""

import json

import pytest

from microdit.data import DataError, load_manifest
from microdit.data.manifest import Manifest, save_manifest


def test_manifest_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_manifest(tmp_path / "nope")
    with pytest.raises(DataError, match="manifest.json is missing"):
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
    assert load_manifest(tmp_path).image_size == [8, 8]

