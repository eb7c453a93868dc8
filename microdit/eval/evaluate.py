"""``microdit-eval``: generate N samples for an evaluation set (resumable, split across processes)
and compute FID / Clip-FID against cached reference statistics, CLIP score and the offline probe
metrics; results go into the run's ``metrics.json``.

The evaluation set is a latent dataset (a held-out split): its caption embeddings are the
prompts, its labels the prompts' attributes, its latents (or the images of an image dataset for
the reference statistics) the real data.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from microdit.data import DataError, load_manifest
from microdit.data.manifest import write_atomic
from microdit.data.reader import read_dataset
from microdit.diffusion import SamplerConfig, generate
from microdit.eval.features import CLIP_FID_MODEL, CLIP_SCORE_MODEL
from microdit.eval.metrics import METRICS, EvalInputs, check_names
from microdit.locks import acquire, private_tmp, remove_stale_tmps
from microdit.progress import progress
from microdit.train.checkpoint import load_model

METRICS_FILE = "metrics.json"


@dataclass
class EvalSettings:
    """What to generate and measure. ``sampler`` None: the run's own sampler config (the one its
    training grids used); ``sampler_overrides`` change single fields of it (e.g. ``{"steps": 50}``)."""

    num_samples: int = 1000
    sampler: SamplerConfig | None = None
    sampler_overrides: dict = field(default_factory=dict)
    seed: int = 0
    batch_size: int = 64
    use_ema: bool = True
    metrics: list[str] = field(default_factory=lambda: ["probe"])
    clip_fid_model: str = CLIP_FID_MODEL
    clip_score_model: str = CLIP_SCORE_MODEL
    inception_weights: str | None = None
    probe_steps: int = 2000


def _chunks(out_dir: Path, latents_fn, count: int, batch: int, rank: int, world: int) -> torch.Tensor | None:
    """Generate (resumably) chunk files of ``batch`` samples; rank r does chunks r, r + world, ..."""
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_tmps(out_dir)  # chunks an evaluation killed mid-save left behind
    starts = list(range(0, count, batch))
    mine = [i for i in range(len(starts)) if i % world == rank and not (out_dir / f"chunk-{i:05d}.pt").is_file()]
    for i in progress(mine, desc=f"generate {out_dir.name}", unit="chunk"):
        start, path = starts[i], out_dir / f"chunk-{i:05d}.pt"
        latents = latents_fn(start, min(start + batch, count))
        tmp = private_tmp(path)  # two evaluations of one name may write the same chunk
        torch.save(latents.half(), tmp)
        tmp.replace(path)
    if rank != 0:
        return None
    deadline = time.time() + 24 * 3600
    while not all((out_dir / f"chunk-{i:05d}.pt").is_file() for i in range(len(starts))):
        if time.time() > deadline:
            raise TimeoutError(f"chunks under {out_dir} did not all appear")
        time.sleep(2)
    return torch.cat([torch.load(out_dir / f"chunk-{i:05d}.pt", weights_only=True).float()
                      for i in range(len(starts))])


def evaluate(checkpoint: str | Path, eval_dataset: str | Path, settings: EvalSettings, name: str | None = None,
             probe_dataset: str | Path | None = None, device: str = "cpu", rank: int = 0,
             world: int = 1) -> dict | None:
    """Generate and measure; rank 0 returns the metrics entry (also written to metrics.json)."""
    check_names(settings.metrics)
    name = name or Path(eval_dataset).name
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"evaluation name {name!r} must be a plain name (it names a folder under the run's eval/)")
    loaded = load_model(checkpoint, settings.use_ema, device)
    run_dir = loaded.checkpoint.parent.parent
    manifest = load_manifest(eval_dataset)
    model = loaded.model.cfg  # checked before anything is generated:
    if manifest.text_shape[1] != model.caption_dim:
        raise DataError(f"dataset {eval_dataset} has {manifest.text_shape[1]}-d captions ({manifest.text_encoder}), "
                        f"the model expects caption_dim {model.caption_dim}: evaluate on data encoded with the run's "
                        "text encoder")
    if "probe" in settings.metrics:  # the probe compares latents: reference, probe data and samples alike
        generated = [model.in_channels, *model.input_size]
        probe_data = probe_dataset or loaded.config.data.folders[0]
        try:
            probe_shape = load_manifest(probe_data).latent_shape
        except DataError as err:
            raise DataError(f"probe dataset: {err}") from None
        for what, folder, shape in (("dataset", eval_dataset, manifest.latent_shape),
                                    ("probe dataset", probe_data, probe_shape)):
            if list(shape) != generated:
                raise DataError(f"{what} {folder} has latents {list(shape)}, the model generates {generated}: the "
                                "probe metric needs data of the model's autoencoder and resolution")
    reference, labels, (texts, masks, captions) = read_dataset(eval_dataset, settings.num_samples)
    count = len(reference)
    sampler = (settings.sampler or loaded.config.sampler).with_overrides(**settings.sampler_overrides)
    use_mask = loaded.config.data.use_text_mask
    churn = f"-churn{sampler.churn:g}" if sampler.churn else ""
    tag = (f"{name}-{loaded.nimg:012d}-{'ema' if loaded.ema else 'raw'}-{sampler.solver}{sampler.steps}"
           f"-cfg{sampler.cfg_scale:g}{churn}-seed{settings.seed}")

    def latents_fn(lo: int, hi: int) -> torch.Tensor:
        return generate(loaded.model, texts[lo:hi], list(range(settings.seed + lo, settings.seed + hi)),
                        loaded.config.diffusion, sampler, masks[lo:hi] if use_mask else None, settings.batch_size)

    generated = _chunks(run_dir / "eval" / tag, latents_fn, count, settings.batch_size, rank, world)
    if generated is None:
        return None
    inputs = EvalInputs(generated, reference, labels, captions, eval_dataset,
                        probe_dataset or loaded.config.data.folders[0], manifest.autoencoder, settings, device)
    metrics: dict = {}
    for metric in settings.metrics:
        metrics.update(METRICS[metric].compute(inputs))
    entry = {"name": name, "checkpoint": str(loaded.checkpoint), "nimg": loaded.nimg, "ema": loaded.ema,
             "eval_dataset": str(eval_dataset), "num_samples": count, "seed": settings.seed,
             "sampler": asdict(sampler),
             "settings": asdict(settings), "metrics": metrics, "time": time.time()}
    record_metrics(run_dir, entry)
    return entry


def read_metrics(run_dir: str | Path) -> list[dict]:
    """Entries of a run's metrics.json (empty if none)."""
    path = Path(run_dir) / METRICS_FILE
    return json.loads(path.read_text())["entries"] if path.is_file() else []


def record_metrics(run_dir: str | Path, entry: dict) -> None:
    """Add (or replace: same name, checkpoint, sampler, samples and seed) an entry in metrics.json.
    Evaluations of one run that finish at once add their entries in turn (a lock beside the file),
    so none is lost."""
    def key(e: dict) -> tuple:
        return e["name"], e["nimg"], e["ema"], json.dumps(e["sampler"], sort_keys=True), e["num_samples"], e["seed"]

    path = Path(run_dir) / METRICS_FILE
    with acquire(path.with_name(f".{METRICS_FILE}.lock"), str(path), wait=True):
        entries = [e for e in read_metrics(run_dir) if key(e) != key(entry)] + [entry]
        write_atomic(path, json.dumps({"entries": entries}, indent=2).encode())
