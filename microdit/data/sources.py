"""The paper's five training sets and its evaluation set, each read from its own download layout.

MicroDiT trains on 37M real and synthetic images from five public datasets and evaluates on MS-COCO
2014 (paper Sec. 3.4 and Table 3). Each :class:`Source` knows three things about one of them:
- what to download, and from where (the Hugging Face Hub, or plain HTTP), a fraction of its
  archives at a time (:func:`microdit.data.prepare.download`);
- how its files lie on disk after that download (the source's own layout, which is also what a
  user on an air-gapped cluster copies in and passes as ``--from``): its *units* (one archive, or
  a chunk of a list of images) and the (key, image bytes, caption) samples of each unit;
- its licence terms, written into the prepared dataset's manifest.

Layouts: each source's ``layout`` below, as the hosts publish them (also what ``microdit-data
prepare --help`` lists, and what a ``--from`` folder holding none of the source's files is told).
"""

from __future__ import annotations

import json
import re
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from microdit.data.manifest import DataError

CHUNK = 1000  # images per unit for sources that come as one list of images (textcaps, coco2014)


@dataclass(frozen=True)
class RawSample:
    """One image of a source: its key (unique in the unit), encoded bytes, caption and metadata
    (kept in the prepared sample's ``json``; ``nsfw`` scores are filtered on)."""

    key: str
    data: bytes
    caption: str
    meta: dict


@dataclass(frozen=True)
class Download:
    """One file to fetch into the raw folder: from the Hub (``repo`` + ``path``) or over HTTP (``url``)."""

    path: str
    repo: str | None = None
    url: str | None = None


@dataclass(frozen=True)
class Source:
    """A dataset the paper trains or evaluates on (see the module docstring for each layout)."""

    name: str
    title: str
    licence: str
    archives: int  # how many archives the full download has (a fraction takes the first ones)
    units: Callable[[Path], list[str]]
    read: Callable[[Path, str], Iterator[RawSample]]
    files: Callable[[float, dict], list[Download]]
    layout: str  # the files, as the host publishes them: what --from must hold
    min_side: int = 256  # the paper's filter: drop images whose short side is below this
    max_side: int = 512  # ... and resize the short side to this when larger (0: keep the size)


def _key(text: str) -> str:
    """A shard-safe sample key (no '.' or '/')."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


def _members(archive: Path, suffixes: tuple[str, ...]) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of the members of a tar / tgz / zip whose name ends with one of ``suffixes``,
    in archive order. A damaged archive raises DataError naming it after the members read so far."""
    try:
        if archive.suffix == ".zip":
            with zipfile.ZipFile(archive) as z:
                for name in z.namelist():
                    if name.lower().endswith(suffixes):
                        yield name, z.read(name)
            return
        with tarfile.open(archive, "r|*") as tar:
            for info in tar:
                if info.isfile() and info.name.lower().endswith(suffixes):
                    yield info.name, tar.extractfile(info).read()
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as err:
        raise DataError(f"{archive}: damaged archive ({err})") from None


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise DataError(f"{path} is missing: the {what} (download it, or copy the source's files there)")
    return path


def _chunks(ids: list, size: int = CHUNK) -> list[str]:
    return [f"{i // size:05d}" for i in range(0, len(ids), size)]


# cc12m ------------------------------------------------------------------------------------------

def _cc12m_units(raw: Path) -> list[str]:
    return sorted(p.stem for p in raw.glob("*.tar"))


def _cc12m_read(raw: Path, unit: str) -> Iterator[RawSample]:
    from microdit.data.shards import iter_shard

    for key, members in iter_shard(raw / f"{unit}.tar"):
        data = next((members[e] for e in ("jpg", "jpeg", "png", "webp") if e in members), None)
        meta = json.loads(members["json"]) if "json" in members else {}
        yield RawSample(_key(key), data or b"", members.get("txt", b"").decode("utf-8", "replace"),
                        {k: meta[k] for k in ("url", "key") if k in meta})


def _cc12m_files(fraction: float, _: dict) -> list[Download]:
    n = max(1, round(2176 * fraction))
    return [Download(f"cc12m-train-{i:04d}.tar", repo="pixparse/cc12m-wds") for i in range(n)]


