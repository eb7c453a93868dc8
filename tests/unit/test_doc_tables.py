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
