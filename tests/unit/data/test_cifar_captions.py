"""cifar-captions builders: class matching rules, a folder of real photographs, img2dataset dumps,
clear errors."""

import io
import json

import pytest
from PIL import Image

from microdit.cli.data import main as data_main
from microdit.data import DataError, load_manifest
from microdit.data import cifar_captions as cc
from microdit.data.shards import ShardWriter, iter_shard

from conftest import FIXTURE_DIR

PHOTOS = FIXTURE_DIR / "photos"


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

