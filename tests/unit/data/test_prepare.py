"""microdit-data prepare: each source's fixture (in its real layout) through the paper's rules."""

import dataclasses
import io
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from microdit.cli.data import main as data_main
from microdit.data import DataError, load_manifest, verify_dataset
from microdit.data import prepare as prep
from microdit.data.shards import iter_shard
from microdit.data.sources import SOURCES

from conftest import fixture_script

fixtures = fixture_script("make_source_fixtures")

# What each fixture holds (make_source_fixtures.py): per archive two images the rules keep, one too
# small and one unreadable; sa1b lacks one caption, jdb one prompt line, diffdb has one
# image over the NSFW threshold; coco2014 keeps every size (its rules do not filter).
EXPECTED = {
    "cc12m": {"seen": 8, "kept": 4, "too small": 2, "unreadable": 2},
    "sa1b": {"seen": 8, "kept": 3, "no caption": 1, "too small": 2, "unreadable": 2},
    "jdb": {"seen": 8, "kept": 3, "no caption": 1, "too small": 2, "unreadable": 2},
    "diffdb": {"seen": 8, "kept": 3, "nsfw": 1, "too small": 2, "unreadable": 2},
    "textcaps": {"seen": 8, "kept": 4, "too small": 2, "unreadable": 2},
    "coco2014": {"seen": 8, "kept": 6, "unreadable": 2},
}


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raw")
    fixtures.main(root, [])
    return root


def _images(folder: Path) -> list[tuple[str, Image.Image, str, dict]]:
    out = []
    for info in load_manifest(folder).shards:
        for key, members in iter_shard(folder / info.name):
            out.append((key, Image.open(io.BytesIO(members["jpg"])), members["txt"].decode(),
                        json.loads(members["json"])))
    return out


@pytest.mark.parametrize("source", sorted(EXPECTED))
def test_each_source_builds_from_its_fixture_by_the_papers_rules(source, raw, tmp_path, capsys):
    out = tmp_path / source
    data_main(["prepare", source, str(out), "--from", str(raw / source)])
    manifest = verify_dataset(out)
    assert manifest.counts == dict(sorted(EXPECTED[source].items()))
    assert manifest.samples == EXPECTED[source]["kept"] and manifest.licence == SOURCES[source].licence
    assert manifest.source.startswith(f"{source}: ") and manifest.image_size is None
    log = (out / "prepare.log").read_text().splitlines()
    assert len(log) == EXPECTED[source]["seen"] - EXPECTED[source]["kept"]  # every dropped file named
    assert all(line.count("\t") == 2 for line in log)
    assert "each is named in" in capsys.readouterr().err
    sizes = sorted(min(im.size) for _, im, _, _ in _images(out))
    if source == "coco2014":
        assert sizes == [200, 200, 272, 272, 600, 600]  # evaluation images keep their sizes
    else:  # 320 x 272 kept as it is, 700 x 600 resized to a 512 short side, aspect kept
        assert set(sizes) <= {272, 512} and 512 in sizes
        resized = [im for _, im, _, _ in _images(out) if min(im.size) == 512]
        assert all(abs(im.size[0] / im.size[1] - 700 / 600) < 0.01 for im in resized)
    assert all(caption.strip() for _, _, caption, _ in _images(out))


def test_kept_jpegs_are_the_sources_bytes_and_coco_keeps_its_five_captions(raw, tmp_path):
    data_main(["prepare", "coco2014", str(tmp_path / "coco"), "--from", str(raw / "coco2014")])
    samples = _images(tmp_path / "coco")
    assert all(len(meta["captions"]) == 5 and caption == meta["captions"][0] for _, _, caption, meta in samples)
    data_main(["prepare", "cc12m", str(tmp_path / "cc"), "--from", str(raw / "cc12m")])
    shard = load_manifest(tmp_path / "cc").shards[0]
    members = dict(iter_shard(tmp_path / "cc" / shard.name))
    source = dict(iter_shard(raw / "cc12m" / "cc12m-train-0000.tar"))
    assert members["00"]["jpg"] == source["00"]["jpg"]  # not re-encoded when no resize was needed


