"""``microdit-eval``: generate N samples for an evaluation set (resumable, split across processes)
and compute FID / Clip-FID against cached reference statistics, CLIP score and the offline probe
metrics; results go into the run's ``metrics.json``.

The evaluation set is a latent dataset (a held-out split): its caption embeddings are the
prompts, its labels the prompts' attributes, its latents (or the images of an image dataset for
the reference statistics) the real data.
"""

from __future__ import annotations

import io
import json
import pickle
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from microdit.data import DataError, load_manifest
from microdit.data.reader import read_dataset
from microdit.diffusion import SamplerConfig, generate
from microdit.eval.features import CLIP_FID_MODEL, CLIP_SCORE_MODEL
from microdit.eval.metrics import METRICS, EvalInputs, check_names
from microdit.files import remove_stale_tmps, unwritable, write_atomic
from microdit.locks import acquire
from microdit.progress import progress
from microdit.run import LoadedModel, check_fits_model, fit_problems, load_model, reason

METRICS_FILE = "metrics.json"


@dataclass
class EvalSettings:
    """What to generate and measure. ``sampler`` None: the run's own sampler config (the one its
    training grids used); ``sampler_overrides`` change single fields of it (e.g. ``{"steps": 50}``).
    Sample i starts from the noise of ``seed + i``; the prompts are the first ``num_samples`` of
    the evaluation set in the order drawn with ``prompt_seed`` (evaluating each training seed with
    its own ``seed`` and ``prompt_seed`` puts the evaluation's own noise into the spread across
    seeds, so a confidence interval over seeds covers it)."""

    num_samples: int = 1000
    sampler: SamplerConfig | None = None
    sampler_overrides: dict = field(default_factory=dict)
    seed: int = 0
    prompt_seed: int = 0
    batch_size: int = 64
    use_ema: bool = True
    metrics: list[str] = field(default_factory=lambda: ["probe"])
    clip_fid_model: str = CLIP_FID_MODEL
    clip_score_model: str = CLIP_SCORE_MODEL
    inception_weights: str | None = None
    probe_steps: int = 2000


def chunk_path(out_dir: Path, lo: int, hi: int) -> Path:
    """The file of generated samples lo..hi-1: named by its range, so an evaluation with another
    sample count or batch size reuses only the chunks it would generate itself (sample i always
    has prompt i and seed + i) and generates the rest."""
    return out_dir / f"samples-{lo:07d}-{hi:07d}.pt"


def _chunks(out_dir: Path, latents_fn, count: int, batch: int, rank: int, world: int) -> torch.Tensor | None:
    """Generate (resumably) chunk files of ``batch`` samples; rank r does chunks r, r + world, ..."""
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_tmps(out_dir)  # chunks an evaluation killed mid-save left behind
    paths = [(lo, min(lo + batch, count), chunk_path(out_dir, lo, min(lo + batch, count)))
             for lo in range(0, count, batch)]
    mine = [chunk for i, chunk in enumerate(paths) if i % world == rank and not chunk[2].is_file()]
    for lo, hi, path in progress(mine, desc=f"generate {out_dir.name}", unit="chunk", enabled=bool(mine)):
        buffer = io.BytesIO()
        torch.save(latents_fn(lo, hi).half(), buffer)
        write_atomic(path, buffer.getvalue())  # two evaluations of one name may write the same chunk
    if rank != 0:
        return None
    deadline = time.time() + 24 * 3600
    while not all(path.is_file() for _, _, path in paths):
        if time.time() > deadline:
            raise TimeoutError(f"chunks under {out_dir} did not all appear")
        time.sleep(2)
    return torch.cat([_load_chunk(path, hi - lo) for lo, hi, path in paths])


def _load_chunk(path: Path, count: int) -> torch.Tensor:
    """A generated chunk of ``count`` samples as float32; an unreadable one (a damaged disk, a copy
    cut short) or one of another length is named."""
    try:
        latents = torch.load(path, weights_only=True).float()
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
        raise DataError(f"generated chunk {path} is unreadable ({reason(err)}): delete it and run the evaluation "
                        "again to generate it anew") from None
    if len(latents) != count:
        raise DataError(f"generated chunk {path} holds {len(latents)} samples, its name says {count}: delete it and "
                        "run the evaluation again to generate it anew")
    return latents


