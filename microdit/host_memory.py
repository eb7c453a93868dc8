"""CPU runs keep the memory they free (glibc), so that each training step reuses the last one's pages.

glibc's malloc gives large freed blocks back to the operating system: a block above its mmap
threshold is unmapped on free, and free space above the trim threshold at the top of the heap is
returned. A training step frees its activations at the end and asks for the same sizes again at the
start of the next, so every page of them comes back fresh from the kernel, which zeroes it on first
touch (a minor page fault). Measured by ``microdit-bench --quick`` on the project's 2-core
development machine (each case in fresh processes, batch 32, two runs of 2 rounds each): with
glibc's defaults the eight CPU cases (nano and micro, training and sampling, mask ratio 0 and 0.75)
fault 1.3k-60k pages per step; with the thresholds raised to 1 GiB, 0-600, and each step takes
0.78-0.97x its time (unmasked steps gain most); ``microdit-bench`` measures it side by side on
the machine it runs on (its "freed memory" table). The price: the process keeps its peak resident
memory until it exits, which a training step reaches every step anyway (nano, batch 32, 400
unmasked steps: 998 MiB resident at the end, against a 992 MiB peak with glibc's defaults).

:func:`keep_freed_memory` is called on CPU runs by the trainer, ``microdit-eval``,
``microdit-sample`` and ``microdit-bench``; on a GPU run the host's memory is not on the step's
path, and nothing changes. It changes nothing either where the C library is not glibc, where
glibc's allocator is replaced (``LD_PRELOAD`` of jemalloc, tcmalloc or mimalloc) and where the
user set glibc's own malloc settings (``GLIBC_TUNABLES`` with a ``glibc.malloc`` tunable, or
``MALLOC_*`` variables such as ``MALLOC_TRIM_THRESHOLD_``): those win.
"""

from __future__ import annotations

import ctypes
import os
import platform

import torch

# Blocks up to 1 GiB come from the heap and are reused (a glibc that refuses 1 GiB accepts 32 MiB,
# the second value); the heap's top goes back to the OS only above 1 GiB free.
MMAP_THRESHOLDS = (1 << 30, 32 << 20)
TRIM_THRESHOLD = 1 << 30
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (glibc's malloc.h)


def _left_alone(environ) -> str | None:
    """Why the user's environment decides the allocator's settings (None where it does not)."""
    preload = environ.get("LD_PRELOAD", "")
    if "jemalloc" in preload or "tcmalloc" in preload or "mimalloc" in preload:
        return f"left to the preloaded allocator (LD_PRELOAD={preload})"
    if "glibc.malloc" in environ.get("GLIBC_TUNABLES", ""):
        return "left to GLIBC_TUNABLES"
    named = sorted(name for name in environ if name.startswith("MALLOC_"))
    return f"left to {', '.join(named)}" if named else None


def keep_freed_memory(device: torch.device | str = "cpu", environ=None) -> str:
    """For a run on ``device``: on CPU, raise glibc's mmap and trim thresholds in this process (see
    the module's docstring). Returns what was done, in words: ``"kept"`` or why nothing changed."""
    if torch.device(device).type != "cpu":
        return f"unchanged (a {torch.device(device).type} run)"
    reason = _left_alone(os.environ if environ is None else environ)
    if reason:
        return reason
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "unchanged (the C library is not glibc)"
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if not any(mallopt(_M_MMAP_THRESHOLD, value) for value in MMAP_THRESHOLDS):
        return "unchanged (glibc refused the mmap threshold)"
    mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)  # glibc accepts any trim threshold
    return "kept"