# sa1b -------------------------------------------------------------------------------------------

def _sa1b_units(raw: Path) -> list[str]:
    return sorted(p.stem for p in raw.glob("sa_*.tar"))


@cache
def _sa1b_captions(raw: Path) -> dict[str, Path]:
    folder = _need(raw / "captions", "SA-1B caption folder (SA1B_caption.tar.gz extracted)")
    return {p.stem: p for p in folder.rglob("*.txt")}


def _sa1b_read(raw: Path, unit: str) -> Iterator[RawSample]:
    captions = _sa1b_captions(raw)
    for name, data in _members(raw / f"{unit}.tar", (".jpg",)):
        stem = Path(name).stem
        caption = captions[stem].read_text().strip() if stem in captions else ""
        yield RawSample(_key(stem), data, caption, {"image": stem})


def _sa1b_files(fraction: float, options: dict) -> list[Download]:
    links = options.get("links")
    if not links:
        raise DataError("sa1b: pass --links FILE, the tab-separated 'file_name<TAB>cdn_link' list from "
                        "https://ai.meta.com/datasets/segment-anything-downloads/ (its links expire, so no fixed "
                        "list can ship), or build from files already downloaded with --from RAW_DIR")
    try:
        rows = [line.split("\t") for line in Path(links).read_text().splitlines()[1:] if line.strip()]
    except OSError as err:
        raise DataError(f"--links {links}: {err.strerror}") from None
    if not rows or any(len(r) != 2 for r in rows):
        raise DataError(f"--links {links}: expected a header line, then 'file_name<TAB>cdn_link' per line")
    n = max(1, round(len(rows) * fraction))
    return [Download("SA1B_caption.tar.gz", repo="PixArt-alpha/SAM-LLaVA-Captions10M")] + [
        Download(name, url=url) for name, url in rows[:n]]


# jdb --------------------------------------------------------------------------------------------

JDB_ANNOTATIONS = "data/train/train_anno_realease_repath.jsonl"


def _jdb_units(raw: Path) -> list[str]:
    return sorted(p.name.removesuffix(".tgz") for p in (raw / "data/train/imgs").glob("*.tgz"))


@cache
def _jdb_prompts(raw: Path) -> dict[str, str]:
    path = raw / JDB_ANNOTATIONS
    if path.is_file():
        lines = path.read_text().splitlines()
    else:
        packed = _need(raw / f"{JDB_ANNOTATIONS}.tgz", "JourneyDB annotations")
        lines = [line for _, data in _members(packed, (".jsonl",)) for line in data.decode().splitlines()]
    prompts = {}
    for line in lines:
        if line.strip():
            entry = json.loads(line)
            prompts[entry["img_path"].removeprefix("./")] = entry.get("prompt") or ""
    return prompts


def _jdb_read(raw: Path, unit: str) -> Iterator[RawSample]:
    prompts = _jdb_prompts(raw)
    for name, data in _members(raw / f"data/train/imgs/{unit}.tgz", (".jpg", ".jpeg", ".png")):
        relative = name.removeprefix("./")
        yield RawSample(_key(relative.rsplit(".", 1)[0]), data, prompts.get(relative, ""), {"image": relative})


def _jdb_files(fraction: float, _: dict) -> list[Download]:
    n = max(1, round(200 * fraction))
    return [Download(f"{JDB_ANNOTATIONS}.tgz", repo="JourneyDB/JourneyDB")] + [
        Download(f"data/train/imgs/{i:03d}.tgz", repo="JourneyDB/JourneyDB") for i in range(n)]


# diffdb -----------------------------------------------------------------------------------------

def _diffdb_units(raw: Path) -> list[str]:
    return sorted(p.stem for p in raw.glob("diffusiondb-large-part-*/part-*.zip"))


@cache
def _diffdb_metadata(raw: Path) -> dict[int, dict[str, dict]]:
    import pyarrow.parquet as pq

    table = pq.read_table(_need(raw / "metadata-large.parquet", "DiffusionDB metadata"),
                          columns=["image_name", "prompt", "part_id", "image_nsfw", "prompt_nsfw"]).to_pylist()
    parts: dict[int, dict[str, dict]] = {}
    for row in table:
        parts.setdefault(int(row["part_id"]), {})[row["image_name"]] = row
    return parts


