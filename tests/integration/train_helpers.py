"""Helpers for the trainer tests: compose configs like microdit-train does, run it in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from microdit.experiment import compose_config  # noqa: F401  (re-exported for the tests)

# The default protocol's stage 'pretrain' shortened and masked at 0.5, then an unmasked 'finetune' stage.
TWO_STAGES = "+stages={pretrain: {mask: {ratio: 0.5}, images: 64, lr: 0.001, warmup_images: 16}," \
             "finetune: {mask: {ratio: 0.0}, images: 32, lr: 0.0005, schedule: constant}}"


def base_overrides(tmp: Path, data: Path, name: str, stages: list[str] | None = None) -> list[str]:
    """A tiny, fast run: nano with 2 blocks, batch 8, every step logged, no wandb, no bar; the
    stages of ``TWO_STAGES`` unless ``stages`` (overrides) are given."""
    return [f"trainer.run_dir={tmp / 'runs'}", f"trainer.name={name}", f"data.folders=[{data}]", "data.prepare=none",
            "trainer.batch_size=8", "trainer.log_every_images=8", "trainer.progress=false", "trainer.wandb=disabled",
            "model.overrides.depth=2", "trainer.threads=1", *([TWO_STAGES] if stages is None else stages)]


def run_train(overrides: list[str], nproc: int = 1, check: bool = True, **popen) -> subprocess.CompletedProcess:
    """Run microdit-train (1 process, or ``nproc`` gloo processes through torchrun) and wait."""
    if nproc == 1:
        cmd = [sys.executable, "-m", "microdit.cli.train", *overrides]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "microdit.cli.train", *overrides]
    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, **popen)
    if check and result.returncode != 0:
        raise AssertionError(f"microdit-train failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def stats(run: Path) -> list[dict]:
    """Rows of a run's stats.jsonl."""
    return [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines() if line.strip()]


def wait_for_rows(run: Path, nimg: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Wait until the run has logged ``nimg`` images (it must still be running)."""
    start = time.time()
    while time.time() - start < timeout:
        if (run / "stats.jsonl").exists() and any(r["nimg"] >= nimg for r in stats(run)):
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended early: {proc.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError("run made no progress")


def popen_train(overrides: list[str]) -> subprocess.Popen:
    """Start microdit-train in the background (one process, one thread)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "microdit.cli.train", *overrides], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
