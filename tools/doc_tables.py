"""Regenerate the result tables of the docs from committed CSVs, or check that they match.

    python tools/doc_tables.py           # rewrite every generated table in place
    python tools/doc_tables.py --check   # exit 1 naming each table whose text differs from its CSV

A table in ``README.md`` or ``experiments/README.md`` between ``<!-- table: NAME -->`` and
``<!-- /table -->`` is the output of ``TABLES[NAME]`` on its CSV (``tests/fixtures/masking_study.csv``
holds the CPU masking study's runs, made by ``tests/fixtures/make_study_results.py`` from the
jobs' results.csv; ``tests/fixtures/JOB_job.csv`` a job's, made by
``tests/fixtures/make_job_results.py``): mean ± 95% CI over the seeds with n, as
``microdit-results`` prints them. The tests run ``--check``, so a table can not drift from its data.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from microdit.eval.results import contrast_table, read_csv
from microdit.eval.stats import summarize
from microdit.pipeline import compose_job

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "experiments" / "README.md"]
STUDY = ROOT / "tests" / "fixtures" / "masking_study.csv"
FIXTURES = ROOT / "tests" / "fixtures"
BLOCK = re.compile(r"(<!-- table: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)
ACCURACIES = ("colour", "shape", "position")


def _arm(name: str) -> tuple[str, str]:
    """("compared at", "variant") of a study run's trainer.name."""
    at = "equal images" if name.endswith("-eqimg") else "equal FLOPs"
    variant = name.replace("t256-", "").replace("cpu-", "").replace("-eqimg", "")
    return at, {"none": "none", "naive75": "naive 75%", "deferred75": "deferred 75%"}[variant]


def study_rows(spec: str) -> list[dict]:
    """The rows of the study job file ``spec`` in the masking study's CSV: its ``job`` column is
    the name of the job's ``report.out`` folder (``masking_study`` -> ``study``)."""
    tag = Path(compose_job(spec).report.out).name
    return [r for r in read_csv(STUDY) if r["job"] == tag]


def job_fixture(name: str) -> list[dict]:
    """The rows of job ``name`` in ``tests/fixtures/NAME_job.csv``."""
    return read_csv(FIXTURES / f"{name}_job.csv")


def study_table(spec: str, accuracies: tuple[str, ...] = ACCURACIES) -> str:
    """One line per arm and evaluated stage of the study job ``spec``: images and GFLOPs to that
    stage's end, ``probe_fd`` and the accuracies, each as mean ± 95% CI over the seeds (n)."""
    rows = study_rows(spec)
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((*_arm(r["trainer.name"]), r["after"]), []).append(r)
    head = ["compared at", "variant", "after", "images", "GFLOPs", "probe_fd", *accuracies]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (at, variant, after), members in groups.items():
        images = summarize([m["cost.images"] for m in members]).mean
        gflops = summarize([m["cost.flops"] for m in members]).mean / 1e9
        cells = [at, variant, after, f"{images / 1000:.1f}k", f"{gflops:,.0f}",
                 str(summarize([m["eval.heldout.probe_fd"] for m in members]))]
        cells += [str(summarize([m.get(f"eval.heldout.probe_acc.{a}") for m in members]) or "–") for a in accuracies]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def study_contrasts(spec: str, accuracies: tuple[str, ...] = ACCURACIES) -> str:
    """The planned contrasts the job file ``spec`` declares (``report.contrasts``, its margins), on
    its rows: paired by seed, Holm over this table's tests (``microdit.eval.results.contrast_table``)."""
    report = compose_job(spec).report
    metrics = ["eval.heldout.probe_fd", *(f"eval.heldout.probe_acc.{a}" for a in accuracies)]
    return contrast_table(study_rows(spec), report.contrasts, metrics,
                          dict(report.margins)) + "\n"


def chance(spec: str, rows: list[dict]) -> str:
    """Each arm of ``rows`` against its own shuffled-prompt chance, as the job file ``spec`` prints
    it (its report columns; :func:`microdit.eval.job_rows.chance_table`)."""
    from microdit.eval.job_rows import chance_table

    return chance_table(rows, compose_job(spec).report.heldout_columns) + "\n"


def job_table(name: str, fixture: str | None = None) -> str:
    """Job ``name``'s table as ``microdit-cpu-ablation`` prints it, from ``tests/fixtures/NAME_job.csv``
    (or ``FIXTURE_job.csv``, another run of it): a row per arm (mean ± 95% CI over the seeds), the
    real-vs-real and shuffled-prompt chance rows."""
    from microdit.eval.job_rows import reference_rows
    from microdit.eval.results import markdown_table

    rows, columns = job_fixture(fixture or name), compose_job(name).report.heldout_columns
    return markdown_table(rows + reference_rows(rows, columns), ["trainer.name", "after"],
                          columns + ["cost.images", "cost.flops"], sort=False, pairs=False) + "\n"


