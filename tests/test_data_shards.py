"""Shard writing/reading, manifests, and the synthetic captioned dataset."""

import json
import re
import tarfile

import numpy as np
import pytest

from microdit.data import DataError, load_manifest, synthetic_sample
from microdit.data.manifest import Manifest, save_manifest
from microdit.data.shards import ShardWriter, iter_shard, load_npy, npy_bytes
from microdit.data.synthetic import BACKGROUNDS, COLOURS, SHAPES


def test_shard_round_trip_and_atomic_write(tmp_path):
    path = tmp_path / "a.tar"
    with ShardWriter(path) as w:
        for i in range(3):
            w.write(f"k{i}", {"latent.npy": npy_bytes(np.full((2, 2), i, np.float16)), "txt": f"cap {i}".encode()})
        assert not path.exists()  # only the temporary file exists before close
        info = w.close()
    assert info.samples == 3 and info.bytes == path.stat().st_size and len(info.sha256) == 64
    got = list(iter_shard(path))
    assert [k for k, _ in got] == ["k0", "k1", "k2"]
    assert load_npy(got[2][1]["latent.npy"], "x").tolist() == [[2, 2], [2, 2]]
    assert got[1][1]["txt"] == b"cap 1"


def test_failed_write_leaves_nothing(tmp_path):
    path = tmp_path / "b.tar"
    with pytest.raises(RuntimeError), ShardWriter(path) as w:
        w.write("k0", {"txt": b"x"})
        raise RuntimeError("crash while writing")
    assert not path.exists() and not (tmp_path / "b.tar.tmp").exists()
    with pytest.raises(ValueError, match="without '.'"), ShardWriter(tmp_path / "c.tar") as w:
        w.write("a.b", {"txt": b"x"})


def test_truncated_shard_is_named(tmp_path):
    path = tmp_path / "t.tar"
    with ShardWriter(path) as w:
        for i in range(4):
            w.write(f"k{i}", {"bin": bytes(3000)})
        w.close()
    data = path.read_bytes()
    with tarfile.open(path) as tar:
        second = tar.getmembers()[1]
    path.write_bytes(data[:second.offset_data + 100])  # inside the second sample's data
    with pytest.raises(DataError, match=re.escape(f"shard {path}: corrupt or truncated tar at sample 'k1'")):
        list(iter_shard(path))
    path.write_bytes(data[:second.offset])  # on a header boundary: only the missing end marker tells
    with pytest.raises(DataError, match=re.escape(f"shard {path}: truncated tar (no end-of-archive marker")):
        list(iter_shard(path))
    with pytest.raises(DataError, match="missing"):
        list(iter_shard(tmp_path / "none.tar"))


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


def test_synthetic_is_deterministic_and_varied():
    a, b = synthetic_sample(5, 17), synthetic_sample(5, 17)
    assert np.array_equal(a.image, b.image) and a.caption == b.caption and a.labels == b.labels
    assert not np.array_equal(synthetic_sample(5, 18).image, a.image)
    assert not np.array_equal(synthetic_sample(6, 17).image, a.image)
    samples = [synthetic_sample(0, i) for i in range(600)]
    classes = np.bincount([s.labels["class"] for s in samples], minlength=10)
    assert classes.min() > 30  # all ten shape classes appear, roughly uniformly
    assert len({s.caption for s in samples}) > 400
    assert 0.25 < np.mean([s.labels["count"] == 2 for s in samples]) < 0.45


@pytest.mark.parametrize("index", range(40))
def test_synthetic_caption_and_labels_describe_the_image(index):
    s = synthetic_sample(1, index, size=32)
    assert s.image.shape == (32, 32, 3) and s.image.dtype == np.uint8
    for obj in s.labels["objects"]:
        assert obj["colour"] in s.caption and obj["shape"] in s.caption
    assert SHAPES[s.labels["class"]] == s.labels["shape"]
    background = np.array(BACKGROUNDS[s.labels["background"]])
    foreground = np.abs(s.image.astype(int) - background).sum(-1) > 60  # (32, 32) object pixels
    rows, cols = np.nonzero(foreground)
    assert len(rows) > 5
    first = s.labels["objects"][0]
    colour = np.array(COLOURS[first["colour"]])
    assert (np.abs(s.image.astype(int) - colour).sum(-1) < 60).any()  # the named colour is drawn
    if s.labels["count"] == 1:  # the object sits where the caption says
        centre_r, centre_c = rows.mean() / 32, cols.mean() / 32
        expected = {"left": centre_c < 0.4, "right": centre_c > 0.6, "top": centre_r < 0.4,
                    "bottom": centre_r > 0.6, "center": abs(centre_r - 0.5) < 0.12 and abs(centre_c - 0.5) < 0.12}
        assert expected[first["position"]]
    else:
        assert "left of" in s.caption or "right of" in s.caption or "above" in s.caption or "below" in s.caption


def test_synthetic_rejects_tiny_images():
    with pytest.raises(ValueError, match="size must be >= 8"):
        synthetic_sample(0, 0, size=4)