def test_a_fraction_a_rerun_and_changed_rules(raw, tmp_path):
    out = tmp_path / "half"
    data_main(["prepare", "diffdb", str(out), "--from", str(raw / "diffdb"), "--fraction", "0.5"])
    assert [s.name for s in load_manifest(out).shards] == ["images-part-000001.tar"]
    with pytest.raises(SystemExit):  # another rule set into the same folder: refused, nothing changed
        data_main(["prepare", "diffdb", str(out), "--from", str(raw / "diffdb"), "--nsfw-threshold", "1"])
    lenient = tmp_path / "lenient"
    data_main(["prepare", "diffdb", str(lenient), "--from", str(raw / "diffdb"), "--nsfw-threshold", "1",
               "--min-side", "100", "--max-side", "0"])
    assert load_manifest(lenient).counts == {"kept": 6, "seen": 8, "unreadable": 2}


def test_a_killed_prepare_resumes_without_redoing_finished_units(raw, tmp_path, monkeypatch):
    out = tmp_path / "cc"
    read = SOURCES["cc12m"].read

    def dies_on_second(raw_dir, unit):
        if unit.endswith("0001"):
            raise KeyboardInterrupt  # killed while reading the second archive
        return read(raw_dir, unit)

    monkeypatch.setitem(SOURCES, "cc12m", dataclasses.replace(SOURCES["cc12m"], read=dies_on_second))
    with pytest.raises(KeyboardInterrupt):
        prep.prepare_dataset(SOURCES["cc12m"], raw / "cc12m", out, prep.Rules(), progress=False)
    first = out / "images-cc12m-train-0000.tar"
    partial = load_manifest(out, check_total=False)
    assert not partial.complete and [s.name for s in partial.shards] == [first.name]
    assert not list(out.glob(".*.tmp"))  # no half-written shard left
    mtime = first.stat().st_mtime_ns
    monkeypatch.undo()
    done = prep.prepare_dataset(SOURCES["cc12m"], raw / "cc12m", out, prep.Rules(), progress=False)
    assert done.complete and first.stat().st_mtime_ns == mtime
    assert done.counts == dict(sorted(EXPECTED["cc12m"].items()))
    fresh = prep.prepare_dataset(SOURCES["cc12m"], raw / "cc12m", tmp_path / "fresh", prep.Rules(), progress=False)
    assert [s.sha256 for s in fresh.shards] == [s.sha256 for s in done.shards]


