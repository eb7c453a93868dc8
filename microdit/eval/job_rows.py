"""A job's rows: one per run and evaluated stage end (with the planned training cost up to it),
the reference rows every table of a job shows beside its arms (real-vs-real at the same sample
count and the shuffled-prompt chance) and each arm's accuracies against its own chance
(:mod:`microdit.pipeline` writes them; ``tools/doc_tables.py`` regenerates the docs' tables from
them)."""

from __future__ import annotations

import json
from pathlib import Path

from microdit.eval.results import contrast_table
from microdit.eval.stats import is_number


def stage_ends(run: Path) -> list[tuple[str, int, float]]:
    """(stage name, images and planned training FLOPs up to its end) of every stage of a run, from
    its run_info.json; the checkpoint at a stage's end is ``checkpoints/<images:012d>``."""
    ends, images, flops = [], 0, 0.0
    for stage in json.loads((run / "run_info.json").read_text())["stages"]:
        images += stage["images"]
        flops += stage["images"] * stage["flops_per_image"]
        ends.append((stage["name"], images, flops))
    return ends


def stage_rows(row: dict, run: Path) -> list[dict]:
    """The long rows of one run: one per evaluated stage end, with ``after`` (the stage name), the
    planned training ``cost.images`` / ``cost.flops`` up to that point and its ``eval.heldout.*``."""
    ends = stage_ends(run)
    base = {k: v for k, v in row.items() if not k.startswith(("eval.", "cost."))}
    out = []
    for i, (name, images, flops) in enumerate(ends):
        prefix = "eval.heldout." if i == len(ends) - 1 else f"eval.heldout@{name}."
        metrics = {"eval.heldout." + k[len(prefix):]: v for k, v in row.items() if k.startswith(prefix)}
        if metrics:
            out.append({**base, "after": name, "cost.images": images, "cost.flops": flops, **metrics})
    return out


# The columns a reference row reads instead of a metric's: the real-vs-real floor and the chance.
REAL = "real vs real (same n)"
REFERENCE_ROWS = {REAL: {"probe_fd": "probe_fd_real", "probe_kid": "probe_kid_real"},
                  "chance (shuffled prompts)": {"probe_acc": "probe_chance", "probe_acc_mean": "probe_chance_mean"}}


def _reference_column(swap: dict[str, str], metric: str) -> str | None:
    """The column a reference row reads for ``metric`` (``eval.heldout.probe_acc.shape`` ->
    ``eval.heldout.probe_chance.shape`` for the chance), None where it has none."""
    short = metric.removeprefix("eval.heldout.")
    head, _, rest = short.partition(".")
    source = swap.get(short) or (f"{swap[head]}.{rest}" if head in swap and rest else None)
    return None if source is None else f"eval.heldout.{source}"


def reference_rows(rows: list[dict], metrics: list[str]) -> list[dict]:
    """Rows to read the arms against, from the runs' evaluations: the shuffled-prompt chance (of
    each run's own samples) and real-vs-real (another real set of the same size against the
    reference), per stage end. Real-vs-real reads no network: the runs of one seed on one dataset
    share its draw (the same noise and prompt seeds), so it is one row per (stage end, seed,
    dataset), not one per run, and its interval counts independent draws only."""
    out = []
    for label, swap in REFERENCE_ROWS.items():
        draws = set()
        for r in rows:
            if label == REAL:
                draw = (r["after"], r.get("trainer.seed"), str(r.get("data.folders")))
                if draw in draws:
                    continue
                draws.add(draw)
            ref = {"trainer.name": label, "after": r["after"]}
            for metric in metrics:
                source = _reference_column(swap, metric)
                if source is not None:
                    ref[metric] = r.get(source)
            out.append(ref)
    return out


def chance_table(rows: list[dict], metrics: list[str], arm: str = "trainer.name", stage: str = "after") -> str:
    """Each arm against its own chance, as planned contrasts (does an arm follow prompts at all:
    the main job's primary endpoint is named-shape accuracy above chance). Per run a twin row, the
    arm named ``ARM (shuffled prompts)``, holds in each accuracy column of ``metrics`` the accuracy
    of the same generated samples read against shuffled prompts; the table tests ``"ARM (shuffled
    prompts) vs ARM"`` paired by seed, each Δ the accuracy the prompts add over chance on the same
    samples, Holm over its own tests (:func:`microdit.eval.results.contrast_table`). Empty without
    an accuracy column or without a chance measured in it."""
    swap = REFERENCE_ROWS["chance (shuffled prompts)"]
    columns = {m: c for m in metrics if (c := _reference_column(swap, m)) is not None}
    if not any(is_number(r.get(c)) for r in rows for c in columns.values()):
        return ""
    twins = [{**r, arm: f"{r[arm]} (shuffled prompts)", **{m: r.get(c) for m, c in columns.items()}} for r in rows]
    contrasts = [f"{name} (shuffled prompts) vs {name}" for name in dict.fromkeys(r[arm] for r in rows)]
    return contrast_table(rows + twins, contrasts, list(columns), arm=arm, stage=stage)