def job_contrasts(name: str, fixture: str | None = None) -> str:
    """Job ``name``'s planned contrasts as it prints them, from ``tests/fixtures/NAME_job.csv`` (or
    ``FIXTURE_job.csv``)."""
    report = compose_job(name).report
    return contrast_table(job_fixture(fixture or name), report.contrasts, report.heldout_columns,
                          dict(report.margins)) + "\n"


def crossover_table(name: str) -> str:
    """Crossover job ``name`` from ``tests/fixtures/NAME_job.csv``: named-shape accuracy per arm and
    budget against the shuffled-prompt chance, probe_fd likewise, and the trend of each planned
    contrast's gap with compute and its zero crossing (``microdit.eval.results.trend_table``)."""
    from microdit.eval.results import budget_table, trend_table

    rows, shape = job_fixture(name), "eval.heldout.probe_acc.shape"
    return (budget_table(rows, shape, chance="eval.heldout.probe_chance.shape") + "\n\n"
            + budget_table(rows, "eval.heldout.probe_fd") + "\n\n"
            + trend_table(rows, compose_job(name).report.contrasts, [shape, "eval.heldout.probe_fd"]) + "\n")


def crossover_summary() -> str:
    """One generated sentence per scene and contrast: the shape-accuracy gap's slope per 10x
    compute with its CI, its fitted value at the smallest and largest budget, and the crossing."""
    from microdit.eval.trend import budget_tag, describe, gap_trend, paired_gaps

    lines = []
    for name, scene in (("crossover", "64 tokens"), ("crossover_t256", "256 tokens")):
        rows = job_fixture(name)
        for contrast in compose_job(name).report.contrasts:
            a, _, b = contrast.partition(" vs ")
            points = paired_gaps(rows, a, b, "eval.heldout.probe_acc.shape")
            fit = gap_trend(points)
            low, high = min(x for x, _ in points), max(x for x, _ in points)
            at_low, at_high = budget_tag(10**low), budget_tag(10**high)
            lines.append(f"- {scene}, shape accuracy {b} − {a}: {fit.gap_at(low):+.3f} at {at_low} FLOPs → "
                         f"{fit.gap_at(high):+.3f} at {at_high} (fitted; {fit.slope:+.3f} per 10x compute, "
                         f"95% CI [{fit.slope_ci[0]:+.3f}, {fit.slope_ci[1]:+.3f}], n = {fit.n} seeds x budgets); "
                         f"{describe(fit, low, high)}.")
    return "\n".join(lines) + "\n"


TABLES = {
    "main-job": lambda: job_table("main"),
    "main-job-contrasts": lambda: job_contrasts("main"),
    "main-job-chance": lambda: chance("main", job_fixture("main")),
    "main-job-avx2": lambda: job_table("main", "main_avx2") + "\n" + job_contrasts("main", "main_avx2"),
    "main-job-avx2-chance": lambda: chance("main", job_fixture("main_avx2")),
    "images-vs-steps": lambda: job_table("images_vs_steps") + "\n" + job_contrasts("images_vs_steps"),
    "images-vs-steps-chance": lambda: chance("images_vs_steps", job_fixture("images_vs_steps")),
    "crossover-64": lambda: crossover_table("crossover"),
    "crossover-t256": lambda: crossover_table("crossover_t256"),
    "crossover-summary": crossover_summary,
    "study-64": lambda: study_table("masking_study"),
    "study-t256": lambda: study_table("masking_study_t256"),
    "study-one-object": lambda: study_table("masking_study_one_object", ("colour", "shape")),
    "contrasts-64": lambda: study_contrasts("masking_study"),
    "contrasts-t256": lambda: study_contrasts("masking_study_t256"),
    "contrasts-one-object": lambda: study_contrasts("masking_study_one_object", ("colour", "shape")),
    "chance-64": lambda: chance("masking_study", study_rows("masking_study")),
    "chance-t256": lambda: chance("masking_study_t256", study_rows("masking_study_t256")),
    "chance-one-object": lambda: chance("masking_study_one_object", study_rows("masking_study_one_object")),
}


def render(text: str, where: Path) -> str:
    """``text`` with every generated table replaced by its current output."""
    def table(match: re.Match) -> str:
        name = match["name"]
        if name not in TABLES:
            raise SystemExit(f"{where}: unknown generated table {name!r}; known: {sorted(TABLES)}")
        return match.group(1) + TABLES[name]() + match.group(4)

    return BLOCK.sub(table, text)


def main(argv: list[str] | None = None) -> int:
    """Entry point: rewrite the docs' generated tables, or with ``--check`` report the stale ones."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if a table differs from its CSV")
    args = parser.parse_args(argv)
    stale = []
    for doc in DOCS:
        text = doc.read_text()
        new = render(text, doc)
        if new != text:
            stale += [f"{doc.relative_to(ROOT)}: {m['name']}" for m, n in zip(BLOCK.finditer(text),
                                                                                 BLOCK.finditer(new), strict=True)
                      if m["body"] != n["body"]]
            if not args.check:
                doc.write_text(new)
    if stale and args.check:
        print("tables that differ from their CSV (run python tools/doc_tables.py): " + ", ".join(stale),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
