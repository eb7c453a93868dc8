"""Encoding image shards into latent shards: round trip, resumable after an interruption, bad samples."""

import dataclasses
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from microdit.cli.data import main as data_main
from microdit.data import DataError, LatentBatches, encode_dataset, load_manifest, verify_dataset
from microdit.data.shards import ShardWriter, iter_shard
from microdit.encoders import load_autoencoder, load_text_encoder

from conftest import run_together


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


def test_each_distinct_caption_is_encoded_once_with_the_bytes_its_batch_gives():
    """A dataset's repeated captions (the synthetic scenes repeat theirs) go through the text encoder
    once; every row is byte for byte what encoding the captions' whole batch writes, for the
    pretrained MiniLM too (a caption padded to the encoder's length does not depend on its batch);
    past the byte limit nothing more is kept and the rows stay the same."""
    from microdit.data.encode import CaptionCache

    text = load_text_encoder("minilm:16")
    seen = []

    class Counting:
        def encode(self, captions):
            seen.extend(captions)
            return text.encode(captions)

    caps = ["a red circle", "a blue square", "a red circle", "a green star on the left", "a blue square", "a cat"]
    emb, mask = text.encode(caps)
    whole = emb.numpy().astype(np.float16), mask.numpy()
    for limit, encoded in ((2**20, ["a red circle", "a blue square", "a green star on the left", "a cat"]),
                           (whole[0][0].nbytes + 16, ["a red circle", "a blue square", "a green star on the left",
                                                      "a blue square", "a cat"])):
        seen.clear()
        cache = CaptionCache(Counting(), limit=limit)
        first, second = cache.encode(caps[:3]), cache.encode(caps[3:])
        assert seen == encoded  # each distinct caption once (with room for one row: the first only)
        for got, want in zip((np.concatenate([first[0], second[0]]), np.concatenate([first[1], second[1]])), whole,
                             strict=True):
            assert got.dtype == want.dtype and np.array_equal(got, want)


@pytest.mark.parametrize("crash_at", [1, 2])  # in the first shard (nothing encoded yet) or in the second
def test_interrupted_encode_resumes_without_redoing(images, tmp_path, encoders, monkeypatch, crash_at):
    reference = encode_dataset(images, tmp_path / "ref", *encoders, progress=False)
    import microdit.data.encode as enc

    calls = {"n": 0}
    original = enc._read_image_shard

    def crash_on_second(*args):
        calls["n"] += 1
        if calls["n"] == crash_at:
            raise KeyboardInterrupt("killed")
        return original(*args)

    monkeypatch.setattr(enc, "_read_image_shard", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        encode_dataset(images, tmp_path / "lat", *encoders, progress=False)
    partial = load_manifest(tmp_path / "lat")
    assert not partial.complete and [s.name for s in partial.shards] == ["latents-00000.tar"][:crash_at - 1]
    assert not list((tmp_path / "lat").glob("*.tmp"))
    first = tmp_path / "lat" / "latents-00000.tar"
    first_mtime = first.stat().st_mtime_ns if crash_at == 2 else None
    monkeypatch.setattr(enc, "_read_image_shard", original)
    resumed = encode_dataset(images, tmp_path / "lat", *encoders, progress=False)
    assert crash_at == 1 or first.stat().st_mtime_ns == first_mtime
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


BUILD = """
import sys
from microdit.data.encode import build_synthetic_dataset
from microdit.data.synthetic import SyntheticRecipe
build_synthetic_dataset(SyntheticRecipe(sys.argv[1], 120, 16, 3, "pixel:2", "offline:32:16"), progress=False)
"""


def test_synthetic_dataset_built_by_three_processes_at_once(tmp_path):
    """As when a sweep starts its points together with data.prepare=synthetic: all three get the
    dataset a lone build writes (byte for byte), none fails, nothing is left behind."""
    run_together(BUILD, [[str(tmp_path / "shared" / "synth")]] * 3)  # one shared shard tmp name: 2 of 3 crashed
    run_together(BUILD, [[str(tmp_path / "alone" / "synth")]])
    for kind in ("synth", "synth-images"):
        shared, alone = load_manifest(tmp_path / "shared" / kind), load_manifest(tmp_path / "alone" / kind)
        assert shared.complete
        assert [(s.name, s.sha256) for s in shared.shards] == [(s.name, s.sha256) for s in alone.shards]
    verify_dataset(tmp_path / "shared" / "synth")
    assert sorted(p.name for p in (tmp_path / "shared").iterdir()) == ["synth", "synth-images"]  # no lock, no partial
    assert not [p for p in (tmp_path / "shared").rglob(".*") if p.name != ".verified.json"]


def test_encoding_a_complete_dataset_again_leaves_it_untouched(images, tmp_path, encoders):
    encode_dataset(images, tmp_path / "lat", *encoders, progress=False)
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (tmp_path / "lat").iterdir()}
    again = encode_dataset(images, tmp_path / "lat", *encoders, progress=False)
    assert again.complete and again.samples == 30
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (tmp_path / "lat").iterdir()} == before


