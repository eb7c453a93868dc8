"""Encoding an image dataset into a latent dataset with frozen encoders: batched, resumable.

Input shard ``images-NNNNN.tar`` becomes output shard ``latents-NNNNN.tar``. A shard is written
under a temporary name and renamed when complete, and the manifest is rewritten (atomically)
after every shard, so an interrupted run resumes where it stopped without redoing finished
shards and never leaves a half-written shard under its final name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from microdit.data.cache import dataset_cache
from microdit.data.images import IMAGE_EXTS, decode_image, from_uint8, resize_center_crop
from microdit.data.manifest import DataError, Manifest, from_download, load_manifest, save_manifest, sha256_of
from microdit.data.shards import ShardWriter, iter_shard, npy_bytes
from microdit.data.synthetic import SHAPES, SyntheticRecipe, synthetic_samples, synthetic_source
from microdit.encoders import Autoencoder, TextEncoder
from microdit.files import DISK_ERRNOS, not_a_folder, remove_stale_tmps, write_atomic
from microdit.locks import acquire
from microdit.progress import progress as progress_bar


@dataclass(frozen=True)
class Share:
    """Which share of a dataset's shards this process encodes: shard i belongs to rank i % world.
    Each rank writes and resumes its shards alone (its own part manifest and lock); the last rank to
    finish merges the parts into ``manifest.json``."""

    rank: int = 0
    world: int = 1

    @classmethod
    def from_env(cls, env: dict | None = None) -> Share:
        """The share a launcher gives this process: ``RANK``/``WORLD_SIZE`` (torchrun, accelerate
        launch), else a SLURM array task (``SLURM_ARRAY_TASK_ID`` - ``SLURM_ARRAY_TASK_MIN`` of
        ``SLURM_ARRAY_TASK_COUNT``), else a task of ``srun -n N`` (``SLURM_PROCID`` of
        ``SLURM_NTASKS``), else the whole dataset."""
        env = os.environ if env is None else env
        try:
            if "RANK" in env and "WORLD_SIZE" in env:
                share = cls(int(env["RANK"]), int(env["WORLD_SIZE"]))
            elif "SLURM_ARRAY_TASK_COUNT" in env:
                share = cls(int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", 0)),
                            int(env["SLURM_ARRAY_TASK_COUNT"]))
            elif int(env.get("SLURM_NTASKS", 1)) > 1:
                share = cls(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]))
            else:
                share = cls()
        except (KeyError, ValueError) as err:
            raise DataError(f"the launcher's rank variables are not integers ({err})") from None
        if not 0 <= share.rank < share.world:
            raise DataError(f"rank {share.rank} is not in 0..{share.world - 1}")
        return share

    @property
    def part(self) -> str:
        """The file name of this rank's part manifest (``manifest.json`` itself for one process)."""
        return "manifest.json" if self.world == 1 else f".part-{self.rank}-of-{self.world}.json"