def test_bad_inputs_end_in_one_line(raw, tmp_path, capsys):
    for argv, expected in [
        (["prepare", "cc12m", str(tmp_path / "a"), "--from", str(tmp_path / "nowhere")], "does not exist"),
        (["prepare", "jdb", str(tmp_path / "b"), "--from", str(raw / "cc12m")], "no jdb files found"),
        (["prepare", "sa1b", str(tmp_path / "c")], "--links"),
        (["prepare", "cc12m", str(raw / "cc12m" / "cc12m-train-0000.tar"), "--from", str(raw / "cc12m")],
         "is a file, not a folder"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            data_main(argv)
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and expected in err, err
    with pytest.raises(SystemExit) as exit_info:  # argparse's own error: usage, then the one line
        data_main(["prepare", "cc12m", str(tmp_path / "d"), "--fraction", "1.5"])
    assert exit_info.value.code == 2 and "expected a fraction in (0, 1]" in capsys.readouterr().err.splitlines()[-1]
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit):
        data_main(["prepare", "cc12m", str(tmp_path / "full"), "--from", str(raw / "cc12m")])
    assert (tmp_path / "full" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_each_sources_layout_names_its_files_and_is_shown(source, raw, tmp_path, capsys):
    """Each source's ``layout`` (what ``prepare --help`` lists and a ``--from`` folder holding none of
    the source's files is told) names every top-level file and folder of its fixture, which is built
    in the host's real layout (its last number as N: ``cc12m-train-0000.tar`` is ``cc12m-train-NNNN.tar``)."""
    layout = SOURCES[source].layout
    for entry in (raw / source).iterdir():
        numbered = re.sub(r"\d+(?=\D*$)", lambda m: "N" * len(m.group()), entry.name)  # its last number
        assert entry.name in layout or numbered in layout, (entry.name, layout)
    with pytest.raises(SystemExit):
        data_main(["prepare", "--help"])
    assert f"{source}: {layout[:40]}" in " ".join(capsys.readouterr().out.split())
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit):
        data_main(["prepare", source, str(tmp_path / "out"), "--from", str(tmp_path / "empty")])
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and (f"expected its layout: {layout}" in err or " is missing: " in err), err


def test_downloads_skip_what_is_there_and_explain_gated_sets(tmp_path, monkeypatch):
    from huggingface_hub import errors

    fetched = []

    def fake_hub(repo_id, filename, repo_type, local_dir):
        assert repo_type == "dataset"
        fetched.append(filename)
        (Path(local_dir) / filename).write_bytes(b"x")

    monkeypatch.setattr("huggingface_hub.hf_hub_download", fake_hub)
    raw = tmp_path / "raw"
    prep.download(SOURCES["cc12m"], raw, fraction=0.002)  # 0.2% of 2,176 tars: the first 4
    assert fetched == [f"cc12m-train-{i:04d}.tar" for i in range(4)]
    prep.download(SOURCES["cc12m"], raw, fraction=0.002)
    assert len(fetched) == 4  # a rerun fetches only what is missing

    from unittest.mock import MagicMock

    def gated(*args, **kwargs):
        raise errors.GatedRepoError("401 gated", response=MagicMock(status_code=401, headers={}))

    monkeypatch.setattr("huggingface_hub.hf_hub_download", gated)
    with pytest.raises(DataError, match="accept its terms.*HF_TOKEN"):
        prep.download(SOURCES["jdb"], tmp_path / "jdb", fraction=0.005)


def test_an_unreachable_hub_says_how_to_prepare_offline(tmp_path, monkeypatch):
    """Offline, huggingface_hub raises its own 'check your connection' error; the line names the file,
    the folder to fetch it into and --from."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the real library's own offline path, no network touched
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    raw = tmp_path / "jdb-raw"
    with pytest.raises(DataError) as err:
        prep.download(SOURCES["jdb"], raw, fraction=0.005)
    message = str(err.value)
    assert re.match(r"JourneyDB/JourneyDB/data/train/\S+: the Hugging Face Hub cannot be reached", message), message
    assert f"into {raw} and use --from" in message and "\n" not in message


def test_http_downloads_retry_then_name_the_url(tmp_path, monkeypatch):
    import requests

    calls = []

    def refused(url, **kwargs):
        calls.append(url)
        raise requests.ConnectionError("refused")

    monkeypatch.setattr(requests, "get", refused)
    monkeypatch.setattr(prep.time, "sleep", lambda s: None)
    with pytest.raises(DataError, match=r"captions_val2014|annotations_trainval2014.zip: download failed after 5"):
        prep.download(SOURCES["coco2014"], tmp_path / "coco")
    assert calls.count(calls[0]) == prep.RETRIES


def test_sa1b_downloads_its_links_and_captions_then_prepares(raw, tmp_path, monkeypatch):
    """The whole download path with the network replaced: Meta's link list over HTTP (requests), the
    LLaVA captions from the Hub (a tar.gz, extracted safely), then the build from what arrived."""
    import tarfile

    import requests

    source = raw / "sa1b"
    packed = tmp_path / "SA1B_caption.tar.gz"
    with tarfile.open(packed, "w:gz") as tar:
        tar.add(source / "captions", arcname="captions-release")

    def fake_hub(repo_id, filename, repo_type, local_dir):
        assert (repo_id, filename) == ("PixArt-alpha/SAM-LLaVA-Captions10M", "SA1B_caption.tar.gz")
        (Path(local_dir) / filename).write_bytes(packed.read_bytes())

    class Response:
        def __init__(self, url):
            self.data, self.status_code = (source / url.rsplit("/", 1)[-1]).read_bytes(), 200

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def raise_for_status(self):
            pass

        def iter_content(self, size):
            yield self.data

    monkeypatch.setattr("huggingface_hub.hf_hub_download", fake_hub)
    monkeypatch.setattr(requests, "get", lambda url, **kw: Response(url))
    links = tmp_path / "links.txt"
    links.write_text("file_name\tcdn_link\n" + "".join(f"sa_{i:06d}.tar\thttps://cdn.example/sa_{i:06d}.tar\n"
                                                       for i in range(2)))
    data_main(["prepare", "sa1b", str(tmp_path / "sa1b"), "--links", str(links)])
    assert load_manifest(tmp_path / "sa1b").counts == dict(sorted(EXPECTED["sa1b"].items()))
    assert (tmp_path / "sa1b-raw" / "captions" / "captions-release").is_dir()
