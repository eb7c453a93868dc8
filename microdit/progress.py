"""Progress reporting for long loops (training, encoding, generation, probe training, feature
extraction): a tqdm bar on a terminal; when stderr is not a terminal (a log file, SLURM), or when
several processes share it (a job's workers, :func:`share_terminal`), plain lines at most every
``LOG_EVERY_S`` seconds and no carriage returns, so that a log stays readable and the bars of
processes side by side do not overwrite each other."""

from __future__ import annotations

import sys

from tqdm import tqdm

LOG_EVERY_S = 30.0
_label: str | None = None  # set in a process that shares its terminal with others


class _Lines:
    """A file for tqdm that turns each refresh into one line of its own."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").strip()
        if text:
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress(iterable=None, total: int | None = None, desc: str = "", unit: str = "it", initial: int = 0,
             enabled: bool = True) -> tqdm:
    """A progress bar over ``iterable`` (or ``total`` units updated by hand) for ``desc``."""
    kwargs = dict(total=total, initial=initial, unit=unit, unit_scale=True, disable=not enabled)
    if sys.stderr.isatty() and _label is None:
        return tqdm(iterable, dynamic_ncols=True, desc=desc, **kwargs)
    desc = desc if _label is None else f"{_label} {desc}"
    return tqdm(iterable, file=_Lines(sys.stderr), mininterval=LOG_EVERY_S, ncols=120, desc=desc, **kwargs)


def share_terminal(label: str) -> None:
    """This process shares stderr with others (a job's worker): its progress becomes plain lines,
    each starting with ``label``, as in a log file."""
    global _label
    _label = label
