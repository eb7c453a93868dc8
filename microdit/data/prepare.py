"""``prepare``: a source's raw download into image shards with captions, by the paper's rules.

The three steps of the paper's data pipeline (Sec. 3.4 and its App. on datasets), the first two here:
1. **download** (:func:`download`) a fraction of the source's archives into ``RAW`` in the
   source's own layout (``microdit.data.sources``), through ``huggingface_hub`` for Hub-hosted sets
   and plain HTTP with retries elsewhere. A rerun fetches only what is missing (the Hub client
   resumes and skips complete files; HTTP resumes a ``.part`` file by byte range).
2. **filter and resize** (:func:`prepare_dataset`, :class:`Rules`): keep images whose short side is at
   least 256 px and resize the short side to 512 px (bicubic, antialiased) when it is larger, as
   the reference's download scripts do; aspect ratios are kept (encoding crops per resolution).
3. encode at 256 and 512 px: ``microdit-data encode --resolutions 256 512``.

Output: ``images-UNIT.tar`` shards, one per source unit (an archive, or a chunk of 1,000 images),
each sample ``KEY.jpg`` (the source's own bytes when no resize was needed, else JPEG quality 95),
``KEY.txt`` and ``KEY.json`` (source metadata, e.g. COCO's five captions). The manifest records the
source, its licence terms and the counts kept and dropped by reason; every dropped file is named
in ``DIR/prepare.log`` (never fatal: unreadable, too small, without caption, over the NSFW
threshold, or in a damaged archive). Units are written atomically and the manifest after each, so
a killed prepare resumes without redoing finished units.
"""

from __future__ import annotations

import io
import math
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

from PIL import Image

from microdit.data.manifest import DataError, Manifest, load_manifest, save_manifest
from microdit.data.shards import ShardWriter
from microdit.data.sources import SOURCES, Download, Source
from microdit.files import not_a_folder
from microdit.progress import progress as progress_bar

SMALL = 0.01  # --small: the ~1% partition for debugging, as the reference's
RETRIES = 5


@dataclass(frozen=True)
class Rules:
    """The filter and resize rules: drop an image whose short side is below ``min_side``; resize the
    short side to ``max_side`` when larger (0: never); drop a sample with an empty caption, and one
    whose NSFW score (DiffusionDB's image or prompt score) is above ``nsfw`` (the reference's 0.2)."""

    min_side: int = 256
    max_side: int = 512
    nsfw: float = 0.2

    @classmethod
    def of(cls, source: Source, min_side: int | None = None, max_side: int | None = None,
           nsfw: float | None = None) -> Rules:
        """The source's defaults, each overridden where given."""
        return cls(source.min_side if min_side is None else min_side,
                   source.max_side if max_side is None else max_side, 0.2 if nsfw is None else nsfw)


def _hub_download(item: Download, raw: Path) -> None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        hf_hub_download(item.repo, item.path, repo_type="dataset", local_dir=raw)
    except LocalEntryNotFoundError:  # the Hub cannot be reached (no network, or HF_HUB_OFFLINE=1)
        raise DataError(f"{item.repo}/{item.path}: the Hugging Face Hub cannot be reached (no network, or "
                        f"HF_HUB_OFFLINE set); rerun when it can, or fetch it by hand into {raw} and use "
                        "--from") from None
    except GatedRepoError:
        raise DataError(f"{item.repo} is gated: accept its terms at https://huggingface.co/datasets/{item.repo} "
                        "and log in (huggingface-cli login, or HF_TOKEN)") from None
    except RepositoryNotFoundError:
        raise DataError(f"{item.repo}: not found or not visible without a token (huggingface-cli login, or "
                        "HF_TOKEN)") from None
    except HfHubHTTPError as err:
        code = getattr(err.response, "status_code", None)
        hint = " (a token is needed: huggingface-cli login, or HF_TOKEN)" if code in (401, 403) else ""
        raise DataError(f"{item.repo}/{item.path}: download failed{hint}: {err}") from None


