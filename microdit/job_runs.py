"""A job's runs trained and evaluated: in this process, or in worker processes that take every
run's training, then every evaluation, from one queue (``JobConfig.workers``), each with its share
of the threads. A run that finished is not trained again and an evaluation is cached, so a job
stopped by an error or a signal continues where it stopped when run again. Then the runs' sample
grid (:func:`sample_grid`). :mod:`microdit.pipeline` composes the job (``job`` here: its
``JobConfig``) and reports its rows.
"""

from __future__ import annotations

import io
import os
import signal
import sys
from pathlib import Path

import torch

from microdit.eval.job_rows import stage_ends
from microdit.files import write_atomic
from microdit.progress import share_terminal
from microdit.train.config import TrainConfig
from microdit.train.guard import STOP_EXITS
from microdit.train.plan import resolve


def run_splits(cfg: TrainConfig, job):
    """(first stage, its held-out split, its probe split) of a run of ``job``: the run is
    evaluated on the first stage's data, its probe trained on a split of that data no run saw."""
    first = resolve(cfg)[0]
    return first, first.dataset.held_out(job.eval.held_out_samples), first.dataset.probe_split(job.eval.probe_samples)


def train_and_evaluate(configs: list[TrainConfig], job) -> None:
    """Train each run that has not finished, then evaluate it (cached evaluations are kept); with
    ``job.workers`` > 1 (0: one per thread of this process, at most one per run), that many
    processes take tasks from one queue (:func:`_worker`), each with its share of the threads:
    every run's training first, largest FLOP budget first, then as many evaluations, each of a run
    whose training ended, in the order they end. The evaluations (20-30 s each in the main job)
    fill the end, so that no worker waits out a whole run of another (the main job's 15 runs on 2
    workers: the last run's training and evaluation alone, ~60 s, before)."""
    count = min(job.workers or torch.get_num_threads(), len(configs))
    if count <= 1:
        for i, cfg in enumerate(configs):
            _train_one(cfg, _label(i, configs))
            _evaluate_one(cfg, job, _label(i, configs))
        return
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    tasks, trained = context.Queue(), context.Queue()
    for task in task_order(configs) + [None] * count:
        tasks.put(task)
    threads = max(1, torch.get_num_threads() // count)
    print(f"[job] {count} workers, {threads} thread(s) each", file=sys.stderr)
    workers = [context.Process(target=_worker, args=(tasks, trained, configs, job, threads, k)) for k in range(count)]
    for w in workers:
        w.start()
    try:
        _join(workers, trained)
    except (KeyboardInterrupt, SystemExit) as stop:  # Ctrl-C, or a SIGTERM (microdit.cli.stopping: SystemExit)
        if isinstance(stop, SystemExit) and stop.code not in SIGNAL_EXITS:
            raise
        sig = signal.SIGINT if isinstance(stop, KeyboardInterrupt) else stop.code - 128
        for w in workers:  # a signal sent to this process alone reaches the workers too: each stops its run
            if w.is_alive():  # at a checkpoint (one that had it already records it again)
                os.kill(w.pid, sig)
        for w in workers:
            w.join()
    codes = [w.exitcode for w in workers]
    if outcome := workers_outcome(codes):
        raise ValueError(outcome)
    if stopped := [c for c in codes if c]:  # none failed, some stopped at a signal: exit as a run of this
        raise SystemExit(stopped[0] if stopped[0] > 0 else 128 - stopped[0])  # process does (128 + signal)


EVALUATE = "evaluate"  # a task of the queue: evaluate the next run whose training ended
NOT_TRAINED = -1  # in place of a run on the trained queue: its worker ended during its training


def task_order(configs: list[TrainConfig]) -> list:
    """The tasks of a job's workers: each run's training (its index), largest FLOP budget first (a
    long run is not left to the end), then one ``EVALUATE`` per run."""
    return sorted(range(len(configs)), key=lambda i: -(configs[i].trainer.budget_flops or 0.0)) + [EVALUATE] * len(
        configs)


def _join(workers: list, trained) -> None:
    """Wait for every worker. One that ends with an error or a signal may have ended during a
    training, whose evaluation another worker would then wait for forever: a ``NOT_TRAINED`` takes
    that run's place (the job fails or stops then; running it again evaluates what was trained)."""
    from multiprocessing.connection import wait

    alive = list(workers)
    while alive:
        wait([w.sentinel for w in alive])
        for w in [w for w in alive if not w.is_alive()]:
            alive.remove(w)
            w.join()
            if w.exitcode != 0:
                trained.put(NOT_TRAINED)


def workers_outcome(exitcodes: list[int]) -> str | None:
    """What a job's workers' exit codes say where some failed (None where none did): which failed
    (each printed its error) and which stopped at a signal (Ctrl-C, SIGTERM: :data:`SIGNAL_EXITS`)."""
    stopped = [k for k, code in enumerate(exitcodes) if code in SIGNAL_EXITS]
    failed = [k for k, code in enumerate(exitcodes) if code != 0 and k not in stopped]
    if not failed:
        return None
    parts = [f"job worker(s) {failed} failed (the error is printed above)"]
    parts += [f"worker(s) {stopped} stopped at a signal"] if stopped else []
    return "; ".join(parts + ["finished runs, evaluations and checkpoints are kept: run the job again to continue"])


# How a worker ends at SIGINT or SIGTERM: the trainer's exit (128 + signal) after its checkpoint, or
# the signal's own (a negative exit code) where the process did not catch it.
SIGNAL_EXITS = {*STOP_EXITS, -signal.SIGINT, -signal.SIGTERM}


def _worker(tasks, trained, configs: list[TrainConfig], job, threads: int, index: int) -> None:
    """One worker process of :func:`train_and_evaluate`: tasks until its None; a run it trained goes
    on the ``trained`` queue, where an ``EVALUATE`` task takes the next one from."""
    from microdit.run import RUN_ERRORS

    torch.set_num_threads(threads)
    share_terminal(f"[worker {index}]")
    try:
        while (task := tasks.get()) is not None:
            if task != EVALUATE:
                _train_one(configs[task], _label(task, configs))
                trained.put(task)
            elif (i := trained.get()) != NOT_TRAINED:
                _evaluate_one(configs[i], job, _label(i, configs))
    except RUN_ERRORS as err:  # the user's to mend: one line, as the single-process job prints it
        print(f"error: {err}", file=sys.stderr)  # labelled [worker K] by share_terminal
        raise SystemExit(2) from None
    except KeyboardInterrupt:  # Ctrl-C outside training (an evaluation, between runs): nothing to save
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the job passes the signal on too: end quietly
        raise SystemExit(128 + signal.SIGINT) from None


def _label(i: int, configs: list[TrainConfig]) -> str:
    return f"run {i + 1}/{len(configs)}: {configs[i].trainer.name} seed {configs[i].trainer.seed}"


def _train_one(cfg: TrainConfig, label: str) -> None:
    """Train one run of a job unless it finished."""
    from microdit.train.trainer import train

    if (Path(cfg.trainer.run_dir) / cfg.trainer.name / "summary.json").is_file():
        print(f"[job] {label}: trained before", file=sys.stderr)
        return
    print(f"[job] {label}", file=sys.stderr)
    train(cfg)


def _evaluate_one(cfg: TrainConfig, job, label: str) -> None:
    """Evaluate one trained run of ``job`` (cached evaluations are kept)."""
    from microdit.eval import EvalSettings, evaluate

    run = Path(cfg.trainer.run_dir) / cfg.trainer.name
    print(f"[job] evaluate {label}", file=sys.stderr)
    _, held_out, probe_split = run_splits(cfg, job)
    seed = cfg.trainer.seed  # this seed's own noise (seeds 1e6 * s + i) and prompt draw
    settings = EvalSettings(num_samples=job.eval.num_samples, batch_size=100, probe_steps=job.eval.probe_steps,
                            metrics=list(job.eval.metrics), seed=1_000_000 * seed, prompt_seed=seed)
    evaluate(run, held_out.folder, settings, name="heldout", probe_dataset=probe_split.folder)
    if job.eval.evaluate_stages:
        for name, images, _ in stage_ends(run)[:-1]:
            evaluate(run / "checkpoints" / f"{images:012d}", held_out.folder, settings, name=f"heldout@{name}",
                     probe_dataset=probe_split.folder)


GRID_PROMPTS = 8


def sample_grid(configs: list[TrainConfig], job, out: Path) -> Path:
    """``out/samples.png``: a row per arm (its first seed's run), the same ``GRID_PROMPTS`` held-out
    prompts from the same noise in every row, and ``out/samples.md`` naming the rows and prompts."""
    from PIL import Image, ImageDraw

    from microdit.data.reader import read_dataset
    from microdit.run import PromptSampler, encoder_names, load_model

    arms = list({c.trainer.name: c for c in reversed(configs)}.values())[::-1]  # each arm's first seed
    _, held_out, _ = run_splits(arms[0], job)
    prompts = read_dataset(held_out.folder, GRID_PROMPTS)[2][2]
    rows = []
    for cfg in arms:
        loaded = load_model(Path(cfg.trainer.run_dir) / cfg.trainer.name)
        draw = PromptSampler(*encoder_names(loaded))
        rows.append(draw(loaded.model, prompts, list(range(len(prompts))), loaded.config.diffusion,
                         loaded.config.sampler, loaded.config.data.use_text_mask))
    scale, label = 3, 150
    h, w = rows[0].shape[2] * scale, rows[0].shape[3] * scale
    grid = Image.new("RGB", (label + w * len(prompts), h * len(rows)), "white")
    text = ImageDraw.Draw(grid)
    for r, (cfg, images) in enumerate(zip(arms, rows, strict=True)):
        text.text((4, r * h + h // 2 - 6), cfg.trainer.name, fill="black")
        for c, image in enumerate(images):
            tile = Image.fromarray(image.permute(1, 2, 0).numpy()).resize((w, h), Image.Resampling.NEAREST)
            grid.paste(tile, (label + c * w, r * h))
    png = io.BytesIO()
    grid.save(png, format="PNG")
    write_atomic(out / "samples.png", png.getvalue())  # whole or not at all (a full disk names it)
    listing = ("![samples](samples.png)\n\nRows: " + ", ".join(c.trainer.name for c in arms)
               + f" (seed {arms[0].trainer.seed} of each; image i from noise seed i). Columns, left to right:\n\n"
               + "".join(f"{i + 1}. {p}\n" for i, p in enumerate(prompts)))
    write_atomic(out / "samples.md", listing.encode())
    return out / "samples.png"