def _shard_hashes(folder):
    return {s.name: s.sha256 for s in load_manifest(folder).shards}


def test_ranks_encode_exactly_what_one_process_encodes(images, tmp_path, encoders):
    from microdit.data.encode import Share

    one = encode_dataset(images, tmp_path / "one", *encoders, progress=False, resolutions=[16, 8])
    first = encode_dataset(images, tmp_path / "two", *encoders, progress=False, resolutions=[16, 8], share=Share(1, 2))
    assert not first.complete and not (tmp_path / "two" / "manifest.json").exists()  # rank 0 still to come
    assert sorted(p.name for p in (tmp_path / "two").glob("latents-*")) == ["latents-00001.tar"]
    merged = encode_dataset(images, tmp_path / "two", *encoders, progress=False, resolutions=[16, 8], share=Share(0, 2))
    assert merged.complete and merged.samples == one.samples == 30
    assert _shard_hashes(tmp_path / "two") == _shard_hashes(tmp_path / "one")  # byte for byte
    verify_dataset(tmp_path / "two")
    assert one.resolutions == {"16": [12, 8, 8], "8": [12, 4, 4]} and one.latent_shape == [12, 8, 8]
    key, members = next(iter_shard(tmp_path / "one" / "latents-00000.tar"))
    assert {"latent_16.npy", "latent_8.npy", "text.npy"} <= set(members) and "latent.npy" not in members
    low = LatentBatches(tmp_path / "one", 30, resolution=8).batch(0)
    high = LatentBatches(tmp_path / "one", 30, resolution=16).batch(0)
    assert low["key"] == high["key"] and low["latent"].shape == (30, 12, 4, 4) and high["latent"].shape[-1] == 8
    assert torch.equal(low["text"], high["text"])  # one caption embedding for both resolutions
    with pytest.raises(DataError, match=r"holds resolutions \['8', '16'\] px, not 32"):
        LatentBatches(tmp_path / "one", 4, resolution=32)


def test_a_killed_rank_resumes_its_own_shards_only(images, tmp_path, encoders, monkeypatch):
    import microdit.data.encode as enc
    from microdit.data.encode import Share

    reference = encode_dataset(images, tmp_path / "ref", *encoders, progress=False)
    original, reads = enc._read_image_shard, []

    def dies_on_its_second_shard(path, *args):
        reads.append(path.name)
        if len(reads) == 2:
            raise KeyboardInterrupt
        return original(path, *args)

    monkeypatch.setattr(enc, "_read_image_shard", dies_on_its_second_shard)
    with pytest.raises(KeyboardInterrupt):  # rank 0 of 2 owns shards 0 and 2
        encode_dataset(images, tmp_path / "lat", *encoders, progress=False, share=Share(0, 2))
    assert reads == ["images-00000.tar", "images-00002.tar"]
    done = tmp_path / "lat" / "latents-00000.tar"
    mtime = done.stat().st_mtime_ns
    monkeypatch.setattr(enc, "_read_image_shard", original)
    encode_dataset(images, tmp_path / "lat", *encoders, progress=False, share=Share(1, 2))
    resumed = encode_dataset(images, tmp_path / "lat", *encoders, progress=False, share=Share(0, 2))
    assert done.stat().st_mtime_ns == mtime and resumed.complete
    assert _shard_hashes(tmp_path / "lat") == _shard_hashes(tmp_path / "ref") and reference.samples == 30


def test_a_rank_starting_while_another_writes_its_first_files_encodes(images, tmp_path, encoders):
    """Ranks start at different times: one that finds the folder holding only another rank's hidden
    work in progress (its part manifest being written: write_atomic's temporary) encodes its share;
    it was refused as "holds files but no manifest.json" (seen in CI under load)."""
    from microdit.data.encode import Share
    from microdit.files import private_tmp

    dst = tmp_path / "lat"
    dst.mkdir()
    private_tmp(dst / Share(0, 2).part).write_text("{")  # rank 0, between creating and renaming its part
    part = encode_dataset(images, dst, *encoders, progress=False, share=Share(1, 2))
    assert not part.complete and [s.name for s in part.shards] == ["latents-00001.tar"]


