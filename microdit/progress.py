"""Progress reporting for long loops (training, encoding, generation, probe training, feature
extraction): a tqdm bar on a terminal; when stderr is not a terminal (a log file, SLURM), plain
lines at most every ``LOG_EVERY_S`` seconds and no carriage returns, so a log stays readable."""

from __future__ import annotations

import sys

from tqdm import tqdm

LOG_EVERY_S = 30.0


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
    kwargs = dict(total=total, initial=initial, desc=desc, unit=unit, unit_scale=True, disable=not enabled)
    if sys.stderr.isatty():
        return tqdm(iterable, dynamic_ncols=True, **kwargs)
    return tqdm(iterable, file=_Lines(sys.stderr), mininterval=LOG_EVERY_S, ncols=120, **kwargs)
