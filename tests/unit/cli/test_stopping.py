"""How microdit's commands end when stopped outside a training loop (Ctrl-C, or SIGTERM from kill or
SLURM): one line naming the command, exit 128 + the signal, no traceback, nothing half-written."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from microdit.cli import bench, data, sample, train
from microdit.cli import eval as eval_cli
from microdit.cli.stopping import stopped_in_one_line


@pytest.fixture(autouse=True)
def _sigterm_fails_the_test():
    """A command that does not take SIGTERM itself fails its test instead of killing the test process."""
    def untaken(signum, frame):
        raise AssertionError("SIGTERM was not taken by the command")

    before = signal.signal(signal.SIGTERM, untaken)
    yield
    signal.signal(signal.SIGTERM, before)


def _sigterm(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)  # the signal ends this


def _ctrl_c(*args, **kwargs):
    raise KeyboardInterrupt


# (command, the function its work is done in, how the test calls the command)
COMMANDS = {
    "microdit-train": (train, "main", lambda: train.cli()),
    "microdit-eval": (eval_cli, "_evaluate", lambda: eval_cli.main(["run", "RUN", "--dataset", "DATA"])),
    "microdit-sample": (sample, "sample", lambda: sample.main(["RUN", "--prompt", "a red circle"])),
    "microdit-data": (data, "cmd_synthetic", lambda: data.main(["synthetic", "OUT"])),
    "microdit-bench": (bench, "run_all", lambda: bench.main(["--quick", "--out", "BENCH"])),
}


@pytest.mark.parametrize("work", [_sigterm, _ctrl_c], ids=["SIGTERM", "Ctrl-C"])
@pytest.mark.parametrize("command", COMMANDS)
def test_a_stopped_command_ends_in_its_line(command, work, monkeypatch, tmp_path, capsys):
    module, name, call = COMMANDS[command]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["microdit-train", "trainer.run_dir=runs"])
    monkeypatch.setattr(module, name, work)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stop:
        try:
            call()
        except KeyboardInterrupt:  # not the session's: fail this test alone
            pytest.fail(f"{command}: Ctrl-C ended it in a traceback")
    assert stop.value.code == 128 + (signal.SIGTERM if work is _sigterm else signal.SIGINT)
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith(f"{command}") and ": stopped" in last
    assert signal.getsignal(signal.SIGTERM) is before  # the process's own handling comes back


def test_only_a_stop_prints_the_line(capsys):
    for code in (0, 2, "microdit-x: error: a bad value"):
        with pytest.raises(SystemExit) as stop, stopped_in_one_line("x: stopped"):
            raise SystemExit(code)
        assert stop.value.code == code
    assert capsys.readouterr().err == ""
    with pytest.raises(SystemExit) as stop, stopped_in_one_line("x: stopped"):  # a training run's own stop
        raise SystemExit(128 + signal.SIGTERM)
    assert stop.value.code == 143 and capsys.readouterr().err == "x: stopped\n"
    with pytest.raises(ValueError), stopped_in_one_line("x: stopped"):
        raise ValueError("not a stop")
    assert capsys.readouterr().err == ""


def test_outside_the_main_thread_signals_are_left_alone():
    """A library caller's thread cannot take signals: the work runs, the handler is not touched."""
    before, done = signal.getsignal(signal.SIGTERM), []

    def work():
        with stopped_in_one_line("x: stopped"):
            done.append(signal.getsignal(signal.SIGTERM))

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert done == [before] and signal.getsignal(signal.SIGTERM) is before


def test_sigterm_while_building_a_dataset(tmp_path):
    """The real command in its own process, stopped while it draws images: its line and 143 (not a
    silent death by the signal), and neither the dataset folder nor a hidden partial one is left."""
    out = tmp_path / "syn"
    proc = subprocess.Popen([sys.executable, "-m", "microdit.cli.data", "synthetic", str(out), "--num-samples",
                             "100000"], stderr=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.stderr.read(1)  # its progress bar: the build has begun
    proc.send_signal(signal.SIGTERM)
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert err.splitlines()[-1].startswith("microdit-data synthetic: stopped; nothing was half-written")
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []
