"""How ``microdit-cpu-ablation`` ends when the job is stopped: whether the signal reached a run in
this process (the trainer exits 128 + signal after its checkpoint) or came between runs."""

import signal

import pytest

from microdit.cli import cpu_ablation


@pytest.mark.parametrize(("raised", "code"), [
    (SystemExit(128 + signal.SIGINT), 128 + signal.SIGINT),  # Ctrl-C during training: the trainer's exit
    (SystemExit(128 + signal.SIGTERM), 128 + signal.SIGTERM),
    (KeyboardInterrupt(), 130),  # Ctrl-C between runs or during an evaluation
])
def test_a_stopped_job_says_how_to_continue(raised, code, monkeypatch, capsys):
    def stopped_run_job(job, extra=None):
        raise raised

    monkeypatch.setattr(cpu_ablation, "run_job", stopped_run_job)
    with pytest.raises(SystemExit) as stop:
        cpu_ablation.main(["seeds=[0]"])
    assert stop.value.code == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the job was stopped" in err and "run the job again to continue" in err


def test_any_other_exit_passes_through_without_the_line(monkeypatch, capsys):
    def failed_run_job(job, extra=None):
        raise SystemExit(2)

    monkeypatch.setattr(cpu_ablation, "run_job", failed_run_job)
    with pytest.raises(SystemExit) as stop:
        cpu_ablation.main([])
    assert stop.value.code == 2 and capsys.readouterr().err == ""
