"""Progress reporting: a bar on a terminal, plain periodic lines (no carriage returns) in a log."""

import io
import sys

from microdit import progress as progress_module
from microdit.progress import progress


def test_a_log_file_gets_plain_lines_not_carriage_returns(monkeypatch):
    log = io.StringIO()  # not a terminal
    monkeypatch.setattr(progress_module.sys, "stderr", log)
    bar = progress(total=1000, desc="train", unit="img")
    for _ in range(100):
        bar.update(10)
    bar.set_postfix(loss="0.1234", refresh=False)
    bar.close()
    text = log.getvalue()
    assert "\r" not in text and "train" in text and "1.00k/1.00k" in text and "loss=0.1234" in text
    assert len(text.splitlines()) <= 3  # the first line, at most one per LOG_EVERY_S, and the last


def test_disabled_progress_prints_nothing(monkeypatch):
    log = io.StringIO()
    monkeypatch.setattr(progress_module.sys, "stderr", log)
    assert list(progress(range(5), desc="x", enabled=False)) == [0, 1, 2, 3, 4]
    assert log.getvalue() == ""


def test_a_process_sharing_a_terminal_writes_labelled_lines(monkeypatch):
    """A job's worker: on a terminal too, its progress is plain lines starting with its label, so
    that two workers' bars do not overwrite each other on one line."""
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    term = Terminal()
    monkeypatch.setattr(progress_module.sys, "stderr", term)
    bar = progress(total=10, desc="train", unit="img")
    bar.update(10)
    bar.close()
    assert "\r" in term.getvalue()  # alone on a terminal: a bar
    term.seek(0)
    term.truncate()
    out = Terminal()
    monkeypatch.setattr(progress_module.sys, "stdout", out)  # both streams restored after the test
    monkeypatch.setattr(progress_module, "_shared", False)
    progress_module.share_terminal("[worker 1]")
    bar = progress(total=10, desc="train", unit="img")
    bar.update(10)
    bar.close()
    lines = term.getvalue().splitlines()
    assert "\r" not in term.getvalue() and lines and all(line.startswith("[worker 1] train") for line in lines)
    # Every line the process writes is labelled, on stdout (the trainer's lines) as on stderr, once
    # complete; a line left unfinished is written at exit.
    print("[train] resumed", "at 64 images")
    assert out.getvalue() == "[worker 1] [train] resumed at 64 images\n"
    print("two\nlines", end="")
    sys.stdout.write("!\n")
    sys.stdout.write("unfinished")
    sys.stdout._close()
    assert out.getvalue().splitlines()[1:] == ["[worker 1] two", "[worker 1] lines!", "[worker 1] unfinished"]


def _a_log_with_a_clock(monkeypatch) -> tuple[list[float], io.StringIO]:
    """A log file (not a terminal) for progress lines, a line due every 2 s, and tqdm's clock: the
    test moves ``now[0]``."""
    import tqdm.std

    now = [0.0]
    monkeypatch.setattr(tqdm.std, "time", lambda: now[0])
    log = io.StringIO()
    monkeypatch.setattr(progress_module.sys, "stderr", log)
    monkeypatch.setattr(progress_module, "LOG_EVERY_S", 2.0)
    return now, log


def test_log_lines_come_every_interval_with_the_count_of_their_moment(monkeypatch):
    """A loop that slows down (here 0.02 s steps, then 0.05 s: a clock the test controls) still gets a
    line every LOG_EVERY_S, and each line's count is the count at that moment (tqdm's skipping of
    clock reads spaced the lines 2.5x the interval apart, and its monitor thread printed the count of
    the line before)."""
    import re

    now, log = _a_log_with_a_clock(monkeypatch)
    for i in progress(range(300), desc="probe training", unit="step"):
        now[0] += 0.02 if i < 100 else 0.05
    lines = log.getvalue().splitlines()
    counts = [float(m[1]) for line in lines if (m := re.search(r"\| ([\d.]+)/300 ", line))]
    elapsed = [60 * int(m[1]) + int(m[2]) for line in lines if (m := re.search(r"\[(\d\d):(\d\d)", line))]
    assert counts[0] == 0 and counts[-1] == 300 and counts == sorted(counts)
    assert max(b - a for a, b in zip(elapsed[:-1], elapsed[1:], strict=True)) <= 3  # the interval, to the second
    assert len(lines) >= 12 / 2  # 12 s of loop: a line every 2 s


def test_a_log_gets_the_final_count_once(monkeypatch):
    """Where the last step falls on the interval its line already says the final count: the bar's
    closing line (the same count again) is left out; a postfix set after it still gets its line."""
    import re

    now, log = _a_log_with_a_clock(monkeypatch)
    for _ in progress(range(4), desc="generate", unit="chunk"):
        now[0] += 1.0  # lines due at 2 s and 4 s: the second at the last step
    counts = [m[1] for line in log.getvalue().splitlines() if (m := re.search(r"\| ([\d.]+)/4.00 ", line))]
    assert counts == ["0.00", "2.00", "4.00"]
    log.truncate(0)
    log.seek(0)
    bar = progress(total=4, desc="train", unit="img")
    for _ in range(4):
        now[0] += 1.0
        bar.update(1)
    bar.set_postfix(loss="0.5", refresh=False)
    bar.close()
    lines = log.getvalue().splitlines()
    assert len(lines) == 4 and "loss=0.5" in lines[-1] and "4.00/4.00" in lines[-2]
