"""Results: run folders -> results.csv round trip, grouped tables, plots, selection by sweep group."""

import json
import re
from pathlib import Path

import pytest

from microdit.eval import record_metrics
from microdit.eval.results import collect, flatten, markdown_table, plot, read_csv, select, write_csv


def _fake_run(root: Path, name: str, ratio: float, seed: int, fd: float, group: str = "sweep") -> None:
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(f"trainer:\n  name: {name}\n  group: {group}\n  seed: {seed}\n"
                                     f"stages:\n  pretrain:\n    mask:\n      ratio: {ratio}\n")
    (run / "summary.json").write_text(json.dumps({"flops": 1e12, "dollars": 0.5}))
    record_metrics(run, {"name": "ev", "nimg": 10, "ema": False, "sampler": {}, "num_samples": 4, "seed": 0,
                         "metrics": {"probe_fd": fd, "probe_acc": {"shape": 0.25}}})


def test_results_csv_round_trip_and_tables(tmp_path):
    for i, (ratio, seed, fd) in enumerate([(0.0, 0, 1.0), (0.0, 1, 3.0), (0.75, 0, 5.0)]):
        _fake_run(tmp_path / "runs", f"r{i}", ratio, seed, fd)
    rows = collect([tmp_path / "runs"])
    assert rows[0]["stages.pretrain.mask.ratio"] == 0.0 and rows[0]["eval.ev.probe_acc.shape"] == 0.25
    assert rows[2]["cost.flops"] == 1e12
    write_csv(rows, tmp_path / "results.csv")
    assert read_csv(tmp_path / "results.csv") == rows
    table = markdown_table(rows, ["stages.pretrain.mask.ratio"], ["eval.ev.probe_fd"])
    assert "| 0.0 | 2 ± 13 (n=2) | 2 |" in table and "| 0.75 | 5 (one seed) | 1 |" in table  # t(0.975, 1) = 12.7
    assert "95% confidence interval (Student t)" in table and "No difference is significant" in table
    plot(rows, "stages.pretrain.mask.ratio", "eval.ev.probe_fd", tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 1000
    assert flatten({"a": {"b": [1, 2]}, "c": [{"d": 1}]}) == {"a.b": [1, 2], "c.0.d": 1}



def test_a_missing_results_table_says_what_writes_it(tmp_path, monkeypatch):
    """A notebook run before its table exists: the path as given and where it leads, and the command."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    for given, why in (("../runs/results.csv", "does not exist"), ("runs", "is a folder, not a file")):
        with pytest.raises(FileNotFoundError, match=re.escape(f"results table {given} ({(tmp_path / given).resolve()}) "
                                                              f"{why}: microdit-results RUNS --out FILE writes one")):
            read_csv(given)


def test_select_by_sweep_group_not_by_name_prefix(tmp_path):
    _fake_run(tmp_path, "fig4-a", 0.5, 0, 1.0, group="fig4")
    _fake_run(tmp_path, "fig4-cpu-a", 0.5, 0, 1.0, group="fig4-cpu")
    _fake_run(tmp_path, "fig4x", 0.5, 0, 1.0, group="other")
    rows = collect([tmp_path])
    assert [r["run"] for r in select(rows, "fig4")] == ["fig4-a"]
    assert [r["run"] for r in select(rows, "fig4", "fig4-cpu")] == ["fig4-a", "fig4-cpu-a"]
