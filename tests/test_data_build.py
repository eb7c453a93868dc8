"""Building datasets: synthetic -> encode (resumable, bad input), cifar-captions from a photo
folder, webdataset and parquet dumps, and the microdit-data command line."""

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from microdit.cli.data import main as data_main
from microdit.data import DataError, LatentBatches, encode_dataset, load_manifest, verify_dataset
from microdit.data import cifar_captions as cc
from microdit.data.shards import ShardWriter, iter_shard
from microdit.encoders import load_autoencoder, load_text_encoder

PHOTOS = Path(__file__).resolve().parent / "fixtures" / "photos"


@pytest.fixture(scope="module")
def encoders():
    return load_autoencoder("pixel:2"), load_text_encoder("offline:32:16")


@pytest.fixture()
def images(tmp_path):
    data_main(["synthetic", str(tmp_path / "img"), "--num", "30", "--shard-size", "10", "--size", "16"])
    return tmp_path / "img"


def test_encode_round_trip(images, tmp_path, encoders):
    m = encode_dataset(images, tmp_path / "lat", *encoders, batch_size=7, progress=False)
    assert (m.kind, m.samples, len(m.shards), m.latent_shape, m.text_shape) == ("latents", 30, 3, [12, 8, 8], [16, 32])
    assert m.autoencoder == "pixel:2" and m.text_encoder == "offline:32:16" and m.complete
    verify_dataset(tmp_path / "lat")
    batch = LatentBatches(tmp_path / "lat", 30).batch(0)
    src = {k: (m["png"], m["txt"].decode()) for s in sorted(images.glob("*.tar")) for k, m in iter_shard(s)}
    for key, latent, caption in zip(batch["key"], batch["latent"], batch["caption"], strict=True):
        pixels = np.asarray(Image.open(io.BytesIO(src[key][0])), dtype=np.float32) / 127.5 - 1
        expected = encoders[0].encode(__import__("torch").from_numpy(pixels).permute(2, 0, 1)[None])[0]
        assert np.allclose(latent.numpy(), expected.numpy(), atol=2e-3)  # fp16 storage
        assert caption == src[key][1]


