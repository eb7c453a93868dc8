"""How microdit's commands end when they are stopped: Ctrl-C (SIGINT) or SIGTERM (``kill``, SLURM's
time limit or preemption, a job passing the signal on to its workers).

A training loop stops itself at a checkpoint (:mod:`microdit.train.guard`: it finishes its step,
writes a checkpoint and exits with 128 + the signal). Everywhere else (composing, building or
encoding data, training the probe, generating, evaluating, drawing grids, measuring)
:func:`stopped_in_one_line` ends the command with one line that names it and what was kept, with
the exit status of a stop (130 for Ctrl-C, 143 for SIGTERM) and no traceback. A stop half-writes
nothing: datasets, evaluation chunks, checkpoints and results are each written whole or not at all,
so the same command run again continues.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from microdit.progress import close_bars
from microdit.train.guard import STOP_EXITS


def _terminate(signum, frame) -> None:
    """SIGTERM outside a training loop: unwind as Ctrl-C does, with the exit status of SIGTERM."""
    raise SystemExit(128 + signum)


@contextmanager
def stopped_in_one_line(line: str) -> Iterator[None]:
    """While entered, SIGTERM raises ``SystemExit(143)`` (outside the main thread: left as it is);
    a Ctrl-C or SIGTERM, or a training run that stopped at its checkpoint (``SystemExit(128 +
    signal)``), prints ``line`` (what was kept, how to continue) to stderr and exits with 128 + the
    signal."""
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread (a library caller's): signals are not ours to take
        previous = None
    try:
        yield
    except KeyboardInterrupt:
        close_bars()
        print(line, file=sys.stderr)
        raise SystemExit(128 + signal.SIGINT) from None
    except SystemExit as stop:
        if stop.code in STOP_EXITS:
            close_bars()
            print(line, file=sys.stderr)
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