def _check_datasets(loaded: LoadedModel, eval_dataset: str | Path, probe_dataset: str | Path | None,
                    metrics: list[str]):
    """(the evaluation set's manifest, the probe dataset) once both are checked to fit the model:
    the probe dataset (default: the run's training data) only where a metric compares latents."""
    manifest = load_manifest(eval_dataset)
    latent_metrics = any(METRICS[m].features == "probe" for m in metrics)  # compare latents directly
    check_fits_model(manifest, eval_dataset, loaded.model.cfg, latents=latent_metrics,
                     hint="evaluate on data encoded with the run's encoders, at its resolution")
    probe_data = probe_dataset or loaded.config.data.folders[0]
    if latent_metrics:
        try:
            probe_shape = load_manifest(probe_data).latent_shape
        except DataError as err:
            where = "" if probe_dataset else " (by default the run's training data as its config names it: give " \
                                             "--probe-dataset where that path does not lead from here)"
            raise DataError(f"probe dataset{where}: {err}") from None
        problems = fit_problems(loaded.model.cfg, latent_shape=probe_shape)
        if problems:
            raise DataError(f"probe dataset {probe_data} does not fit the model: {'; '.join(problems)}: the probe "
                            "needs data of the model's autoencoder and resolution")
    return manifest, probe_data


def check_writable_run(run_dir: Path) -> None:
    """Refuse, before any work, a run folder the evaluation cannot write: it keeps its generated
    samples in ``RUN/eval/`` and adds its results to ``RUN/metrics.json`` (another's run, a shared
    store: evaluate a copy)."""
    if problem := unwritable(run_dir):
        raise PermissionError(f"run {run_dir} {problem}: an evaluation keeps its samples in {run_dir / 'eval'} and "
                              f"adds its results to {run_dir / METRICS_FILE}; copy the run to a folder you can write "
                              "(cp -r) and evaluate the copy")


def evaluate(checkpoint: str | Path | LoadedModel, eval_dataset: str | Path, settings: EvalSettings,
             name: str | None = None, probe_dataset: str | Path | None = None, device: str = "cpu", rank: int = 0,
             world: int = 1, reference_dataset: str | Path | None = None) -> dict | None:
    """Generate and measure; rank 0 returns the metrics entry (also written to metrics.json).
    ``checkpoint``: a run, checkpoint or export folder, or a model loaded from one (with
    ``settings.use_ema``'s weights; moved to ``device``). ``reference_dataset``: the images the reference statistics of
    FID and Clip-FID are taken from (default: the evaluation set itself)."""
    check_names(settings.metrics)
    name = name or Path(eval_dataset).name
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"evaluation name {name!r} must be a plain name (it names a folder under the run's eval/)")
    if isinstance(checkpoint, LoadedModel):
        loaded = checkpoint
        loaded.model.to(device)
    else:
        loaded = load_model(checkpoint, settings.use_ema, device)
    run_dir = loaded.run_dir
    check_writable_run(run_dir)
    manifest, probe_data = _check_datasets(loaded, eval_dataset, probe_dataset, settings.metrics)
    real, real_labels, (real_texts, real_masks, real_captions) = read_dataset(
        eval_dataset, 2 * settings.num_samples, seed=settings.prompt_seed)  # prompts, then the real-vs-real twin
    count = min(settings.num_samples, len(real))
    reference, labels, texts, masks, captions = (real[:count], real_labels[:count], real_texts[:count],
                                                 real_masks[:count], real_captions[:count])
    sampler = (settings.sampler or loaded.config.sampler).with_overrides(**settings.sampler_overrides)
    use_mask = loaded.config.data.use_text_mask
    churn = f"-churn{sampler.churn:g}" if sampler.churn else ""
    tag = (f"{name}-{loaded.nimg:012d}-{'ema' if loaded.ema else 'raw'}-{sampler.solver}{sampler.steps}"
           f"-cfg{sampler.cfg_scale:g}{churn}-seed{settings.seed}"
           + (f"-prompts{settings.prompt_seed}" if settings.prompt_seed else ""))

    def latents_fn(lo: int, hi: int) -> torch.Tensor:
        return generate(loaded.model, texts[lo:hi], list(range(settings.seed + lo, settings.seed + hi)),
                        loaded.config.diffusion, sampler, masks[lo:hi] if use_mask else None, settings.batch_size)

    networks = (EvalInputs.load_networks(settings.metrics, manifest.autoencoder, settings, device, probe_data)
                if rank == 0 else {})
    generated = _chunks(run_dir / "eval" / tag, latents_fn, count, settings.batch_size, rank, world)
    if generated is None:
        return None
    inputs = EvalInputs(generated, reference, labels, captions, eval_dataset, probe_data, manifest.autoencoder,
                        settings, device, real_twin=real[count:2 * count], reference_dataset=reference_dataset,
                        networks=networks)
    metrics: dict = {}
    for metric in settings.metrics:
        metrics.update(METRICS[metric].compute(inputs))
    entry = {"name": name, "checkpoint": str(loaded.checkpoint), "nimg": loaded.nimg, "ema": loaded.ema,
             "eval_dataset": str(eval_dataset), "reference_dataset": str(reference_dataset or eval_dataset),
             "num_samples": count, "seed": settings.seed,
             "prompt_seed": settings.prompt_seed,
             "sampler": asdict(sampler),
             "settings": asdict(settings), "metrics": metrics, "time": time.time()}
    record_metrics(run_dir, entry)
    return entry