def test_torchrun_ranks_count_their_own_share(images, tmp_path):
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "microdit.cli.data", "encode", str(images), str(tmp_path / "lat"), "--autoencoder", "pixel:2",
           "--text-encoder", "offline:32:16", "--device", "cpu"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-2000:]
    finals = re.findall(r"encode lat rank (\d)/2: 100%.*?\| ?([\d.]+)/([\d.]+)", result.stderr)
    assert sorted((r, float(total)) for r, _, total in finals) == [("0", 20.0), ("1", 10.0)]  # shards 0, 2 | 1
    data_main(["encode", str(images), str(tmp_path / "solo"), "--autoencoder", "pixel:2", "--text-encoder",
               "offline:32:16", "--device", "cpu"])
    assert _shard_hashes(tmp_path / "lat") == _shard_hashes(tmp_path / "solo")


def test_images_of_their_own_sizes_need_resolutions(tmp_path, encoders):
    from microdit.data.manifest import save_manifest

    data_main(["synthetic", str(tmp_path / "img"), "--num", "4", "--size", "16"])
    manifest = load_manifest(tmp_path / "img")
    manifest.image_size = None  # as microdit-data prepare writes it
    save_manifest(tmp_path / "img", manifest)
    with pytest.raises(DataError, match="--resolutions"):
        encode_dataset(tmp_path / "img", tmp_path / "lat", *encoders, progress=False)
    assert encode_dataset(tmp_path / "img", tmp_path / "lat", *encoders, progress=False, resolutions=[8]).complete


def test_each_launcher_gives_its_share():
    from microdit.data.encode import Share

    assert Share.from_env({}) == Share(0, 1)
    assert Share.from_env({"RANK": "1", "WORLD_SIZE": "2", "SLURM_NTASKS": "4", "SLURM_PROCID": "3"}) == Share(1, 2)
    array = {"SLURM_ARRAY_TASK_ID": "12", "SLURM_ARRAY_TASK_MIN": "10", "SLURM_ARRAY_TASK_COUNT": "4"}
    assert Share.from_env(array) == Share(2, 4)
    assert Share.from_env({"SLURM_NTASKS": "8", "SLURM_PROCID": "5"}) == Share(5, 8)
    assert Share.from_env({"SLURM_NTASKS": "1", "SLURM_PROCID": "0"}) == Share(0, 1)
    assert Share(0, 1).part == "manifest.json" and Share(1, 3).part == ".part-1-of-3.json"
    for bad in ({"RANK": "x", "WORLD_SIZE": "2"}, {"RANK": "2", "WORLD_SIZE": "2"}):
        with pytest.raises(DataError, match="rank"):
            Share.from_env(bad)


def test_a_synthetic_dataset_of_another_count_or_size_is_refused(tmp_path):
    """A built synthetic dataset (latents, or its images where the latents are gone) is kept only
    at the sample count and size asked for; otherwise refused, nothing changed. A stage at its own
    resolution compares latent sides."""
    from microdit.data.encode import build_synthetic_dataset
    from microdit.data.synthetic import SyntheticRecipe

    recipe = SyntheticRecipe(str(tmp_path / "lat"), 12, 16, 0, "pixel:2", "offline:32:16")
    build_synthetic_dataset(recipe, progress=False)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and ".cache" not in p.parts}
    for other, found in ((dataclasses.replace(recipe, samples=20), "images of 16x16 px, not the 20 of 16x16 px"),
                         (dataclasses.replace(recipe, size=32), "images of 16x16 px, not the 12 of 32x32 px"),
                         (dataclasses.replace(recipe, latent_size=16), "latents of 8x8, not the 12 of 16x16")):
        with pytest.raises(DataError, match=re.escape(f"lat holds 12 synthetic {found} asked for (data.")):
            build_synthetic_dataset(other, progress=False)
    assert build_synthetic_dataset(dataclasses.replace(recipe, latent_size=8), progress=False).samples == 12
    shutil.rmtree(tmp_path / "lat")  # the images are left: they are checked before being encoded
    with pytest.raises(DataError, match=r"lat-images holds 12 synthetic images of 16x16 px, not the 20 of 16x16 px "
                                        r"asked for .* or delete .*lat-images and .*lat to build them again"):
        build_synthetic_dataset(dataclasses.replace(recipe, samples=20), progress=False)
    assert not (tmp_path / "lat").exists()
    assert all(p.read_bytes() == b for p, b in before.items() if p.exists())
    assert build_synthetic_dataset(recipe, progress=False).samples == 12


