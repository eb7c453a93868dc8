"""The docs' generated result tables equal what their committed CSVs give (tools/doc_tables.py)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tools" / "doc_tables.py"


def test_generated_tables_match_their_csvs():
    result = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_a_hand_edited_table_is_caught(tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("doc_tables", SCRIPT)
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    doc = tmp_path / "README.md"
    text = (ROOT / "experiments" / "README.md").read_text()
    doc.write_text(text.replace("| equal FLOPs | naive 75% | pretrain | 20.0k |", "| equal FLOPs | naive 75% | "
                                "pretrain | 21.0k |"))
    monkeypatch.setattr(tables, "DOCS", [doc])
    monkeypatch.setattr(tables, "ROOT", tmp_path)
    assert tables.main(["--check"]) == 1
    assert tables.main([]) == 0 and doc.read_text() == text  # regenerated from the CSV
    assert "<!-- table: study-t256 -->" in text


def test_no_result_is_typed_by_hand_outside_the_generated_tables():
    """A result in the docs (a mean ± CI, a p-value) sits in a generated table, never in prose."""
    import importlib.util
    import re

    spec = importlib.util.spec_from_file_location("doc_tables", SCRIPT)
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    typed = re.compile(r"\d ± \d|\bp = 0\.0|\bp < 0\.0\d")
    for doc in tables.DOCS:
        prose = tables.BLOCK.sub("", doc.read_text())
        hits = [line for line in prose.splitlines() if typed.search(line)]
        assert not hits, f"{doc.name}: results typed outside a generated table: {hits}"


def _rows(table: str) -> list[dict]:
    """The rows of a generated markdown table (its first block of | lines) as dicts by header."""
    lines = [line for line in table.splitlines() if line.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(head, (c.strip() for c in line.strip("|").split("|")), strict=True)) for line in lines[2:]]


def test_the_main_jobs_reading_holds_on_both_machines():
    """experiments/README.md's reading of the main job, checked against each committed run of it (the
    development machine's and another CPU's): the other CPU's arm means each within the development
    machine's 95% interval; every arm above its own chance in shape and colour;
    of the arm-vs-arm contrasts only naive vs deferred in shape survives Holm; at equal steps the two
    are equivalent within the margin in shape and colour (TOST)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("doc_tables", SCRIPT)
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    from microdit.eval.stats import summarize

    dev, other = tables.job_fixture("main"), tables.job_fixture("main_avx2")
    for arm in {r["trainer.name"] for r in dev}:
        for column in ("probe_acc.shape", "probe_acc.colour", "probe_chance.shape", "probe_chance.colour",
                       "probe_fd", "probe_kid", "probe_fd_real", "probe_kid_real"):
            column = f"eval.heldout.{column}"
            a = summarize([r[column] for r in dev if r["trainer.name"] == arm])
            b = summarize([r[column] for r in other if r["trainer.name"] == arm])
            assert abs(b.mean - a.mean) <= a.half_width, (arm, column, a, b)
    for fixture in ("main", "main_avx2"):
        chance = _rows(tables.chance("main", tables.job_fixture(fixture)))
        assert len(chance) == 6 and all(float(r["p (Holm)"]) < 0.05 for r in chance), (fixture, chance)
        contrasts = _rows(tables.job_contrasts("main", fixture))
        survive = [(r["contrast"], r["metric"]) for r in contrasts if float(r["p (Holm)"]) < 0.05]
        assert survive == [("cpu-naive75 vs cpu-deferred75", "probe_acc.shape")], (fixture, survive)
        for r in contrasts:
            if r["contrast"] == "cpu-naive75-eqsteps vs cpu-deferred75" and r["metric"].startswith("probe_acc"):
                assert float(r["equivalence (TOST)"].split("p = ")[1]) < 0.05, (fixture, r)