def test_interrupted_encode_resumes_without_redoing(images, tmp_path, encoders, monkeypatch):
    reference = encode_dataset(images, tmp_path / "ref", *encoders, progress=False)
    import microdit.data.encode as enc

    calls = {"n": 0}
    original = enc._read_image_shard

    def crash_on_second(*args):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        return original(*args)

    monkeypatch.setattr(enc, "_read_image_shard", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        encode_dataset(images, tmp_path / "lat", *encoders, progress=False)
    partial = load_manifest(tmp_path / "lat")
    assert not partial.complete and [s.name for s in partial.shards] == ["latents-00000.tar"]
    assert not list((tmp_path / "lat").glob("*.tmp"))
    first_mtime = (tmp_path / "lat" / "latents-00000.tar").stat().st_mtime_ns
    monkeypatch.setattr(enc, "_read_image_shard", original)
    resumed = encode_dataset(images, tmp_path / "lat", *encoders, progress=False)
    assert (tmp_path / "lat" / "latents-00000.tar").stat().st_mtime_ns == first_mtime
    assert [(s.name, s.sha256) for s in resumed.shards] == [(s.name, s.sha256) for s in reference.shards]
    with pytest.raises(DataError, match="already holds a different encoding"):
        encode_dataset(images, tmp_path / "lat", load_autoencoder("pixel"), encoders[1], progress=False)


def test_encode_bad_samples(images, tmp_path, encoders):
    shard = images / "images-00001.tar"
    samples = list(iter_shard(shard))
    shard.unlink()
    with ShardWriter(shard) as w:
        for i, (key, members) in enumerate(samples):
            w.write(key, {k: v for k, v in members.items() if not (i == 3 and k == "txt")})
        info = w.close()
    manifest = json.loads((images / "manifest.json").read_text())
    manifest["shards"][1] = info.__dict__
    (images / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=re.escape(f"shard {shard}: sample '00000013' lacks an image")):
        encode_dataset(images, tmp_path / "lat", *encoders, progress=False)
    m = encode_dataset(images, tmp_path / "lat2", *encoders, skip_bad_samples=True, progress=False)
    assert m.samples == 29
    with pytest.raises(DataError, match="expected an image dataset"):
        encode_dataset(tmp_path / "lat2", tmp_path / "x", *encoders, progress=False)


def test_class_matching_rules():
    assert cc.matched_classes("A Cat sleeping on a sofa") == [3]
    assert cc.matched_classes("two puppies playing") == [5]
    assert cc.matched_classes("an aeroplane at dusk") == [0]
    assert cc.matched_classes("cartoon catalog of scattered carts") == []  # whole words only
    assert cc.matched_classes("a dog chasing a cat") == [3, 5]
    keep = cc.Filter(size=32, min_side=10)
    img = Image.new("RGB", (40, 20))
    assert keep("a", img, "a dog chasing a cat") is None and keep("b", img, "sunset") is None
    key, out, caption, labels = keep("c", img, "my truck")
    assert out.size == (32, 32) and labels == {"class": 9, "class_name": "truck"}
    assert keep("d", Image.new("RGB", (8, 30)), "a frog") is None
    assert dict(keep.counts) == {"seen": 4, "several_classes": 1, "no_class": 1, "kept": 1, "too_small": 1}


def test_folder_of_real_photographs(tmp_path):
    data_main(["cifar-captions", str(tmp_path / "cc"), "--from-folder", str(PHOTOS), "--size", "64",
               "--min-side", "64"])
    manifest = load_manifest(tmp_path / "cc")
    assert manifest.samples == 4 and manifest.label_names[3] == "cat"
    samples = {k: m for k, m in iter_shard(tmp_path / "cc" / manifest.shards[0].name)}
    assert set(samples) == {"airplane_0", "automobile_0", "cat_0", "cat_1"}
    cat = samples["cat_0"]
    assert json.loads(cat["json"]) == {"class": 3, "class_name": "cat"} and "cat" in cat["txt"].decode()
    assert Image.open(io.BytesIO(cat["png"])).size == (64, 64)


def test_folder_errors(tmp_path):
    (tmp_path / "root" / "kangaroo").mkdir(parents=True)
    (tmp_path / "root" / "kangaroo" / "0.jpg").write_bytes((PHOTOS / "cat" / "0.jpg").read_bytes())
    with pytest.raises(DataError, match="unknown class name 'kangaroo'; CIFAR-10 classes are airplane"):
        list(cc.from_image_folder(tmp_path / "root", cc.Filter(32, 32)))
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        list(cc.from_image_folder(tmp_path / "empty", cc.Filter(32, 32)))
    with pytest.raises(DataError, match="no class sub-folders"):
        list(cc.from_image_folder(tmp_path / "empty" / "cat", cc.Filter(32, 32)))
    (tmp_path / "empty" / "cat" / "0.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"0.jpg: not a readable image"):
        list(cc.from_image_folder(tmp_path / "empty", cc.Filter(32, 32)))


def _photo_bytes():
    return [(PHOTOS / "cat" / "0.jpg").read_bytes(), (PHOTOS / "airplane" / "0.jpg").read_bytes()]


def test_webdataset_dump(tmp_path):
    (tmp_path / "dump").mkdir()
    captions = ["my cat at home", "jet over the sea", "a cat and a dog"]
    with ShardWriter(tmp_path / "dump" / "00000.tar") as w:
        for i, caption in enumerate(captions):
            w.write(f"{i:05d}", {"jpg": _photo_bytes()[i % 2], "txt": caption.encode(), "json": b"{}"})
        w.close()
    keep = cc.Filter(32, 32)
    out = list(cc.from_webdataset_dump(tmp_path / "dump", keep))
    assert [s[3]["class"] for s in out] == [3, 0] and keep.counts["several_classes"] == 1


def test_parquet_dump(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "dump").mkdir()
    table = pa.table({"jpg": _photo_bytes() + [None], "caption": ["a kitten", "sunset sky", "a horse"]})
    pq.write_table(table, tmp_path / "dump" / "part0.parquet")
    keep = cc.Filter(32, 32)
    out = list(cc.from_parquet_dump(tmp_path / "dump", keep))
    assert [s[3]["class"] for s in out] == [3] and keep.counts["missing_field"] == 1
    pq.write_table(pa.table({"image_bytes": [b""], "caption": ["x"]}), tmp_path / "dump" / "part1.parquet")
    with pytest.raises(DataError, match="needs an image-bytes column"):
        list(cc.from_parquet_dump(tmp_path / "dump", keep))


def test_torchvision_offline_is_a_clear_error(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(DataError, match="could not load CIFAR-10 .* offline"):
        list(cc.from_torchvision_cifar10(tmp_path, cc.Filter(32, 32)))


def test_command_line(tmp_path, capsys, images):
    data_main(["encode", str(images), str(tmp_path / "lat"), "--text-encoder", "offline:32:16", "--device", "cpu"])
    data_main(["inspect", str(tmp_path / "lat"), "--grid", str(tmp_path / "grid.png"), "--num", "6"])
    data_main(["verify", str(tmp_path / "lat")])
    out = capsys.readouterr().out
    assert "30 samples" in out and "all match the manifest" in out
    assert Image.open(tmp_path / "grid.png").size == (8 * 16, 16)
    (tmp_path / "lat" / "latents-00002.tar").write_bytes(b"garbage")
    with pytest.raises(SystemExit) as exit_info:
        data_main(["verify", str(tmp_path / "lat")])
    assert exit_info.value.code == 2
    assert "latents-00002.tar does not match its manifest entry" in capsys.readouterr().err
