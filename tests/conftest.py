"""Shared fixtures: deterministic seeds, the reference key lists."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

FIXTURE_DIR = Path(__file__).resolve().parent / "fixtures"


def fixture_script(name: str):
    """A fixture-making script of ``tests/fixtures/`` (``make_source_fixtures``) as a module."""
    spec = importlib.util.spec_from_file_location(name, FIXTURE_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pytest_configure(config):
    """Under pytest-xdist (``-n auto``: one test process per core), each test process computes on its
    share of the machine's threads, so that the processes do not make each other's OpenMP threads wait."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        torch.set_num_threads(max(1, torch.get_num_threads() // workers))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def run_together(code: str, argvs: list[list[str]], timeout: float = 300) -> list[str]:
    """Start one ``python -c code ARGV...`` per entry of ``argvs`` at once (processes that meet on
    one folder, as a sweep's points do), wait for all; each must exit 0. Returns their stderr."""
    procs = [subprocess.Popen([sys.executable, "-c", code, *argv], stderr=subprocess.PIPE, text=True)
             for argv in argvs]
    errors = [proc.communicate(timeout=timeout)[1] for proc in procs]
    for proc, err in zip(procs, errors, strict=True):
        assert proc.returncode == 0, err[-3000:]
    return errors


@pytest.fixture
def lock_holder():
    """``hold(path)`` starts another process that takes the microdit lock file ``path`` and holds
    it until the test ends; returns that process."""
    procs = []

    def hold(path: Path) -> subprocess.Popen:
        code = ("import sys, time; from microdit.locks import acquire; "
                "acquire(sys.argv[1], 'a test', wait=False); print('held', flush=True); time.sleep(600)")
        proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "held"
        return proc

    yield hold
    for proc in procs:
        proc.kill()
        proc.wait()


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