def test_the_one_object_studys_reading_holds_on_its_csv():
    """experiments/README.md's reading of the one-object study (section 4 and "Reading"), checked
    against its committed runs: colour above its own chance after Holm in every arm and stage but
    `none` before the fine-tune; shape so only for naive at equal FLOPs; of the arm-vs-arm contrasts
    only two probe_fd ones survive Holm, one on each side of the fine-tune; naive's shape lead over
    deferred has an interval that excludes zero, their colour is equivalent (TOST); no equal-images
    contrast is decided either way; the means follow the images seen; the fine-tune lowers every
    arm's mean probe_fd."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("doc_tables", SCRIPT)
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    job = "masking_study_one_object"

    def delta(cell: str) -> tuple[float, float]:
        mean, rest = cell.split(" ± ")
        return float(mean), float(rest.split()[0])

    chance = _rows(tables.chance(job, tables.study_rows(job)))
    held = {(r["contrast"].split()[0], r["after"], r["metric"]) for r in chance if float(r["p (Holm)"]) < 0.05}
    colour = {(r["contrast"].split()[0], r["after"]) for r in chance if r["metric"] == "probe_acc.colour"}
    assert {(a, s) for a, s, m in held if m == "probe_acc.colour"} == colour - {("cpu-none", "pretrain")}
    assert {(a, s) for a, s, m in held if m == "probe_acc.shape"} == {("cpu-naive75", "pretrain"),
                                                                       ("cpu-naive75", "finetune")}
    assert all(delta(r["Δ (B − A), 95% CI"])[0] > 0 for r in chance if r["metric"] == "probe_acc.shape")
    contrasts = _rows(tables.study_contrasts(job, ("colour", "shape")))
    survive = {(r["contrast"], r["after"], r["metric"]) for r in contrasts if float(r["p (Holm)"]) < 0.05}
    assert survive == {("cpu-naive75 vs cpu-deferred75", "pretrain", "probe_fd"),
                       ("cpu-none vs cpu-naive75", "finetune", "probe_fd")}
    for r in contrasts:
        if r["contrast"] == "cpu-naive75 vs cpu-deferred75" and r["metric"] == "probe_acc.shape":
            mean, half = delta(r["Δ (B − A), 95% CI"])
            assert mean + half < 0, r  # deferred below naive, the interval excludes zero
        if r["contrast"] == "cpu-naive75 vs cpu-deferred75" and r["metric"] == "probe_acc.colour":
            assert float(r["equivalence (TOST)"].split("p = ")[1]) < 0.05, r
        if r["contrast"].endswith("-eqimg") and r["equivalence (TOST)"] != "–":
            assert float(r["equivalence (TOST)"].split("p = ")[1]) >= 0.05, r
    table = _rows(tables.study_table(job, ("colour", "shape")))
    means = {(r["variant"], r["compared at"], r["after"]): r for r in table}
    for after in ("pretrain", "finetune"):
        arms = [means[(v, "equal FLOPs", after)] for v in ("naive 75%", "deferred 75%", "none")]
        for column, sign in (("shape", -1), ("probe_fd", 1)):
            values = [sign * delta(r[column])[0] for r in arms]
            assert values == sorted(values), (after, column, values)  # naive, then deferred, then none
    for variant in ("none", "naive 75%", "deferred 75%"):
        fd = [delta(means[(variant, "equal FLOPs", a)]["probe_fd"])[0] for a in ("pretrain", "finetune")]
        assert fd[1] < fd[0], (variant, fd)
    none = delta(means[("none", "equal FLOPs", "pretrain")]["probe_fd"])[0]
    assert all(delta(means[(v, "equal images", "pretrain")]["probe_fd"])[0] > none
               for v in ("naive 75%", "deferred 75%"))  # masking's cost at equal images, in the means
    rows = tables.study_rows(job)
    for after in ("pretrain", "finetune"):
        fd = {(r["trainer.name"], r["trainer.seed"]): r["eval.heldout.probe_fd"] for r in rows if r["after"] == after}
        assert all(fd[("cpu-naive75", s)] < fd[("cpu-deferred75", s)] for s in (0, 1, 2)), (after, fd)