def _http_download(item: Download, raw: Path) -> None:
    import requests

    target = raw / item.path
    part = target.with_name(target.name + ".part")
    for attempt in range(RETRIES):
        have = part.stat().st_size if part.exists() else 0
        try:
            with requests.get(item.url, stream=True, timeout=60,
                              headers={"Range": f"bytes={have}-"} if have else {}) as response:
                if response.status_code == 416:  # the .part is already whole
                    break
                response.raise_for_status()
                mode = "ab" if have and response.status_code == 206 else "wb"
                with open(part, mode) as f:
                    for block in response.iter_content(1 << 20):
                        f.write(block)
            break
        except requests.RequestException as err:
            if attempt == RETRIES - 1:
                raise DataError(f"{item.url}: download failed after {RETRIES} tries ({err}); rerun to resume "
                                f"{part.name}, or fetch it by hand into {raw} and use --from") from None
            time.sleep(2 ** attempt)
    part.replace(target)


def download(source: Source, raw: str | Path, fraction: float = 1.0, num_proc: int = 1,
             options: dict | None = None) -> None:
    """Fetch the first ``fraction`` of ``source``'s archives into ``raw`` in its own layout, ``num_proc``
    at a time; files already there are skipped, partial ones resumed."""
    raw = Path(raw)
    items = source.files(fraction, options or {})
    for item in items:
        (raw / item.path).parent.mkdir(parents=True, exist_ok=True)
    todo = [i for i in items if not (raw / i.path).is_file()]
    fetch = lambda i: _hub_download(i, raw) if i.repo else _http_download(i, raw)  # noqa: E731
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max(1, num_proc)) as pool:
        for _ in progress_bar(pool.map(fetch, todo), total=len(todo), desc=f"download {source.name}", unit="file"):
            pass
    if source.name == "sa1b" and not (raw / "captions").is_dir():
        import tarfile

        with tarfile.open(raw / "SA1B_caption.tar.gz") as tar:
            if hasattr(tarfile, "data_filter"):  # Python >= 3.12, and 3.10.12 / 3.11.4 on
                tar.extractall(raw / "captions", filter="data")
            else:  # older patch releases: refuse members that would land outside the folder
                root = (raw / "captions").resolve()
                if any(not (root / m.name).resolve().is_relative_to(root) or m.issym() or m.islnk() for m in tar):
                    raise DataError(f"{raw / 'SA1B_caption.tar.gz'}: a member points outside its folder; refused")
                tar.extractall(root)


def _fit(data: bytes, rules: Rules) -> tuple[bytes | None, str]:
    """(the bytes to store, "") for a kept image, or (None, reason) for a dropped one."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as err:  # PIL raises many types for bad files
        return None, f"unreadable ({type(err).__name__})"
    w, h = image.size
    if min(w, h) < rules.min_side:
        return None, f"too small ({w}x{h} < {rules.min_side})"
    if image.format == "JPEG" and image.mode == "RGB" and not (rules.max_side and min(w, h) > rules.max_side):
        return data, ""
    image = image.convert("RGB")
    if rules.max_side and min(w, h) > rules.max_side:
        scale = rules.max_side / min(w, h)
        image = image.resize((max(rules.max_side, round(w * scale)), max(rules.max_side, round(h * scale))),
                             Image.Resampling.BICUBIC, reducing_gap=None)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=95)
    return out.getvalue(), ""


def _prepare_unit(job: tuple) -> tuple[str, object, Counter, list[str]]:
    """Write one unit's shard (in a worker process): (unit, its ShardInfo or None, counts, log lines)."""
    import json

    source_name, raw, unit, out, rules = job
    source = SOURCES[source_name]
    counts: Counter = Counter()
    log: list[str] = []
    with ShardWriter(Path(out) / f"images-{unit}.tar") as writer:
        try:
            for sample in source.read(Path(raw), unit):
                counts["seen"] += 1
                if not sample.caption.strip():
                    reason = "no caption"
                elif sample.meta.get("nsfw", 0.0) > rules.nsfw:
                    reason = f"nsfw score {sample.meta['nsfw']:.2f} > {rules.nsfw}"
                else:
                    data, reason = _fit(sample.data, rules)
                if reason:
                    counts[reason.split(" (")[0].split(" score")[0]] += 1
                    log.append(f"{unit}\t{sample.key}\t{reason}")
                    continue
                counts["kept"] += 1
                meta = {k: v for k, v in sample.meta.items() if k != "nsfw"}
                writer.write(sample.key, {"jpg": data, "txt": sample.caption.encode(),
                                          "json": json.dumps(meta).encode()})
        except DataError as err:  # a damaged archive: what was read is kept, the rest counted
            counts["damaged archive"] += 1
            log.append(f"{unit}\t-\t{err}")
        if writer.samples:
            info = writer.close()
        else:
            writer.abort()
            info = None
    return unit, info, counts, log


