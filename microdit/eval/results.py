"""Gathering runs into one table: resolved config, cost meter and metrics per run -> results.csv,
and markdown tables and plots grouped by config keys, each number with its uncertainty across the
runs of a group (seeds): mean ± 95% confidence interval (Student t) and n, "one seed" where n = 1,
and the pairwise differences that are significant (:mod:`microdit.eval.stats`)."""

from __future__ import annotations

import csv
import io
import json
import sys
from importlib import resources
from pathlib import Path

import yaml

from microdit.eval.evaluate import read_metrics
from microdit.eval.stats import (
    ALPHA,
    CONFIDENCE,
    holm,
    is_number,
    numbers,
    paired_contrast,
    significant_differences,
    summarize,
)
from microdit.eval.trend import budget_tag
from microdit.files import not_a_file, write_atomic, write_figure
from microdit.run import reason


def flatten(value, prefix: str = "") -> dict:
    """Nested dicts/lists -> {'a.b.0.c': leaf}."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        items = ((str(i), v) for i, v in enumerate(value))
    else:
        return {prefix: value}
    out = {}
    for k, v in items:
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _read_mapping(path: Path, load, what: str, then: str) -> dict | None:
    """The mapping ``load`` reads from ``path``; None, with a warning naming the file (``what`` it
    should be, and ``then``: what the table does without it), where it is damaged or no mapping."""
    try:
        found = load(path.read_text())
        why = f"it holds a {type(found).__name__}, not a mapping"
    except yaml.YAMLError as err:  # its message's lines say where
        found, why = None, " ".join(str(err).split())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        found, why = None, reason(err)
    if isinstance(found, dict):
        return found
    print(f"warning: {path} is not a readable {what} ({why}); {then}", file=sys.stderr)
    return None


def run_row(run_dir: Path) -> dict | None:
    """One row: run name and folder, flattened config, cost (summary.json), latest metrics per eval
    name. A damaged file is named in a warning, so one bad run does not stop a table of many: the
    run is left out without its config, read without its cost or metrics (:func:`read_metrics`)."""
    config = _read_mapping(run_dir / "config.yaml", yaml.safe_load, "run config", "the run is left out of the table")
    if config is None:
        return None
    row = {"run": run_dir.name, "run_dir": str(run_dir), **flatten(config)}
    summary = run_dir / "summary.json"
    if summary.is_file() and (cost := _read_mapping(summary, json.loads, "cost summary", "the run is read without "
                                                    "its cost")) is not None:
        row.update({f"cost.{k}": v for k, v in cost.items()})
    latest: dict[str, dict] = {}
    for entry in read_metrics(run_dir):
        if entry["name"] not in latest or entry["nimg"] >= latest[entry["name"]]["nimg"]:
            latest[entry["name"]] = entry
    for name, entry in latest.items():
        row[f"eval.{name}.nimg"] = entry["nimg"]
        row.update({f"eval.{name}.{k}": v for k, v in flatten(entry["metrics"]).items()})
    return {k: (json.dumps(v) if isinstance(v, list) else v) for k, v in row.items()}


def collect(roots: list[str | Path]) -> list[dict]:
    """Rows of every run folder under ``roots`` (one with config.yaml that is neither a checkpoint
    folder, with meta.json, nor a model export, with model.safetensors), sorted by folder."""
    runs = sorted({p.parent for root in roots for p in Path(root).rglob("config.yaml")
                   if not (p.parent / "meta.json").exists() and not (p.parent / "model.safetensors").exists()})
    return [row for row in map(run_row, runs) if row is not None]


def _parse(text: str):
    if text == "":
        return None
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def write_csv(rows: list[dict], path: str | Path) -> None:
    """Write rows (union of keys, first-seen order) as CSV (whole or not at all: :func:`write_atomic`)."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=keys)
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r.get(k) is None else r[k]) for k in keys})
    write_atomic(Path(path), text.getvalue().encode())


def read_csv(path: str | Path) -> list[dict]:
    """Rows of a results.csv with numbers, booleans and empty cells (None) restored."""
    if not Path(path).is_file():  # most often a notebook run before its table was written
        raise FileNotFoundError(f"results table {path} ({Path(path).resolve()}) {not_a_file(path)}: microdit-results "
                                "RUNS --out FILE writes one (the notebooks read ../runs/results.csv, or the file the "
                                "environment variable MICRODIT_RESULTS names)")
    with open(path, newline="") as f:
        return [{k: _parse(v) for k, v in r.items()} for r in csv.DictReader(f)]


def _groups(rows: list[dict], group_by: list[str], sort: bool) -> list[tuple[tuple, list[dict]]]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k) for k in group_by), []).append(r)
    return sorted(groups.items(), key=lambda kv: [str(v) for v in kv[0]]) if sort else list(groups.items())


