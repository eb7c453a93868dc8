"""Shared fixtures: deterministic seeds, the reference key lists."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

FIXTURE_DIR = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def reference_shapes(preset: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the reference implementation's state dict for ``preset`` (from the TSV fixture)."""
    shapes = {}
    for line in (FIXTURE_DIR / f"{preset}.tsv").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape = line.split("\t")
        shapes[key] = tuple(ast.literal_eval(shape))
    return shapes
