"""microdit.host_memory: a CPU process keeps the memory it frees (glibc), unless the user's
environment says otherwise."""

import os
import platform
import subprocess
import sys

import pytest

from microdit import host_memory
from microdit.host_memory import keep_freed_memory

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Page faults per training step of nano (batch 32, unmasked), after two: the pages a step pays
# for when the memory its activations had comes back fresh from the OS.
FAULTS = """
import sys, torch
from microdit.host_memory import keep_freed_memory
from microdit.perf.bench_step import StepCase
from microdit.perf.timing import fresh_pages
status = keep_freed_memory() if sys.argv[1] == "keep" else "defaults"
torch.set_num_threads(1)
step = StepCase("nano", batch=32)
step(), step()
print(status, fresh_pages(step, repeats=3))
"""


def _faults(arm: str) -> tuple[str, float]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", "LD_PRELOAD")}  # glibc's defaults
    out = subprocess.run([sys.executable, "-c", FAULTS, arm], capture_output=True, text=True, env=env, check=True)
    status, faults = out.stdout.split()
    return status, float(faults)


@pytest.mark.skipif(not GLIBC, reason="the setting is glibc's")
def test_a_training_step_reuses_the_last_ones_pages():
    """Under glibc's defaults a step's pages come back fresh from the OS (measured: 17k-25k faults
    a step), though not in every process (85 once, in CI; glibc's dynamic mmap threshold, which
    keeps a freed block's size in the heap, is the likely cause, not shown): up to three fresh
    processes for one that refaults; kept, a step faults 10x less than it."""
    for _ in range(3):
        status, default = _faults("defaults")
        if default >= 5000:
            break
    assert status == "defaults" and default >= 5000
    status, kept = _faults("keep")
    assert status == "kept" and kept * 10 < default


@pytest.mark.parametrize("environ, named", [
    ({"MALLOC_TRIM_THRESHOLD_": "0"}, "MALLOC_TRIM_THRESHOLD_"),
    ({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=4096"}, "GLIBC_TUNABLES"),
    ({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"}, "LD_PRELOAD"),
])
def test_the_users_allocator_settings_win(monkeypatch, environ, named):
    def untouched(*args, **kwargs):
        raise AssertionError("mallopt was called")

    monkeypatch.setattr(host_memory.ctypes, "CDLL", untouched)
    status = keep_freed_memory("cpu", environ)
    assert status.startswith("left to") and named in status


def test_another_c_library_is_left_alone(monkeypatch):
    monkeypatch.setattr(host_memory.platform, "libc_ver", lambda: ("", ""))
    monkeypatch.setattr(host_memory.ctypes, "CDLL", lambda *a: pytest.fail("mallopt was called"))
    assert keep_freed_memory("cpu", {}) == "unchanged (the C library is not glibc)"


def test_a_gpu_run_is_left_alone(monkeypatch):
    monkeypatch.setattr(host_memory.ctypes, "CDLL", lambda *a: pytest.fail("mallopt was called"))
    assert keep_freed_memory("cuda:0", {}) == "unchanged (a cuda run)"