def markdown_table(rows: list[dict], group_by: list[str], metrics: list[str], sort: bool = True,
                   pairs: bool = True) -> str:
    """Markdown table: one line per distinct value of ``group_by`` (sorted, or in first-seen order);
    each metric as mean ± 95% CI (Student t) over the rows of the group (e.g. seeds) with n, or
    "(one seed)"; below it (with ``pairs``, for exploration) the pairs of lines whose difference
    is significant (Welch's t-test, Holm-corrected per metric, p < 0.05). A study declares its
    comparisons instead: :func:`contrast_table`."""
    items = _groups(rows, group_by, sort)
    lines = ["| " + " | ".join(group_by + metrics + ["runs"]) + " |", "|" + "---|" * (len(group_by) + len(metrics) + 1)]
    for key, members in items:
        cells = [str(v) for v in key] + [str(summarize([m.get(metric) for m in members]) or "–") for metric in metrics]
        lines.append("| " + " | ".join(cells + [str(len(members))]) + " |")
    if not pairs:
        lines.append(f"\nMean ± {CONFIDENCE:.0%} confidence interval (Student t) over the runs of each line.")
        return "\n".join(lines)
    notes = []
    for metric in metrics:
        values = {" / ".join(map(str, key)) or "all": [m.get(metric) for m in members] for key, members in items}
        for lo, hi, p in significant_differences(values):
            notes.append(f"- `{metric}`: {lo} < {hi} (p = {p:.2g})")
    tested = any(len(numbers(m.get(metric) for m in members)) >= 2 for metric in metrics for _, members in items)
    lines.append("")
    lines.append(f"Mean ± {CONFIDENCE:.0%} confidence interval (Student t) over the runs of each line. "
                 + ("Significant differences (Welch's t-test, Holm-corrected per metric, p < 0.05):" if notes else
                    "No difference is significant (Welch's t-test, Holm-corrected per metric, p < 0.05)."
                    if tested else "Every line is one seed: no difference can be tested."))
    return "\n".join(lines + notes)


def plot(rows: list[dict], x: str, y: str, path: str | Path, group_by: str | list[str] | None = None,
         log_x: bool = False) -> None:
    """Save a PNG of metric ``y`` against ``x`` (one line per value of the ``group_by`` column or
    columns; ``x`` on a log axis with ``log_x``): the mean over the runs at each point (e.g. seeds)
    with its 95% confidence interval as error bars (points of one run have none); runs without
    ``y`` are not drawn."""
    keys = [group_by] if isinstance(group_by, str) else list(group_by or [])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict = {}
    for r in rows:
        if is_number(r.get(x)) and is_number(r.get(y)):
            label = " ".join(f"{k}={r.get(k)}" for k in keys) if keys else y
            series.setdefault(label, {}).setdefault(r[x], []).append(r[y])
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, points in sorted(series.items(), key=lambda kv: str(kv[0])):
        xs = sorted(points)
        stats = [summarize(points[v]) for v in xs]
        ax.errorbar(xs, [s.mean for s in stats], yerr=[s.half_width or 0.0 for s in stats], marker="o", capsize=3,
                    label=str(label))
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel(f"{y} (mean, 95% CI)")
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=7)
    fig.tight_layout()
    write_figure(Path(path), fig)
    plt.close(fig)


def bar_plot(rows: list[dict], label: str, metrics: list[str], path: str | Path) -> None:
    """Save a PNG with one bar chart per metric, one bar per value of column ``label`` (the mean
    over its runs, 95% CI error bars when there are several); a missing value is marked "n/a",
    never drawn as a bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(str(r.get(label)) for r in rows))
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.5), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        stats = [summarize([r.get(metric) for r in rows if str(r.get(label)) == name]) for name in names]
        for i, st in enumerate(stats):
            if st is None:
                ax.text(i, 0, "n/a", ha="center", va="bottom", fontsize=8, color="tab:red")
            else:
                ax.bar(i, st.mean, yerr=st.half_width or 0.0, capsize=3, color="tab:blue")
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(metric, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    write_figure(Path(path), fig)
    plt.close(fig)


def load_paper_numbers(path: str | Path | None = None) -> dict:
    """The paper's numbers (``experiments/paper_numbers.json``: its tables, and values read off its
    figures marked approximate) for the notebooks, labelled as the paper's there."""
    if path is None:  # experiments/paper_numbers.json (installed: microdit/experiments/)
        return json.loads(resources.files("microdit.experiments").joinpath("paper_numbers.json").read_text())
    return json.loads(Path(path).read_text())


def select(rows: list[dict], *groups: str) -> list[dict]:
    """Rows of the runs whose ``trainer.group`` (the sweep key every experiment sets) is one of
    ``groups``, e.g. ``select(rows, "fig4", "fig4-cpu")``."""
    return [r for r in rows if r.get("trainer.group") in groups]


