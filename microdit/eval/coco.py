"""COCO-30K: zero-shot FID and CLIP score on MS-COCO 2014 validation captions (the paper's Table 3).

The paper reports FID-30K and CLIP score of its final models on COCO: 30,000 captions of the 2014
validation split, generated zero-shot (the model never trained on COCO). This module builds that
evaluation set once per resolution and text encoder, then hands it to :func:`evaluate`:

1. **Captions** (:func:`coco30k_pairs`): from the 40,504 validation images (``microdit-data prepare
   coco2014``, every image kept at its own size, all five captions in its ``json``), 30,000 images
   drawn without replacement with a fixed seed (0), and for each one of its captions drawn with the
   same generator: one (image, caption) pair per image, a pure function of (seed, the prepared set),
   fixed from the manifest's sample count before a shard is read, so the set is built in one read.
2. **Real images** (``DIR-coco30k-sSEED-RRRpx-images``): those images resized on their short side
   to the generation resolution with PIL's antialiased bicubic filter and centre-cropped (clean
   resizing, as clean-fid recommends; never a second, aliasing resize). The FID reference
   statistics are computed on them (torch-fidelity's InceptionV3, cached beside them).
3. **Prompts** (``...-latents-<encoders>``): the pairs encoded with the run's own autoencoder and
   text encoder (``microdit-data encode``), so the caption embeddings are the ones the run was
   trained with.
4. **Generation and metrics** (:func:`evaluate`): one sample per caption from the noise of
   ``seed + i``, split over the processes of a ``torchrun`` launch, at ``SAMPLER`` (the reference
   implementation's sampling defaults: 30 steps, classifier-free guidance 5; the paper does not
   state its FID-30K sampler), then ``fid`` against the real images' statistics and ``clip_score``
   (100 x cosine of CLIP image and caption features; ``--clip-score-model``).

Weights a user needs (all downloaded on first use and cached by their libraries): the run's
autoencoder and text encoder, torch-fidelity's InceptionV3 (``~/.cache/torch/hub``; or
``--inception-weights``) and the CLIP-score model (open_clip, ``~/.cache/huggingface``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from microdit.data import DataError, encode_dataset, load_manifest, write_image_dataset
from microdit.data.images import decode_image, resize_center_crop
from microdit.data.manifest import from_download
from microdit.data.shards import iter_shard

CAPTIONS = 30000
SEED = 0
SAMPLER = {"steps": 30, "cfg_scale": 5.0}


def _chosen(coco: Path, count: int, seed: int) -> Iterator[tuple[str, dict[str, bytes], str, int]]:
    """(key, shard members, caption, shard index) of the ``count`` drawn pairs, in key order, from
    one pass over the shards. The draw is fixed by the manifest's sample count before any shard is
    read: a permutation of the images (in shard order) with ``seed``, its first ``count`` sorted, and
    for the n-th of them caption ``draws[n] % (its number of captions)`` from the same generator."""
    manifest = load_manifest(coco)
    if manifest.kind != "images" or not (manifest.source or "").startswith("coco2014"):
        raise DataError(f"{coco}: not a prepared coco2014 image dataset (microdit-data prepare coco2014 DIR); its "
                        f"source is {manifest.source!r}")
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.permutation(manifest.samples)[:min(count, manifest.samples)])
    draws = rng.integers(0, 1 << 30, size=len(chosen))
    index, n = 0, 0
    for shard_index, info in enumerate(manifest.shards):
        for key, members in iter_shard(coco / info.name):
            if n < len(chosen) and index == chosen[n]:
                captions = json.loads(members.get("json", b"{}")).get("captions") or [members["txt"].decode()]
                yield key, members, captions[draws[n] % len(captions)], shard_index
                n += 1
            index += 1
    if index != manifest.samples:
        raise DataError(f"{coco}: manifest.json counts {manifest.samples} samples but its shards hold {index}: "
                        "prepare the dataset again (microdit-data prepare coco2014)")


def coco30k_pairs(coco: str | Path, count: int = CAPTIONS, seed: int = SEED) -> list[tuple[str, str, int]]:
    """(sample key, caption, shard index) of the ``count`` drawn pairs of a prepared coco2014 dataset,
    in key order."""
    return [(key, caption, shard) for key, _, caption, shard in _chosen(Path(coco), count, seed)]


def coco30k_dataset(coco: str | Path, resolution: int, autoencoder, text, count: int = CAPTIONS,
                    seed: int = SEED, progress: bool = True) -> tuple[Path, Path]:
    """(real images, prompt latents) of COCO-30K at ``resolution`` for these encoders, built beside
    ``coco`` when missing (one read of the prepared set; resumable; concurrent builders wait for one
    another)."""
    coco = Path(coco)
    if coco.is_dir() and not (coco / "manifest.json").is_file():
        raise DataError(f"{coco}: not a prepared coco2014 dataset (no manifest.json); the COCO 2014 validation "
                        f"download becomes one with {from_download(coco, 'coco2014')}: give OUT")
    base = coco.with_name(f"{coco.name}-coco30k-s{seed}-n{count}-{resolution}px")
    images = base.with_name(base.name + "-images")
    if not (images / "manifest.json").is_file():
        drawn = min(count, load_manifest(coco).samples)
        samples = ((key, resize_center_crop(decode_image(members["jpg"], f"{coco}: {key}"), resolution), caption,
                    json.loads(members.get("json", b"{}"))) for key, members, caption, _ in _chosen(coco, count, seed))
        try:
            write_image_dataset(images, samples, resolution, [], f"coco30k(seed {seed}, {drawn} pairs of {coco})")
        except DataError:
            if not (images / "manifest.json").is_file():
                raise  # not a builder that got there first
    latents = base.with_name(f"{base.name}-{_slug(autoencoder.name)}-{_slug(text.name)}")
    encode_dataset(images, latents, autoencoder, text, progress=progress)
    return images, latents


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def evaluate_coco(checkpoint: str | Path, coco: str | Path, settings, count: int = CAPTIONS, seed: int = SEED,
                  resolution: int | None = None, name: str = "coco30k", device="cpu", rank: int = 0,
                  world: int = 1) -> dict | None:
    """COCO-30K of a trained run or converted checkpoint: the evaluation set at ``resolution`` (None:
    the model's own, its latent size times its autoencoder's downsampling) for the run's encoders,
    then :func:`~microdit.eval.evaluate.evaluate` with the real images as FID reference. The sampler
    is ``SAMPLER`` where ``settings.sampler_overrides`` leaves a field open. Rank 0 returns the
    metrics entry."""
    import dataclasses

    from microdit.encoders import load_autoencoder, load_text_encoder
    from microdit.eval.evaluate import check_writable_run, evaluate
    from microdit.run import encoder_names, load_model

    loaded = load_model(checkpoint, settings.use_ema, "cpu")
    check_writable_run(loaded.run_dir)  # before COCO is prepared and encoded
    text_name, ae_name = encoder_names(loaded)
    autoencoder, text = load_autoencoder(ae_name), load_text_encoder(text_name)
    size = resolution or loaded.model.cfg.input_size[0] * autoencoder.downsample
    images, latents = coco30k_dataset(coco, size, autoencoder.to(device), text.to(device), count, seed,
                                      progress=rank == 0)
    del autoencoder, text  # off the device before sampling (the metrics load their own networks)
    settings = dataclasses.replace(settings, num_samples=min(count, load_manifest(latents).samples),
                                   sampler_overrides={**SAMPLER, **settings.sampler_overrides})
    return evaluate(loaded, latents, settings, name, device=device, rank=rank, world=world,
                    reference_dataset=images)