# The fields of a metrics.json entry its readers use (an entry's key, the results table), by kind.
ENTRY_FIELDS = {"name": str, "nimg": int, "ema": bool, "sampler": dict, "num_samples": int, "seed": int,
                "metrics": dict}
_KINDS = {str: "a string", int: "an integer", bool: "true or false", dict: "an object"}


def _entries(path: Path) -> list[dict]:
    """The entries of the metrics.json at ``path``; ValueError naming the first field that is not
    of its kind (``ENTRY_FIELDS``): a hand-edited or foreign file."""
    found = json.loads(path.read_text())
    entries = found.get("entries") if isinstance(found, dict) else None
    if not isinstance(entries, list):
        raise ValueError('expected an object {"entries": [...]}')
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(f"entries[{i}] is a {type(entry).__name__}, not an object")
        for name, kind in ENTRY_FIELDS.items():
            if not isinstance(entry.get(name), kind) or (kind is int and isinstance(entry.get(name), bool)):
                raise ValueError(f"entries[{i}].{name}: expected {_KINDS[kind]}, got {entry.get(name)!r}")
    return entries


def read_metrics(run_dir: str | Path) -> list[dict]:
    """Entries of a run's metrics.json (empty if none). A damaged file is named in a warning and
    read as empty, so one bad run does not stop a table of many."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    try:
        return _entries(path)
    except (OSError, UnicodeDecodeError, ValueError) as err:
        print(f"warning: {path} is not a readable metrics file ({reason(err)}); its run is read without metrics",
              file=sys.stderr)
        return []


def record_metrics(run_dir: str | Path, entry: dict) -> None:
    """Add (or replace: same name, checkpoint, sampler, samples and seed) an entry in metrics.json.
    Evaluations of one run that finish at once add their entries in turn (a lock beside the file),
    so none is lost. A damaged metrics.json is kept aside as ``metrics.json.damaged-<time>``
    (named in a warning), never overwritten."""
    def key(e: dict) -> tuple:
        return (e["name"], e["nimg"], e["ema"], json.dumps(e["sampler"], sort_keys=True), e["num_samples"], e["seed"],
                e.get("prompt_seed", 0))

    path = Path(run_dir) / METRICS_FILE
    with acquire(path.with_name(f".{METRICS_FILE}.lock"), str(path), wait=True):
        entries = []
        if path.is_file():
            try:
                entries = _entries(path)
            except (OSError, UnicodeDecodeError, ValueError) as err:
                aside = path.with_name(f"{METRICS_FILE}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
                path.replace(aside)
                print(f"warning: {path} was not a readable metrics file ({reason(err)}); kept as {aside}, and a new "
                      "one started", file=sys.stderr)
        entries = [e for e in entries if key(e) != key(entry)] + [entry]
        write_atomic(path, json.dumps({"entries": entries}, indent=2).encode())