def budget_table(rows: list[dict], metric: str, arm: str = "arm", budget: str = "budget",
                 chance: str | None = None) -> str:
    """Markdown grid of one metric: a line per arm, a column per budget (FLOPs), each cell the mean
    ± 95% CI over the seeds (n); with ``chance`` (a column of the same rows, e.g. the shuffled-prompt
    accuracy) a last line of that column per budget, over every arm's runs."""
    budgets = sorted({r[budget] for r in rows if is_number(r.get(budget))})
    arms = list(dict.fromkeys(r[arm] for r in rows if r.get(arm) is not None))
    head = " | ".join(f"{budget_tag(b)} FLOPs" for b in budgets)
    lines = [f"| {metric.removeprefix('eval.heldout.')} | {head} |", "|---|" + "---|" * len(budgets)]
    for name in arms:
        cells = [str(summarize([r.get(metric) for r in rows if r[arm] == name and r[budget] == b]) or "–")
                 for b in budgets]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if chance is not None:
        cells = [str(summarize([r.get(chance) for r in rows if r[budget] == b]) or "–") for b in budgets]
        lines.append("| chance (shuffled prompts, all arms) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def trend_table(rows: list[dict], contrasts: list[str], metrics: list[str], arm: str = "arm",
                budget: str = "budget") -> str:
    """Markdown table of how each contrast's paired gap B − A moves with compute
    (:func:`microdit.eval.trend.gap_trend`: least squares over every seed's difference against
    log10 FLOPs), per metric: the slope per 10x compute with its CI and p, the fitted gap at the
    smallest and largest budget, and where the fitted gap crosses zero, with Fieller's interval."""
    from microdit.eval.trend import describe, gap_trend, paired_gaps

    lines = ["| contrast | metric | n | gap per 10x FLOPs (95% CI) | p (slope) | fitted gap: smallest → largest budget "
             "| zero crossing |", "|---|---|---|---|---|---|---|"]
    for contrast in contrasts:
        a, _, b = contrast.partition(" vs ")
        for metric in metrics:
            points = paired_gaps(rows, a, b, metric, budget=budget, arm=arm)
            fit = gap_trend(points)
            if fit is None:
                continue
            low, high = min(x for x, _ in points), max(x for x, _ in points)
            lo, hi = fit.slope_ci
            lines.append(f"| {contrast} | {metric.removeprefix('eval.heldout.')} | {fit.n} | {fit.slope:.3g} "
                         f"[{lo:.3g}, {hi:.3g}] | {fit.slope_p:.2g} | {fit.gap_at(low):.3g} → {fit.gap_at(high):.3g} "
                         f"| {describe(fit, low, high)} |")
    lines.append("\nGap = B − A per seed (paired), fitted linearly against log10 FLOPs over every seed's difference; "
                 "intervals are 95% (t, n − 2 df); the crossing's interval is Fieller's.")
    return "\n".join(lines)


def contrast_table(rows: list[dict], contrasts: list[str], metrics: list[str], margins: dict | None = None,
                   arm: str = "trainer.name", stage: str = "after", pair: str = "trainer.seed") -> str:
    """Markdown table of planned contrasts ``"A vs B"`` (values of column ``arm``), each at every
    value of ``stage`` both arms have, for each of ``metrics``: the paired difference B − A (runs
    paired by ``pair``, the seed) with its 95% CI and n, the effect size dz, the paired-t p and its
    Holm-adjusted value over every test of this table (the declared family: these contrasts ×
    these metrics, nothing else), and with a ``margins[metric]`` the TOST equivalence p."""
    margins = margins or {}
    tests = []
    for contrast in contrasts:
        a, sep, b = contrast.partition(" vs ")
        if not sep:
            raise ValueError(f"contrast {contrast!r}: expected 'ARM vs ARM'")
        for after in dict.fromkeys(r.get(stage) for r in rows if r.get(arm) == a):
            for metric in metrics:
                side = {name: {r.get(pair): r.get(metric) for r in rows if r.get(arm) == name and r.get(stage) == after}
                        for name in (a, b)}
                short = metric.removeprefix("eval.heldout.")
                result = paired_contrast(side[a], side[b], margins.get(short, margins.get(metric)))
                if result is not None:
                    tests.append((contrast, after, short, result))
    adjusted = holm([t[3].p for t in tests if t[3].p is not None])
    lines = [f"| contrast | {stage} | metric | Δ (B − A), 95% CI | dz | p | p (Holm) | equivalence (TOST) |",
             "|---|---|---|---|---|---|---|---|"]
    it = iter(adjusted)
    for contrast, after, metric, r in tests:
        holm_p = next(it) if r.p is not None else None
        tost = "–" if r.margin is None or r.tost_p is None else f"±{r.margin:g}: p = {r.tost_p:.2g}"
        where = "–" if after is None else after
        lines.append(f"| {contrast} | {where} | {metric} | {r.delta} | {'–' if r.dz is None else f'{r.dz:.2f}'} | "
                     f"{'–' if r.p is None else f'{r.p:.2g}'} | {'–' if holm_p is None else f'{holm_p:.2g}'} | "
                     f"{tost} |")
    family = (f"Holm over the {len(adjusted)} tests of this table" if adjusted else "no test: " + (
        "one pair of runs per contrast (one seed), and a paired test needs two" if all(t[3].delta.n < 2 for t in tests)
        else "no paired difference varies"))
    lines.append(f"\nPlanned contrasts only; {family}. Runs are paired by {pair}. Equivalence is claimed only where "
                 f"TOST gives p < {ALPHA} at the stated margin.")
    return "\n".join(lines)
