"""A job's rows: one per run and evaluated stage end (with the planned training cost up to it),
and the reference rows every table of a job shows beside its arms: real-vs-real at the same sample
count and the shuffled-prompt chance (:mod:`microdit.pipeline` writes them; ``tools/doc_tables.py``
regenerates the docs' tables from them)."""

from __future__ import annotations

import json
from pathlib import Path


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
REFERENCE_ROWS = {"real vs real (same n)": {"probe_fd": "probe_fd_real", "probe_kid": "probe_kid_real"},
                  "chance (shuffled prompts)": {"probe_acc": "probe_chance", "probe_acc_mean": "probe_chance_mean"}}


def reference_rows(rows: list[dict], metrics: list[str]) -> list[dict]:
    """Rows to read the arms against, from every run's evaluation: real-vs-real (another real set
    of the same size against the reference) and the shuffled-prompt chance, per stage end."""
    out = []
    for label, swap in REFERENCE_ROWS.items():
        for r in rows:
            ref = {"trainer.name": label, "after": r["after"]}
            for metric in metrics:
                short = metric.removeprefix("eval.heldout.")
                head, _, rest = short.partition(".")
                source = swap.get(short) or (f"{swap[head]}.{rest}" if head in swap and rest else None)
                if source is not None:
                    ref[metric] = r.get(f"eval.heldout.{source}")
            out.append(ref)
    return out