def test_the_synthetic_dataset_is_not_built_into_a_folder_of_other_files(tmp_path, capsys):
    """data.prepare=synthetic on a folder holding a download (files, no manifest), or on a file:
    refused before anything is built or said to be (it once built the 20,000 images beside it before
    refusing), naming how a download becomes a dataset; nothing written."""
    from microdit.data.encode import build_synthetic_dataset
    from microdit.data.synthetic import SyntheticRecipe

    download = tmp_path / "coco"
    (download / "val2014").mkdir(parents=True)
    (download / "val2014" / "COCO_val2014_000000000042.jpg").write_bytes(b"jpeg")
    with pytest.raises(DataError, match=re.escape(f"{download} holds files but no manifest.json: data.prepare=")
                       + r"synthetic .*nothing was changed\. .* microdit-data prepare SOURCE OUT --from .*coco, "
                         r"microdit-data encode OUT LATENTS, then data.folders=\[LATENTS\] data.prepare=none$"):
        build_synthetic_dataset(SyntheticRecipe(str(download), 12, 16, 0, "pixel:2", "offline:32:16"), progress=False)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "coco", "coco/val2014", "coco/val2014/COCO_val2014_000000000042.jpg"]
    (tmp_path / "train.log").write_text("a log")  # a file given as the folder: nothing built beside it either
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'train.log'} is a file, not a folder: data.prepare=")
                       + r"synthetic .*nothing was changed$"):
        build_synthetic_dataset(SyntheticRecipe(str(tmp_path / "train.log"), 12, 16, 0, "pixel:2", "offline:32:16"),
                                progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coco", "train.log"]
    assert "building" not in capsys.readouterr().err


def test_what_a_latent_dataset_was_encoded_from(images, tmp_path, encoders, monkeypatch, capsys):
    """Synthetic images (a built dataset, `microdit-data synthetic` + encode, a copy whose images are
    gone): None; images of another source: named. A synthetic build says it is building, once."""
    from microdit.data.encode import build_synthetic_dataset, encoded_from
    from microdit.data.images import write_image_dataset
    from microdit.data.synthetic import SyntheticRecipe, synthetic_samples

    built = tmp_path / "built"
    build_synthetic_dataset(SyntheticRecipe(str(built), 12, 16, 0, "pixel:2", "offline:32:16"), progress=False)
    assert f"[data] {built} holds no dataset: building the synthetic one there (12 images" in capsys.readouterr().err
    build_synthetic_dataset(SyntheticRecipe(str(built), 12, 16, 0, "pixel:2", "offline:32:16"), progress=False)
    assert capsys.readouterr().err == ""  # kept as it is, silently
    with pytest.raises(DataError, match=r"built holds pixel:2 latents with offline:32:16 captions, not the run's "
                                        r"pixel:2 and minilm \(encoder\.autoencoder, encoder\.text_encoder\)"):
        build_synthetic_dataset(SyntheticRecipe(str(built), 12, 16, 0, "pixel:2", "minilm"), progress=False)
    encode_dataset(images, tmp_path / "lat", *encoders, progress=False)
    assert encoded_from(built) is None and encoded_from(tmp_path / "lat") is None
    own = tmp_path / "mine-img"  # the same pictures under another source, as a prepared set records it
    write_image_dataset(own, ((k, im, c, {}) for k, im, c, _ in synthetic_samples(0, 12, 16)), 16, [], "mine")
    encode_dataset(own, tmp_path / "own", *encoders, progress=False)
    assert encoded_from(tmp_path / "own") == f"{own} (mine)"
    with pytest.raises(DataError, match=r"own holds the latents of .*mine-img \(mine\), not a synthetic dataset: "
                                        r".*set data\.prepare=none"):
        build_synthetic_dataset(SyntheticRecipe(str(tmp_path / "own"), 12, 16, 0, "pixel:2", "offline:32:16"))
    monkeypatch.chdir(tmp_path)
    encode_dataset(Path("mine-img"), tmp_path / "rel", *encoders, progress=False)  # records the relative path
    assert encoded_from(tmp_path / "rel") == "mine-img (mine)"
    monkeypatch.chdir(tmp_path / "lat")  # from here that path leads nowhere: the origin cannot be told
    assert encoded_from(tmp_path / "rel") is None