class CaptionCache:
    """A text encoder's output (float16, as the shards store it) per distinct caption, kept up to
    ``limit`` bytes: a dataset whose captions repeat (the one-object scene: 480 distinct in 5,000)
    encodes each once. A caption's encoding does not depend on the captions batched with it (each is
    padded to the encoder's length), so the shards are those of encoding every batch whole: byte for
    byte on the CPU (the tests compare them), up to float rounding where a GPU picks other kernels."""

    def __init__(self, text: TextEncoder, limit: int = 256 * 2**20) -> None:
        self.text, self.limit, self.kept, self.bytes = text, limit, {}, 0

    def encode(self, captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings (N, L, D) float16, mask (N, L) bool) of ``captions``."""
        fresh = {}
        if new := [c for c in dict.fromkeys(captions) if c not in self.kept]:
            emb, mask = self.text.encode(new)
            fresh = {c: (e, m) for c, e, m in zip(new, emb.cpu().numpy().astype(np.float16), mask.cpu().numpy(),
                                                    strict=True)}
        rows = [self.kept[c] if c in self.kept else fresh[c] for c in captions]
        for caption, (emb, mask) in fresh.items():
            if self.bytes + emb.nbytes + mask.nbytes > self.limit:
                break
            self.kept[caption] = (emb, mask)
            self.bytes += emb.nbytes + mask.nbytes
        return np.stack([e for e, _ in rows]), np.stack([m for _, m in rows])


def _read_image_shard(path: Path, skip_bad: bool, counts: dict) -> list[tuple[str, Image.Image, str, bytes]]:
    samples = []
    for key, members in iter_shard(path):
        where = f"shard {path}: sample {key!r}"
        try:
            ext = next((e for e in IMAGE_EXTS if e in members), None)
            if ext is None or "txt" not in members:
                raise DataError(f"{where} lacks an image ({'/'.join(IMAGE_EXTS)}) or a .txt caption")
            image = decode_image(members[ext], where)
            samples.append((key, image, members["txt"].decode("utf-8"), members.get("json", b"{}")))
        except (DataError, UnicodeDecodeError) as err:
            if not skip_bad:
                raise DataError(str(err)) from None
            counts["bad_samples"] += 1
    return samples


def _start_manifest(src: Manifest, dst: Path, autoencoder: Autoencoder, text: TextEncoder, src_folder: Path,
                    resolutions: list[int] | None, share: Share) -> Manifest:
    if resolutions is None and src.image_size is None:
        raise DataError(f"{src_folder}: its images keep their own sizes (microdit-data prepare): give the "
                        "resolutions to encode at (--resolutions 256 512)")
    h, w = (resolutions[0], resolutions[0]) if resolutions else src.image_size
    fresh = Manifest(kind="latents", image_size=[h, w], label_names=src.label_names,
                     autoencoder=autoencoder.name, latent_shape=list(autoencoder.latent_shape(h, w)),
                     latent_scale=autoencoder.scale, text_encoder=text.name, text_shape=[text.length, text.dim],
                     source=str(src_folder), licence=src.licence, complete=False,
                     resolutions={str(r): list(autoencoder.latent_shape(r, r)) for r in resolutions or []})
    for name in dict.fromkeys(["manifest.json", share.part]):
        if not (dst / name).exists():
            continue
        old = load_manifest(dst, check_total=False) if name == "manifest.json" else _load_part(dst / name)
        keys = ("autoencoder", "latent_shape", "resolutions", "text_encoder", "text_shape", "source")
        same, want = ({k: getattr(m, k) for k in keys} for m in (old, fresh))
        if same != want:
            raise DataError(f"{dst} already holds a different encoding ({same}); expected {want}: "
                            "choose another output folder")
        if name == "manifest.json" and old.complete:
            return old
        if name == share.part:
            fresh.shards, fresh.samples = old.shards, old.samples
    return fresh


def _load_part(path: Path) -> Manifest:
    try:
        return Manifest.from_dict(json.loads(path.read_text()), str(path), check_total=False)
    except ValueError as err:
        raise DataError(f"{path}: unreadable part manifest ({err}); delete it to re-encode that rank's "
                        "shards") from None


def encode_dataset(src_folder: str | Path, dst_folder: str | Path, autoencoder: Autoencoder, text: TextEncoder,
                   batch_size: int = 64, seed: int = 0, device: str | torch.device = "cpu",
                   skip_bad_samples: bool = False, progress: bool = True, resolutions: list[int] | None = None,
                   share: Share = Share()) -> Manifest:
    """Encode every image shard of ``src_folder`` into a latent shard in ``dst_folder``. With
    ``resolutions`` (pixels), every sample holds the latents of each resolution in one pass
    (``KEY.latent_256.npy``, ``KEY.latent_512.npy``: the image resized on its short side and
    centre-cropped square for each) beside one copy of its caption embedding; the manifest's
    ``resolutions`` maps each to its latent shape, and a stage reads the one it names
    (``data.resolution``, ``stages.NAME.resolution``). One embedding for all resolutions halves the
    disk a two-resolution set takes (77 x 1024 fp16 caption embeddings are 154 KB a sample, the
    256 and 512 px SDXL latents 8 and 32 KB).

    With a ``share`` of a multi-process launch, this process encodes only shard i with i % world
    == rank, writes and resumes them alone, and the last rank to finish merges the manifests; the
    latents are those one process writes (each shard's noise is seeded by its index alone).
    One process per share encodes ``dst_folder`` at a time (a lock file beside it,
    :mod:`microdit.locks`): a process that finds another encoding it waits, then finds its shards
    done and returns, as for any complete dataset of the same encoding.
    """
    src_folder, dst = Path(src_folder), Path(dst_folder)
    src = load_manifest(src_folder)
    if src.kind != "images":
        raise DataError(f"{src_folder}: expected an image dataset to encode, found kind {src.kind!r}")
    if resolutions is not None and (not resolutions or any(r < 1 for r in resolutions)
                                    or len(set(resolutions)) != len(resolutions)):
        raise DataError(f"resolutions must be distinct positive pixel sizes, got {resolutions}")
    dst.parent.mkdir(parents=True, exist_ok=True)
    lock = f".{dst.name}.lock" if share.world == 1 else f".{dst.name}.rank-{share.rank}-of-{share.world}.lock"
    with acquire(dst.parent / lock, f"the encoding of {dst} (rank {share.rank} of {share.world})", wait=True):
        if _holds_others(dst):
            raise DataError(f"{dst} holds files but no manifest.json (not an encode to resume): encode into a new "
                            "or empty folder; nothing was changed")
        dst.mkdir(exist_ok=True)
        manifest = _start_manifest(src, dst, autoencoder, text, src_folder, resolutions, share)
        if manifest.complete:
            return manifest
        try:
            return _encode(src, src_folder, dst, manifest, autoencoder, text, batch_size, seed, device,
                           skip_bad_samples, progress and f"encode {dst.name}", share, resolutions)
        except OSError as err:
            if err.errno not in DISK_ERRNOS:  # not a full disk or quota (a shard that went missing: it is named)
                raise
            raise DataError(f"{dst}: the latent shards could not be written ({err.strerror or err}); the shards "
                            "finished before are kept and the partial one was removed: free space and run the "
                            "same command again to resume") from None


def _encode(src: Manifest, src_folder: Path, dst: Path, manifest: Manifest, autoencoder: Autoencoder,
            text: TextEncoder, batch_size: int, seed: int, device: str | torch.device, skip_bad_samples: bool,
            progress: str | bool, share: Share, resolutions: list[int] | None) -> Manifest:
    remove_stale_tmps(dst)  # shards of encodes killed mid-shard on this host (other ranks' live ones stay)
    done = {s.name for s in manifest.shards if (dst / s.name).is_file()}
    manifest.shards = [s for s in manifest.shards if s.name in done]
    save_manifest_as(dst, share.part, manifest)  # from the start: an encode killed in its first shard resumes
    counts = {"bad_samples": 0}
    autoencoder.to(device)
    text.to(device)
    captions = CaptionCache(text)
    todo = [(i, s) for i, s in enumerate(src.shards)
            if i % share.world == share.rank and _latent_name(s.name) not in done]
    who = "" if share.world == 1 else f" rank {share.rank}/{share.world}"
    bar = progress_bar(total=sum(s.samples for _, s in todo), desc=f"{progress}{who}", unit="img",
                       enabled=bool(progress))
    for shard_index, info in todo:
        shard = src_folder / info.name
        if shard.stat().st_size != info.bytes:
            raise DataError(f"shard {shard} has {shard.stat().st_size} bytes, the manifest says {info.bytes}: "
                            "truncated or replaced")
        samples = _read_image_shard(shard, skip_bad_samples, counts)
        generator = torch.Generator(device=device).manual_seed(seed * 1_000_003 + shard_index)  # per shard: resumable
        with ShardWriter(dst / _latent_name(info.name)) as writer:
            for start in range(0, len(samples), batch_size):
                batch = samples[start:start + batch_size]
                emb, mask = captions.encode([s[2] for s in batch])
                latents = {}
                for resolution in resolutions or [None]:
                    pixels = [np.asarray(s[1] if resolution is None else resize_center_crop(s[1], resolution))
                              for s in batch]
                    images = from_uint8(torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2)).to(device)
                    member = "latent.npy" if resolution is None else f"latent_{resolution}.npy"
                    latents[member] = autoencoder.encode(images, generator=generator).cpu().numpy()
                for i, (key, _, caption, labels) in enumerate(batch):
                    writer.write(key, {**{m: npy_bytes(x[i].astype(np.float16)) for m, x in latents.items()},
                                       "text.npy": npy_bytes(emb[i]),
                                       "mask.npy": npy_bytes(mask[i]), "txt": caption.encode(), "json": labels})
                bar.update(len(batch))
            manifest.shards.append(writer.close())
        manifest.samples = sum(s.samples for s in manifest.shards)
        save_manifest_as(dst, share.part, manifest)
    bar.close()
    if counts["bad_samples"]:
        print(f"[encode] skipped {counts['bad_samples']} bad sample(s)")
    manifest.shards.sort(key=lambda s: s.name)
    manifest.complete = True
    save_manifest_as(dst, share.part, manifest)
    if share.world > 1:
        return _merge_parts(dst, manifest, share.world, len(src.shards))
    return manifest


def _latent_name(image_shard: str) -> str:
    return image_shard.replace("images-", "latents-", 1)


def save_manifest_as(folder: Path, name: str, manifest: Manifest) -> None:
    """Write ``manifest`` to ``folder/name`` atomically."""
    write_atomic(folder / name, manifest.to_json().encode())


def _merge_parts(folder: Path, mine: Manifest, world: int, expected: int) -> Manifest:
    """``manifest.json`` from every rank's complete part, once all are complete (else ``mine``, incomplete
    as a whole: the last rank to finish merges)."""
    parts = [_load_part(folder / Share(r, world).part) if (folder / Share(r, world).part).is_file() else None
             for r in range(world)]
    if any(p is None or not p.complete for p in parts):
        return dataclasses.replace(mine, complete=False)  # this rank's shards are done, the dataset is not
    merged = dataclasses.replace(mine, shards=sorted((s for p in parts for s in p.shards), key=lambda s: s.name))
    merged.samples = sum(s.samples for s in merged.shards)
    if len(merged.shards) != expected:
        raise DataError(f"{folder}: the ranks' parts list {len(merged.shards)} shards, the images have {expected}: "
                        "a part is stale (written with another number of ranks?); delete the .part-*.json files "
                        "whose shards are missing and rerun")
    save_manifest(folder, merged)
    return merged


VERIFIED = ".verified.json"


def verify_dataset(folder: str | Path, count_samples: bool = True) -> Manifest:
    """Check every shard of a dataset against its manifest: present, size, sha256 and (with
    ``count_samples``) the number of samples in it. A successful check leaves ``.verified.json``
    (the manifest's sha256, each shard's size and mtime): while they hold, a later check only stats
    the shards (the trainer checks every dataset at start; the first time hashes it). A dataset
    behind a URL (:mod:`microdit.data.remote`) has its manifest read; each shard is checked when
    the shard cache fetches it."""
    from microdit.data.remote import is_remote, load_remote_manifest

    if is_remote(folder):
        return load_remote_manifest(folder, check_total=not count_samples)
    folder = Path(folder)
    manifest = load_manifest(folder, check_total=not count_samples)  # counted: the wrong shard is named below
    manifest_bytes = (folder / "manifest.json").read_bytes()  # small: hashed on every check, so an edit is seen
    stats = {"manifest.json": hashlib.sha256(manifest_bytes).hexdigest()}
    for info in manifest.shards:
        path = folder / info.name
        if not path.is_file():
            raise DataError(f"shard {path} listed in the manifest is missing")
        stats[info.name] = [path.stat().st_size, path.stat().st_mtime_ns]
    stamp = dataset_cache(folder, VERIFIED)
    try:
        if json.loads(stamp.read_text()) == stats:
            return manifest
    except (OSError, ValueError):
        pass
    for info in manifest.shards:
        path = folder / info.name
        if stats[info.name][0] != info.bytes or sha256_of(path) != info.sha256:
            raise DataError(f"shard {path} does not match its manifest entry (size or sha256): corrupt or replaced")
        if count_samples:
            found = sum(1 for _ in iter_shard(path))
            if found != info.samples:
                raise DataError(f"shard {path} holds {found} samples, its manifest entry says {info.samples}")
    if count_samples and manifest.complete and manifest.samples != sum(s.samples for s in manifest.shards):
        raise DataError(f"{folder / 'manifest.json'}: samples is {manifest.samples} but its shards hold "
                        f"{sum(s.samples for s in manifest.shards)} (counted)")
    try:
        stamp.write_text(json.dumps(stats))
    except OSError:
        pass  # nowhere to write (a full disk): verified again next time
    return manifest


def _holds_others(folder: Path) -> bool:
    """``folder`` holds files no encode wrote: hidden files are another rank's work in progress (its
    part manifest, a shard's temporary), only a visible file without any manifest is someone else's."""
    return folder.is_dir() and any(not p.name.startswith(".") for p in folder.iterdir()) \
        and not (folder / "manifest.json").is_file() and not any(folder.glob(".part-*.json"))


def encoded_from(folder: str | Path) -> str | None:
    """What the latent dataset in ``folder`` was encoded from, where its manifest's ``source`` is an
    image dataset that is still there and was not drawn by the synthetic generator (``jdb_out (jdb)``);
    None for synthetic images, or where the origin cannot be told (a dataset copied elsewhere)."""
    source = load_manifest(folder).source or ""
    if source.startswith("synthetic(") or not (Path(source) / "manifest.json").is_file():
        return None
    found = load_manifest(source).source or ""
    return None if found.startswith("synthetic(") else f"{source} ({found.split(' (')[0]})"


def build_synthetic_dataset(recipe: SyntheticRecipe, progress: bool = True, why: str = "") -> Manifest:
    """The synthetic dataset of ``recipe`` as latents in ``recipe.folder`` (its images in
    ``FOLDER-images``), built and encoded when the folder holds none, with one line saying so (and
    ``why``, where a setting decides it); an existing complete dataset is kept as it is, and refused
    when its images were drawn with another seed or scene, it was encoded with other encoders than
    the recipe's, or it is not synthetic (a dataset of the user's own under ``data.prepare=synthetic``);
    a file or a folder of other files is refused before anything is built."""
    from microdit.data.images import write_image_dataset
    from microdit.encoders import load_autoencoder, load_text_encoder

    folder, seed, scene = Path(recipe.folder), recipe.seed, recipe.scene
    images = folder.with_name(folder.name + "-images")
    source = synthetic_source(seed, scene)
    if folder.is_file() or _holds_others(folder):
        what = not_a_folder(folder) if folder.is_file() else "holds files but no manifest.json"
        download = "" if folder.is_file() else (f". To train on a download of one of the paper's sets: "
                                                f"{from_download(folder)}, microdit-data encode OUT LATENTS, then "
                                                "data.folders=[LATENTS] data.prepare=none")
        raise DataError(f"{folder} {what}: data.prepare=synthetic (the default data group) builds the synthetic "
                        f"dataset into data.folders[0], a new or empty folder; nothing was changed{download}")
    if (images / "manifest.json").is_file() and (found := load_manifest(images).source) != source:
        raise DataError(f"{images}: holds {found}, not {source}: give this scene or seed another dataset folder, "
                        f"or delete {folder} and {images} to rebuild them")
    if (folder / "manifest.json").is_file() and (manifest := load_manifest(folder)).complete:
        if origin := encoded_from(folder):
            raise DataError(f"{folder} holds the latents of {origin}, not a synthetic dataset: data.prepare="
                            "synthetic (the default data group) builds the synthetic dataset into data.folders[0]; "
                            "to train on this one, set data.prepare=none")
        encoders = (manifest.autoencoder, manifest.text_encoder)
        if None not in encoders and encoders != (recipe.autoencoder, recipe.text_encoder):
            raise DataError(f"{folder} holds {manifest.autoencoder} latents with {manifest.text_encoder} captions, not "
                            f"the run's {recipe.autoencoder} and {recipe.text_encoder} (encoder.autoencoder, "
                            f"encoder.text_encoder): give these encoders another data folder (data.folders), or "
                            f"delete {folder} to encode it again")
        _refuse_other_draw(folder, recipe.differs(manifest), images)
        return manifest
    if not (folder / "manifest.json").is_file():
        print(f"[data] {folder} holds no dataset: building the synthetic one there ({recipe.samples} images, "
              f"scene {scene}, seed {seed}{'; ' + why if why else ''})", file=sys.stderr)
    autoencoder = load_autoencoder(recipe.autoencoder)
    size = recipe.latent_size * autoencoder.downsample if recipe.latent_size else recipe.size
    if (images / "manifest.json").is_file():
        _refuse_other_draw(images, recipe.differs(load_manifest(images), size), folder)
    else:
        try:
            samples = synthetic_samples(seed, recipe.samples, size, scene)
            write_image_dataset(images, samples, size, list(SHAPES), source)
        except DataError:  # unless another process built the same images meanwhile (a function of seed, index)
            if not (images / "manifest.json").is_file():
                raise
    return encode_dataset(images, folder, autoencoder, load_text_encoder(recipe.text_encoder), progress=progress)


def _refuse_other_draw(folder: Path, found: str | None, other: Path) -> None:
    """A synthetic dataset (latents or images) drawn at another sample count or size than asked."""
    if found:
        raise DataError(f"{folder} holds {found} (data.prepare_samples and data.prepare_size; a job's held-out "
                        f"and probe splits: eval.held_out_samples, eval.probe_samples): give them another folder "
                        f"(data.folders), or delete {folder} and {other} to build them again")
