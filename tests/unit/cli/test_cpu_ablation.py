"""How ``microdit-cpu-ablation`` ends when the job is stopped: whether the signal reached a run in
this process (the trainer exits 128 + signal after its checkpoint) or came between runs."""

import os
import signal
import time

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


def test_sigterm_outside_training_stops_the_job_with_its_line(monkeypatch, capsys):
    """kill or SLURM's SIGTERM while the job prepares data, trains the probe or evaluates (no run's
    trainer holds the signal then): the line and 128 + SIGTERM, not a silent death; the process's
    own SIGTERM handling comes back after the command."""
    def preparing(job, extra=None):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # the signal ends this

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(cpu_ablation, "run_job", preparing)
    with pytest.raises(SystemExit) as stop:
        cpu_ablation.main(["seeds=[0]"])
    assert stop.value.code == 128 + signal.SIGTERM
    assert capsys.readouterr().err == cpu_ablation.STOPPED + "\n"
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.parametrize("arg", ["trainer.plan_check=warn", "protocol=cpu_study", "+stages.pretrain.lr=1e-3",
                                 "~model.overrides", "hydra.searchpath=[file://conf]"])
def test_a_runs_key_among_the_jobs_is_pointed_to_override(arg, monkeypatch, capsys):
    """A run's key given where the job's fields go (as microdit-train's "trainer.plan_check=warn
    runs it anyway" or the README's searchpath would suggest) is refused naming --override, before
    anything runs; the job's own fields (eval.*, seeds, report.*) pass."""
    monkeypatch.setattr(cpu_ablation, "run_job", lambda job, extra=None: pytest.fail("the job ran"))
    with pytest.raises(SystemExit) as stop:
        cpu_ablation.main(["--seeds", "0", arg])
    assert stop.value.code == (f"microdit-cpu-ablation: error: {arg} sets every run's config, not a field of the "
                               f"job: give it as --override {arg}")
    ran = []
    monkeypatch.setattr(cpu_ablation, "run_job", lambda job, extra=None: ran.append((job, extra)) or (None, ""))
    monkeypatch.setattr(cpu_ablation, "report_dir", lambda job, out: out)
    cpu_ablation.main(["eval.num_samples=30", "report.out=elsewhere", "--override", arg])
    [(job, extra)] = ran
    assert job.eval.num_samples == 30 and extra == [arg]
