"""Encoding an image dataset into a latent dataset with frozen encoders: batched, resumable.

Input shard ``images-NNNNN.tar`` becomes output shard ``latents-NNNNN.tar``. A shard is written
under a temporary name and renamed when complete, and the manifest is rewritten (atomically)
after every shard, so an interrupted run resumes where it stopped without redoing finished
shards and never leaves a half-written shard under its final name.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from microdit.data.cache import dataset_cache
from microdit.data.images import IMAGE_EXTS, decode_image, from_uint8
from microdit.data.manifest import DataError, Manifest, load_manifest, save_manifest, sha256_of
from microdit.data.shards import ShardWriter, iter_shard, npy_bytes
from microdit.data.synthetic import SHAPES, SyntheticRecipe, synthetic_samples, synthetic_source
from microdit.encoders import Autoencoder, TextEncoder
from microdit.locks import acquire
from microdit.progress import progress as progress_bar


def _read_image_shard(path: Path, skip_bad: bool, counts: dict) -> list[tuple[str, np.ndarray, str, bytes]]:
    samples = []
    for key, members in iter_shard(path):
        where = f"shard {path}: sample {key!r}"
        try:
            ext = next((e for e in IMAGE_EXTS if e in members), None)
            if ext is None or "txt" not in members:
                raise DataError(f"{where} lacks an image ({'/'.join(IMAGE_EXTS)}) or a .txt caption")
            image = np.asarray(decode_image(members[ext], where))
            samples.append((key, image, members["txt"].decode("utf-8"), members.get("json", b"{}")))
        except (DataError, UnicodeDecodeError) as err:
            if not skip_bad:
                raise DataError(str(err)) from None
            counts["bad_samples"] += 1
    return samples


def _start_manifest(src: Manifest, dst: Path, autoencoder: Autoencoder, text: TextEncoder,
                    src_folder: Path) -> Manifest:
    h, w = src.image_size
    fresh = Manifest(kind="latents", image_size=[h, w], label_names=src.label_names,
                     autoencoder=autoencoder.name, latent_shape=list(autoencoder.latent_shape(h, w)),
                     latent_scale=autoencoder.scale, text_encoder=text.name, text_shape=[text.length, text.dim],
                     source=str(src_folder), complete=False)
    if (dst / "manifest.json").exists():
        old = load_manifest(dst)
        same = {k: getattr(old, k) for k in ("autoencoder", "latent_shape", "text_encoder", "text_shape", "source")}
        want = {k: getattr(fresh, k) for k in same}
        if same != want:
            raise DataError(f"{dst} already holds a different encoding ({same}); expected {want}: "
                            "choose another output folder")
        fresh.shards, fresh.samples, fresh.complete = old.shards, old.samples, old.complete
    return fresh


def encode_dataset(src_folder: str | Path, dst_folder: str | Path, autoencoder: Autoencoder, text: TextEncoder,
                   batch_size: int = 64, seed: int = 0, device: str | torch.device = "cpu",
                   skip_bad_samples: bool = False, progress: bool = True) -> Manifest:
    """Encode every image shard of ``src_folder`` into a latent shard in ``dst_folder``.

    One process at a time encodes ``dst_folder`` (a lock file ``.NAME.lock`` beside it,
    :mod:`microdit.locks`): a process that finds another encoding it waits, then finds the
    dataset complete and returns it untouched, as for any complete dataset of the same encoding.
    """
    src_folder, dst = Path(src_folder), Path(dst_folder)
    src = load_manifest(src_folder)
    if src.kind != "images":
        raise DataError(f"{src_folder}: expected an image dataset to encode, found kind {src.kind!r}")
    dst.parent.mkdir(parents=True, exist_ok=True)
    with acquire(dst.parent / f".{dst.name}.lock", f"the encoding of {dst}", wait=True):
        if dst.is_dir() and any(dst.iterdir()) and not (dst / "manifest.json").is_file():
            raise DataError(f"{dst} holds files but no manifest.json (not an encode to resume): encode into a new "
                            "or empty folder; nothing was changed")
        dst.mkdir(exist_ok=True)
        manifest = _start_manifest(src, dst, autoencoder, text, src_folder)
        if manifest.complete:
            return manifest
        for leftover in dst.glob(".*.tmp"):  # shards of encodes killed mid-shard (nobody else writes here now)
            leftover.unlink(missing_ok=True)
        return _encode(src, src_folder, dst, manifest, autoencoder, text, batch_size, seed, device,
                       skip_bad_samples, progress)


def _encode(src: Manifest, src_folder: Path, dst: Path, manifest: Manifest, autoencoder: Autoencoder,
            text: TextEncoder, batch_size: int, seed: int, device: str | torch.device, skip_bad_samples: bool,
            progress: bool) -> Manifest:
    done = {s.name for s in manifest.shards if (dst / s.name).is_file()}
    manifest.shards = [s for s in manifest.shards if s.name in done]
    save_manifest(dst, manifest)  # from the start: an encode killed in its first shard can be resumed
    counts = {"bad_samples": 0}
    autoencoder.to(device)
    text.to(device)
    todo = [(i, s) for i, s in enumerate(src.shards) if s.name.replace("images-", "latents-") not in done]
    bar = progress_bar(total=sum(s.samples for _, s in todo), desc=f"encode {dst.name}", unit="img", enabled=progress)
    for shard_index, info in todo:
        shard = src_folder / info.name
        if shard.stat().st_size != info.bytes:
            raise DataError(f"shard {shard} has {shard.stat().st_size} bytes, the manifest says {info.bytes}: "
                            "truncated or replaced")
        samples = _read_image_shard(shard, skip_bad_samples, counts)
        generator = torch.Generator(device=device).manual_seed(seed * 1_000_003 + shard_index)  # per shard: resumable
        with ShardWriter(dst / info.name.replace("images-", "latents-")) as writer:
            for start in range(0, len(samples), batch_size):
                batch = samples[start:start + batch_size]
                images = from_uint8(torch.from_numpy(np.stack([s[1] for s in batch])).permute(0, 3, 1, 2))
                images = images.to(device)  # (B, 3, H, W) in [-1, 1]
                latents = autoencoder.encode(images, generator=generator).cpu().numpy()
                emb, mask = text.encode([s[2] for s in batch])
                emb, mask = emb.cpu().numpy(), mask.cpu().numpy()
                for i, (key, _, caption, labels) in enumerate(batch):
                    writer.write(key, {"latent.npy": npy_bytes(latents[i].astype(np.float16)),
                                       "text.npy": npy_bytes(emb[i].astype(np.float16)),
                                       "mask.npy": npy_bytes(mask[i]),
                                       "txt": caption.encode(), "json": labels})
                bar.update(len(batch))
            manifest.shards.append(writer.close())
        manifest.samples = sum(s.samples for s in manifest.shards)
        save_manifest(dst, manifest)
    bar.close()
    if counts["bad_samples"]:
        print(f"[encode] skipped {counts['bad_samples']} bad sample(s)")
    manifest.complete = True
    manifest.shards.sort(key=lambda s: s.name)
    manifest.samples = sum(s.samples for s in manifest.shards)
    save_manifest(dst, manifest)
    return manifest


VERIFIED = ".verified.json"


def verify_dataset(folder: str | Path, count_samples: bool = True) -> Manifest:
    """Check every shard of a dataset against its manifest: present, size, sha256 and (with
    ``count_samples``) the number of samples in it. A successful check leaves ``.verified.json``
    (the manifest's sha256, each shard's size and mtime): while they hold, a later check only stats
    the shards (the trainer checks every dataset at start; the first time hashes it)."""
    import json

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


def build_synthetic_dataset(recipe: SyntheticRecipe, progress: bool = True) -> Manifest:
    """The synthetic dataset of ``recipe`` as latents in ``recipe.folder`` (its images in
    ``FOLDER-images``); an existing complete dataset is kept as it is, and refused when its images
    were drawn with another seed or scene."""
    from microdit.data.images import write_image_dataset
    from microdit.encoders import load_autoencoder, load_text_encoder

    folder, seed, scene = Path(recipe.folder), recipe.seed, recipe.scene
    images = folder.with_name(folder.name + "-images")
    source = synthetic_source(seed, scene)
    if (images / "manifest.json").is_file() and (found := load_manifest(images).source) != source:
        raise DataError(f"{images}: holds {found}, not {source}: give this scene or seed another dataset folder, "
                        f"or delete {folder} and {images} to rebuild them")
    if (folder / "manifest.json").is_file() and (manifest := load_manifest(folder)).complete:
        return manifest
    autoencoder = load_autoencoder(recipe.autoencoder)
    if not (images / "manifest.json").is_file():
        try:
            size = recipe.latent_size * autoencoder.downsample if recipe.latent_size else recipe.size
            samples = synthetic_samples(seed, recipe.samples, size, scene)
            write_image_dataset(images, samples, size, list(SHAPES), source)
        except DataError:
            if not (images / "manifest.json").is_file():
                raise
            # another process built the same images meanwhile: they are a pure function of (seed, index)
    return encode_dataset(images, folder, autoencoder, load_text_encoder(recipe.text_encoder), progress=progress)
