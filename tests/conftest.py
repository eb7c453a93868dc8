"""Shared fixtures: deterministic seeds, the reference key lists."""

from __future__ import annotations

import ast
import json
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


# A CLIP of the real open_clip classes, small enough to build in a test (random weights).
SMALL_CLIP = {"embed_dim": 32, "quick_gelu": True,
              "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
              "text_cfg": {"context_length": 20, "vocab_size": 49408, "width": 48, "heads": 4, "layers": 2}}


@pytest.fixture(scope="session")
def small_clip_arch(tmp_path_factory) -> str:
    """Register SMALL_CLIP with open_clip and return its architecture name."""
    import open_clip

    folder = tmp_path_factory.mktemp("clip_cfg")
    (folder / "microdit-test-tiny.json").write_text(json.dumps(SMALL_CLIP))
    open_clip.add_model_config(folder)
    return "microdit-test-tiny"