def _describe(source: Source, raw: Path, rules: Rules) -> str:
    return (f"{source.name}: {source.title}, from {raw} (min side {rules.min_side}, short side resized to "
            f"{rules.max_side or 'as is'}, nsfw <= {rules.nsfw})")


def prepare_dataset(source: Source, raw: str | Path, out: str | Path, rules: Rules, fraction: float = 1.0,
                    num_proc: int = 1, progress: bool = True) -> Manifest:
    """Build image shards in ``out`` from the first ``fraction`` of the units in ``raw`` (``source``'s
    layout), ``num_proc`` units at a time; a rerun resumes, and refuses an ``out`` built from
    another source, raw folder or rules."""
    raw, out = Path(raw), Path(out)
    if not raw.is_dir():
        raise DataError(f"raw folder {raw} {not_a_folder(raw)} (download first, or give --from the folder holding "
                        f"the {source.name} files)")
    units = source.units(raw)
    if not units:
        raise DataError(f"{raw}: no {source.name} files found; expected its layout: {source.layout}")
    units = units[:max(1, math.ceil(len(units) * fraction))]
    described = _describe(source, raw.resolve(), rules)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} is a file, not a folder: prepare into a new or empty folder; nothing was changed")
    out.mkdir(parents=True, exist_ok=True)
    if (out / "manifest.json").is_file():
        manifest = load_manifest(out)
        if manifest.source != described:
            raise DataError(f"{out} holds another dataset ({manifest.source}); expected {described}: prepare into a "
                            "new folder; nothing was changed")
    elif any(out.iterdir()):
        raise DataError(f"{out} holds files but no manifest.json: prepare into a new or empty folder; nothing was "
                        "changed")
    else:
        manifest = Manifest(kind="images", source=described, licence=source.licence, complete=False)
    done = {s.name for s in manifest.shards} | {f"images-{u}.tar" for u in manifest.empty_units}
    todo = [u for u in units if f"images-{u}.tar" not in done]
    counts = Counter(manifest.counts)
    jobs = [(source.name, str(raw), u, str(out), rules) for u in todo]
    bar = progress_bar(total=len(todo), desc=f"prepare {source.name}", unit="unit", enabled=progress)
    with open(out / "prepare.log", "a") as log, _pool(num_proc) as pool:
        for unit, info, unit_counts, lines in pool.imap(_prepare_unit, jobs):
            log.writelines(line + "\n" for line in lines)
            log.flush()
            counts.update(unit_counts)
            if info is None:
                manifest.empty_units.append(unit)
            else:
                manifest.shards.append(info)
            manifest.samples = sum(s.samples for s in manifest.shards)
            manifest.counts = dict(sorted(counts.items()))
            save_manifest(out, manifest)
            bar.update(1)
    bar.close()
    if not manifest.shards:
        raise DataError(f"{out}: no image of {raw} passed the rules ({dict(counts)}); the reasons are in "
                        f"{out / 'prepare.log'}")
    manifest.shards.sort(key=lambda s: s.name)
    manifest.complete = True
    save_manifest(out, manifest)
    dropped = counts["seen"] - counts["kept"]
    if dropped:
        reasons = ", ".join(f"{k}: {v}" for k, v in counts.items() if k not in ("seen", "kept"))
        print(f"[prepare] dropped {dropped} of {counts['seen']} images ({reasons}); each is named in "
              f"{out / 'prepare.log'}", file=sys.stderr)
    return manifest


class _Inline:
    """A pool of one: the units run in this process (no fork, readable tracebacks)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    @staticmethod
    def imap(fn, jobs):
        return map(fn, jobs)


def _pool(num_proc: int):
    if num_proc <= 1:
        return _Inline()
    return get_context("spawn" if sys.platform == "darwin" else "fork").Pool(min(num_proc, os.cpu_count() or 1))