def _diffdb_read(raw: Path, unit: str) -> Iterator[RawSample]:
    rows = _diffdb_metadata(raw).get(int(unit.removeprefix("part-")), {})
    archive = next(raw.glob(f"diffusiondb-large-part-*/{unit}.zip"))
    for name, data in _members(archive, (".webp", ".png", ".jpg")):
        row = rows.get(Path(name).name, {})
        meta = {"image": Path(name).name, "nsfw": max(row.get("image_nsfw") or 0.0, row.get("prompt_nsfw") or 0.0)}
        yield RawSample(_key(Path(name).stem), data, row.get("prompt") or "", meta)


def _diffdb_files(fraction: float, _: dict) -> list[Download]:
    n = max(1, round(14000 * fraction))
    part = lambda i: "diffusiondb-large-part-1" if i < 10001 else "diffusiondb-large-part-2"  # noqa: E731
    return [Download("metadata-large.parquet", repo="poloclub/diffusiondb")] + [
        Download(f"{part(i)}/part-{i:06d}.zip", repo="poloclub/diffusiondb") for i in range(1, n + 1)]


# textcaps and coco2014: one list of images, read in chunks ------------------------------------

def _image_reader(raw: Path, folder: str, archive: str) -> Callable[[str], bytes | None]:
    """Bytes of ``folder/NAME`` from the extracted folder or else from ``archive`` (a zip)."""
    if (raw / folder).is_dir():
        return lambda name: (raw / folder / name).read_bytes() if (raw / folder / name).is_file() else None
    z = zipfile.ZipFile(_need(raw / archive, f"image archive {archive} (or its extracted {folder}/)"))
    names = set(z.namelist())
    return lambda name: z.read(f"{folder}/{name}") if f"{folder}/{name}" in names else None


@cache
def _textcaps_images(raw: Path) -> list[tuple[str, str, list[str]]]:
    """(image id, file name, captions) for every image of the train and val annotations."""
    images: dict[str, tuple[str, list[str]]] = {}
    for split in ("train", "val"):
        path = _need(raw / f"TextCaps_0.1_{split}.json", f"TextCaps {split} annotations")
        for entry in json.loads(path.read_text())["data"]:
            name = Path(entry["image_path"]).name
            images.setdefault(entry["image_id"], (name, []))[1].append(entry.get("caption_str") or "")
    return [(i, name, caps) for i, (name, caps) in sorted(images.items())]


def _listed(images: Callable[[Path], list[tuple]], folder: str, archive: str, key: Callable[[object], str]):
    """(units, read) of a source that is one list of (image id, file name, captions), read in chunks
    of ``CHUNK`` images from ``folder/`` or else the zip ``archive``; the first caption is the
    sample's, all of them go into its metadata."""
    def units(raw: Path) -> list[str]:
        return _chunks(images(raw))

    def read(raw: Path, unit: str) -> Iterator[RawSample]:
        fetch = _image_reader(raw, folder, archive)
        start = int(unit) * CHUNK
        for image_id, name, captions in images(raw)[start:start + CHUNK]:
            yield RawSample(key(image_id), fetch(name) or b"", captions[0] if captions else "",
                            {"image_id": image_id, "captions": captions})

    return units, read


def _textcaps_files(fraction: float, _: dict) -> list[Download]:
    base = "https://dl.fbaipublicfiles.com/textvqa"
    return [Download("TextCaps_0.1_train.json", url=f"{base}/data/textcaps/TextCaps_0.1_train.json"),
            Download("TextCaps_0.1_val.json", url=f"{base}/data/textcaps/TextCaps_0.1_val.json"),
            Download("train_val_images.zip", url=f"{base}/images/train_val_images.zip")]


COCO_CAPTIONS = "annotations/captions_val2014.json"


