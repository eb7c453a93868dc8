"""Progress reporting for long loops (training, encoding, generation, probe training, feature
extraction): a tqdm bar on a terminal; when stderr is not a terminal (a log file, SLURM), or when
several processes share it (a job's workers, :func:`share_terminal`), plain lines at most every
``LOG_EVERY_S`` seconds and no carriage returns, so that a log stays readable and the bars of
processes side by side do not overwrite each other."""

from __future__ import annotations

import atexit
import sys

from tqdm import tqdm

LOG_EVERY_S = 30.0
_shared = False  # set in a process that shares its terminal with others


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


class _LogBar(tqdm):
    """A bar in line mode: its closing line is left out where the last line said the same (the
    final count and postfix, printed because the last step fell on the interval)."""

    def display(self, msg=None, pos=None):
        self._shown = (self.n, str(self.postfix))
        return super().display(msg, pos)

    def close(self) -> None:
        if not self.disable and self.n and getattr(self, "_shown", None) == (self.n, str(self.postfix)):
            self.leave = False  # tqdm then clears the line instead: nothing is written to a log
        super().close()


def progress(iterable=None, total: int | None = None, desc: str = "", unit: str = "it", initial: int = 0,
             enabled: bool = True) -> tqdm:
    """A progress bar over ``iterable`` (or ``total`` units updated by hand) for ``desc``."""
    kwargs = dict(total=total, initial=initial, unit=unit, unit_scale=True, disable=not enabled)
    if sys.stderr.isatty() and not _shared:
        return tqdm(iterable, dynamic_ncols=True, desc=desc, **kwargs)
    # miniters=1: every step looks at the clock, so a line comes every LOG_EVERY_S with the count of
    # that moment (tqdm's own skipping let its monitor thread print lines with the count of the line
    # before, and lines came further apart when the loop slowed down)
    return _LogBar(iterable, file=_Lines(sys.stderr), mininterval=LOG_EVERY_S, miniters=1, ncols=120, desc=desc,
                   **kwargs)


def close_bars() -> None:
    """Close every bar still open (a stopped command's, held by the traceback of its stop): its last
    state is drawn now, before the command's last line, not after it when the process exits."""
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


class _Labelled:
    """A text stream that starts every line written to ``stream`` with ``label``; a line is written
    when it is complete (a last unfinished one at exit)."""

    def __init__(self, stream, label: str) -> None:
        self.stream, self.label, self._pending = stream, label, ""
        atexit.register(self._close)

    def write(self, text: str) -> int:
        *lines, self._pending = (self._pending + text).split("\n")
        for line in lines:
            self.stream.write(f"{self.label} {line}\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False

    def _close(self) -> None:
        if self._pending:
            self.stream.write(f"{self.label} {self._pending}\n")
            self._pending = ""
        self.stream.flush()

    def __getattr__(self, name):  # encoding, fileno, buffer, ...: the stream's
        return getattr(self.stream, name)


def share_terminal(label: str) -> None:
    """This process shares the terminal (or log) with others (a job's worker): every line it writes
    to stdout or stderr starts with ``label`` (its training, evaluation and error lines alike), and
    its progress becomes plain lines, as in a log file."""
    global _shared
    _shared = True
    sys.stdout, sys.stderr = _Labelled(sys.stdout, label), _Labelled(sys.stderr, label)