@cache
def _coco_images(raw: Path) -> list[tuple[int, str, list[str]]]:
    """(image id, file name, its captions in annotation order) for every val2014 image."""
    path = raw / COCO_CAPTIONS
    if path.is_file():
        data = json.loads(path.read_text())
    else:
        archive = _need(raw / "annotations_trainval2014.zip", f"COCO captions ({COCO_CAPTIONS})")
        data = json.loads(dict(_members(archive, ("captions_val2014.json",)))[COCO_CAPTIONS])
    captions: dict[int, list[str]] = {}
    for a in data["annotations"]:
        captions.setdefault(a["image_id"], []).append(a["caption"].strip().replace("\n", " "))
    images = sorted(data["images"], key=lambda i: i["id"])
    return [(im["id"], im["file_name"], captions.get(im["id"], [])) for im in images]


def _coco_files(fraction: float, _: dict) -> list[Download]:
    base = "http://images.cocodataset.org"
    return [Download("annotations_trainval2014.zip", url=f"{base}/annotations/annotations_trainval2014.zip"),
            Download("val2014.zip", url=f"{base}/zips/val2014.zip")]


SOURCES: dict[str, Source] = {s.name: s for s in (
    Source("cc12m", "Conceptual 12M (pixparse/cc12m-wds)",
           "CC12M terms: free to use for any purpose, Google LLC acknowledged as the data source; each image "
           "belongs to its owner", 2176, _cc12m_units, _cc12m_read, _cc12m_files,
           "pixparse/cc12m-wds on the Hub: webdataset tars cc12m-train-NNNN.tar of KEY.jpg + KEY.txt (+ KEY.json); "
           "2,176 tars"),
    Source("sa1b", "Segment Anything 1B with PixArt's LLaVA captions",
           "SA-1B Dataset Research License (Meta): research use only, no redistribution; captions from "
           "PixArt-alpha/SAM-LLaVA-Captions10M", 1000, _sa1b_units, _sa1b_read, _sa1b_files,
           "Segment-Anything-1B tars sa_NNNNNN.tar of sa_ID.jpg + sa_ID.json (masks, unused) from Meta's expiring "
           "links (--links: the tab-separated file_name, cdn_link list of the SA-1B download page), with the "
           "released LLaVA long captions (PixArt-alpha/SAM-LLaVA-Captions10M: SA1B_caption.tar.gz of sa_ID.txt, "
           "extracted to captions/)"),
    Source("jdb", "JourneyDB (JourneyDB/JourneyDB, gated)",
           "JourneyDB terms of use: non-commercial research only, accepted on the Hub before download",
           200, _jdb_units, _jdb_read, _jdb_files,
           "JourneyDB/JourneyDB on the Hub (gated: accept its terms): data/train/imgs/NNN.tgz of NNN/NAME.jpg and "
           "the prompts in data/train/train_anno_realease_repath.jsonl.tgz (one JSON line per image: img_path "
           "./NNN/NAME.jpg, prompt); 200 archives"),
    Source("diffdb", "DiffusionDB large (poloclub/diffusiondb)", "CC0 1.0 (images and prompts)", 14000,
           _diffdb_units, _diffdb_read, _diffdb_files,
           "poloclub/diffusiondb on the Hub: diffusiondb-large-part-N/part-NNNNNN.zip (N = 1, 2) of .webp images and "
           "metadata-large.parquet (image_name, prompt, part_id, image_nsfw, prompt_nsfw); 14,000 zips"),
    Source("textcaps", "TextCaps 0.1 (train + val)",
           "annotations CC BY 4.0; images from Open Images, CC BY 2.0 per image", 1,
           *_listed(_textcaps_images, "train_images", "train_val_images.zip", _key), _textcaps_files,
           "TextCaps_0.1_train.json / TextCaps_0.1_val.json (data: entries with image_id, image_path train/ID.jpg, "
           "caption_str) and train_val_images.zip of train_images/ID.jpg (or extracted)"),
    Source("coco2014", "MS-COCO 2014 validation (the paper's evaluation set)",
           "annotations CC BY 4.0 (COCO Consortium); images under the Flickr terms of use of each image", 1,
           *_listed(_coco_images, "val2014", "val2014.zip", lambda i: f"coco_{i:012d}"), _coco_files,
           "annotations_trainval2014.zip (annotations/captions_val2014.json: images with id and file_name, "
           "annotations with image_id and caption) and val2014.zip (val2014/COCO_val2014_000000ID.jpg); either may "
           "also lie extracted", min_side=0, max_side=0),
)}
