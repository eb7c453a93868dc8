"""End-to-end trainer runs on a tiny synthetic dataset: two stages, exact resume after kill -9,
SIGTERM checkpoint, NaN guard, 2 processes == 1 process, budgets, init_from, clear errors."""

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from microdit import run as runs
from microdit.cli.sample import main as sample_main
from microdit.data import DataError
from microdit.locks import LockHeld
from microdit.models import MicroDiT
from microdit.train.config import TrainConfig
from microdit.train.guard import NonFiniteGuard
from microdit.train.plan import prepare_synthetic
from microdit.train.trainer import NonFiniteError, Trainer, train

from conftest import FIXTURE_DIR
from train_helpers import base_overrides, compose_config, popen_train, run_train, stats, wait_for_rows

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data") / "synthetic"
    cfg = TrainConfig()
    cfg.data.folders = [str(folder)]
    cfg.data.prepare_samples = 96
    cfg.trainer.progress = False
    prepare_synthetic(cfg)
    return folder


def test_two_stage_run_end_to_end(tmp_path, data):
    cfg = compose_config(base_overrides(tmp_path, data, "two") + [
        "trainer.ckpt_every_images=32", "trainer.sample_every_images=48", "stages.finetune.ema.decay=0.9",
        "stages.finetune.ema.start_images=16"])
    summary = train(cfg)
    run = tmp_path / "runs" / "two"
    rows = stats(run)
    assert [r["nimg"] for r in rows] == list(range(8, 97, 8))
    assert [r["stage_name"] for r in rows] == ["pretrain"] * 8 + ["finetune"] * 4
    assert rows[0]["lr"] == 0 and rows[2]["lr"] == pytest.approx(1e-3) and rows[-1]["lr"] == pytest.approx(5e-4)
    assert all(r["loss"] == r["loss"] for r in rows) and summary["nimg"] == 96
    info = json.loads((run / "run_info.json").read_text())
    assert [s["images"] for s in info["stages"]] == [64, 32]
    assert info["stages"][0]["flops_per_image"] < info["stages"][1]["flops_per_image"]  # masking saves compute
    flops = 64 * info["stages"][0]["flops_per_image"] + 32 * info["stages"][1]["flops_per_image"]
    assert summary["flops"] == pytest.approx(flops)
    written = runs.run_config(run / "config.yaml")  # the resolved config round-trips
    assert written == cfg and [s.mask.ratio for _, s in written.active_stages()] == [0.5, 0.0]
    kept = [p.name for p in runs.list_checkpoints(runs.checkpoint_root(run))]
    assert kept == ["000000000064", "000000000096"]  # keep_checkpoints=2; stage ends included
    from PIL import Image

    grids = sorted(p.name for p in (run / "samples").glob("*.png"))
    assert grids == ["000000000048.png", "000000000064.png", "000000000096.png"]  # every 48, and each stage end
    assert Image.open(run / "samples" / grids[-1]).size == (4 * 32, 32)  # 4 fixed prompts, pixel:2 decoded
    # microdit-sample RUN defaults to the run's own sampler, EMA weights and seeds: it redraws the last grid
    prompts = [arg for p in cfg.trainer.sample_prompts for arg in ("--prompt", p)]
    sample_main([str(run), *prompts, "--out", str(tmp_path / "again"), "--device", "cpu"])
    assert np.array_equal(np.array(Image.open(tmp_path / "again" / "grid.png")),
                          np.array(Image.open(run / "samples" / grids[-1])))
    # every stage end exports the EMA (or raw) weights: loadable in a fresh process, portable on their own
    export = runs.latest(run)
    assert {"config.yaml", "config.json", "model.safetensors"} <= {f.name for f in export.iterdir()}
    code = (f"import sys, torch; from microdit.models import MicroDiT; m = MicroDiT.from_pretrained({str(export)!r}); "
            f"s = torch.load({str(export / 'state.pt')!r}, weights_only=True)['ema']; "
            "sys.exit(0 if all(torch.equal(v, s[k]) for k, v in m.state_dict().items()) else 3)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
    moved = tmp_path / "shared-model"
    moved.mkdir()
    for name in ("config.json", "model.safetensors", "config.yaml"):
        (moved / name).write_bytes((export / name).read_bytes())
    sample_main([str(moved), *prompts, "--out", str(tmp_path / "from-export"), "--device", "cpu"])
    assert np.array_equal(np.array(Image.open(tmp_path / "from-export" / "grid.png")),
                          np.array(Image.open(run / "samples" / grids[-1])))
    sample_main([str(run), *prompts, "--out", str(tmp_path / "more"), "--device", "cpu", "--steps", "3"])
    assert not np.array_equal(np.array(Image.open(tmp_path / "more" / "grid.png")),
                              np.array(Image.open(run / "samples" / grids[-1])))
    settings = json.loads((tmp_path / "more" / "sampling.json").read_text())  # how they were drawn
    assert settings["sampler"] == {**dataclasses.asdict(cfg.sampler), "steps": 3} != dataclasses.asdict(cfg.sampler)
    assert (settings["checkpoint"], settings["nimg"], settings["weights"]) == (str(runs.latest(run).resolve()), 96,
                                                                               "EMA weights")
    assert settings["seeds"] == list(range(len(prompts) // 2)) and settings["init_image"] is None
    assert (settings["text_encoder"], settings["autoencoder"]) == (cfg.encoder.text_encoder, cfg.encoder.autoencoder)
    state, _ = runs.load(runs.latest(run))
    assert state["ema"] is not None
    assert not torch.equal(state["ema"]["final.linear.weight"], state["model"]["final.linear.weight"])


def test_kill_9_then_resume_is_bit_exact(tmp_path, data):
    reference = base_overrides(tmp_path, data, "ref")
    run_train(reference)
    killed = base_overrides(tmp_path, data, "killed") + ["trainer.ckpt_every_images=24"]
    proc = popen_train(killed)
    run = tmp_path / "runs" / "killed"
    wait_for_rows(run, 40, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert runs.latest(run) is not None and stats(run)[-1]["nimg"] < 96
    assert (run / ".lock").is_file()  # left by the killed trainer, whose pid is gone: stale
    result = run_train(killed)
    assert "resumed from" in result.stdout + result.stderr
    assert f"taking over {run / '.lock'}" in result.stdout + result.stderr and not (run / ".lock").exists()
    ref_rows, rows = stats(tmp_path / "runs" / "ref"), stats(run)
    assert [r["nimg"] for r in rows] == [r["nimg"] for r in ref_rows]
    assert [r["loss"] for r in rows] == [r["loss"] for r in ref_rows]  # bit-identical
    assert [r["grad_norm"] for r in rows] == [r["grad_norm"] for r in ref_rows]


def test_kill_9_before_the_first_checkpoint_then_rerun_has_each_row_once(tmp_path, data):
    reference = base_overrides(tmp_path, data, "ref")
    run_train(reference)
    killed = base_overrides(tmp_path, data, "early")  # no checkpoint before the stage end at 64 images
    proc = popen_train(killed)
    run = tmp_path / "runs" / "early"
    wait_for_rows(run, 24, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert runs.latest(run) is None
    with open(run / "stats.jsonl", "a") as f:
        f.write('{"nimg": 32, "lo')  # a row cut short by the kill
    run_train(killed)
    rows, ref_rows = stats(run), stats(tmp_path / "runs" / "ref")
    assert [r["nimg"] for r in rows] == [r["nimg"] for r in ref_rows] == list(range(8, 97, 8))
    assert [r["loss"] for r in rows] == [r["loss"] for r in ref_rows]


def test_sigterm_leaves_a_checkpoint(tmp_path, data):
    overrides = base_overrides(tmp_path, data, "term")
    proc = popen_train(overrides)
    run = tmp_path / "runs" / "term"
    wait_for_rows(run, 16, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert not (run / ".lock").exists()  # released on the way out
    latest = runs.latest(run)
    assert latest is not None and "signal received" in out + err
    state, meta = runs.load(latest)
    assert meta["nimg"] == state["progress"]["nimg"] >= 16
    run_train(overrides)  # resumed: every logged row once, none missing
    assert [r["nimg"] for r in stats(run)] == list(range(8, 97, 8))


def test_a_signal_after_the_last_sync_point_still_stops_the_process(tmp_path, data, monkeypatch, capsys):
    """SIGTERM while the last stage's grid is drawn (after the loop's last check) was recorded and
    dropped: the process went on (a job's worker started its next run). Now the run completes
    (summary written, lock released) and the process stops with 128 + the signal."""
    last_grid = Trainer.sample_grid

    def grid_then_signal(self, manifest):
        path = last_grid(self, manifest)
        if self.progress["stage"] == len(self.stages) - 1:
            os.kill(os.getpid(), signal.SIGTERM)  # recorded by the trainer's deferred handler
        return path

    monkeypatch.setattr(Trainer, "sample_grid", grid_then_signal)
    with pytest.raises(SystemExit) as stop:
        train(compose_config(base_overrides(tmp_path, data, "late")))
    assert stop.value.code == 128 + signal.SIGTERM
    run = tmp_path / "runs" / "late"
    assert json.loads((run / "summary.json").read_text())["nimg"] == 96 and not (run / ".lock").exists()
    assert "signal received at the run's end: the run is complete; exiting" in capsys.readouterr().out
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler before training is back


def test_a_run_in_use_is_refused_before_anything_is_written(tmp_path, data, lock_holder):
    overrides = base_overrides(tmp_path, data, "busy")
    run_train(overrides)
    run = tmp_path / "runs" / "busy"
    holder = lock_holder(run / ".lock")  # another trainer (here: a process holding the run's lock)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(LockHeld, match=rf"run {run} is in use by pid {holder.pid} on host .* delete {run}/.lock"):
        Trainer(compose_config(overrides))
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_two_processes_equal_one_process(tmp_path, data):
    one = base_overrides(tmp_path, data, "one") + ["trainer.grad_accum=2"]
    two = base_overrides(tmp_path, data, "two")
    run_train(one)
    said = run_train(two, nproc=2).stdout
    summary = json.loads((tmp_path / "runs" / "two" / "summary.json").read_text())
    assert said.count("[train] done") == 1  # rank 0's line, the run's summary (each rank times its own share)
    assert f"{summary['images_per_s']:.1f} img/s" in said
    a, b = stats(tmp_path / "runs" / "one"), stats(tmp_path / "runs" / "two")
    assert [r["nimg"] for r in a] == [r["nimg"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-4, abs=1e-6)
    info = json.loads((tmp_path / "runs" / "two" / "run_info.json").read_text())
    assert info["processes"] == 2


def test_two_submitit_tasks_equal_one_process(tmp_path, data):
    """The documented SLURM path (hydra/launcher=submitit_slurm, tasks_per_node = GPUs) run with
    submitit_local on CPU: 2 tasks become 2 gloo ranks (microdit.launch) and train exactly like one
    process at the same global batch."""
    one = base_overrides(tmp_path, data, "one") + ["trainer.grad_accum=2"]
    two = base_overrides(tmp_path, data, "two") + ["hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=2",
                                                    "hydra.launcher.timeout_min=10"]
    run_train(one)
    run_train(["-m", *two])
    [run] = (tmp_path / "runs").glob("two-*")  # a multirun names its folder after its overrides
    a, b = stats(tmp_path / "runs" / "one"), stats(run)
    assert [r["nimg"] for r in a] == [r["nimg"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-4, abs=1e-6)
    assert json.loads((run / "run_info.json").read_text())["processes"] == 2


def test_nan_guard_skips_then_stops(tmp_path, data, monkeypatch):
    original = MicroDiT.forward
    calls = {"n": 0}

    def sometimes_nan(self, *args, **kwargs):
        calls["n"] += 1
        out = original(self, *args, **kwargs)
        return out * float("nan") if calls["n"] in (3, 4) else out

    monkeypatch.setattr(MicroDiT, "forward", sometimes_nan)
    summary = train(compose_config(base_overrides(tmp_path, data, "transient")))
    assert summary["nonfinite_steps"] == 2 and summary["nimg"] == 96
    assert stats(tmp_path / "runs" / "transient")[-1]["loss"] == summary["final_loss"]

    monkeypatch.setattr(MicroDiT, "forward", lambda self, *a, **k: original(self, *a, **k) * float("nan"))
    cfg = compose_config(base_overrides(tmp_path, data, "broken") + ["trainer.max_nonfinite=3"])
    with pytest.raises(NonFiniteError, match=r"3 non-finite steps in a row .* Last good checkpoint: none"):
        train(cfg)


def test_host_reads_the_guard_only_at_sync_points(tmp_path, data, monkeypatch):
    reads = []
    original_read = NonFiniteGuard.read

    def counted(self):
        reads.append(self.total.item())
        return original_read(self)

    monkeypatch.setattr(NonFiniteGuard, "read", counted)
    overrides = base_overrides(tmp_path, data, "sparse") + ["trainer.log_every_images=10000",
                                                            "trainer.sync_every_steps=3"]
    summary = train(compose_config(overrides))
    assert summary["steps"] == 12
    assert len(reads) == 4 + 2  # steps 3, 6 (stage 1 ends at step 8), 9, 12, and each stage's end

    original = MicroDiT.forward
    monkeypatch.setattr(MicroDiT, "forward", lambda self, *a, **k: original(self, *a, **k) * float("nan"))
    overrides = base_overrides(tmp_path, data, "late") + ["trainer.log_every_images=10000",
                                                          "trainer.sync_every_steps=4", "trainer.max_nonfinite=2"]
    with pytest.raises(NonFiniteError, match=r"4 non-finite steps in a row \(loss or gradient NaN/Inf\) before 32 "):
        train(compose_config(overrides))


def test_budget_fits_stage_lengths(tmp_path, data):
    cfg = compose_config(base_overrides(tmp_path, data, "budget", stages=[
        "~stages.pretrain", "+stages={a: {mask: {ratio: 0.75}, budget_fraction: 0.5}, "
        "b: {mask: {ratio: 0.0}, budget_fraction: 0.5}}"]) + ["trainer.budget_flops=4e10"])
    trainer = Trainer(cfg)
    stages = trainer.stages
    for stage in stages:
        assert stage.images == int(0.5 * 4e10 / stage.flops_per_image) // 8 * 8
    assert stages[0].images > stages[1].images  # masked images are cheaper: more of them


def test_a_cpu_run_keeps_the_memory_it_frees(tmp_path, data, monkeypatch):
    calls = []
    monkeypatch.setattr("microdit.train.trainer.keep_freed_memory", lambda device: calls.append(device.type))
    Trainer(compose_config(base_overrides(tmp_path, data, "memory") + ["trainer.device=cpu"])).release()
    assert calls == ["cpu"]  # each step reuses the last one's pages (tests/unit/test_host_memory.py)


def test_init_from_and_incompatible_checkpoint(tmp_path, data):
    run_train(base_overrides(tmp_path, data, "source"))
    source = runs.latest(tmp_path / "runs" / "source")
    source_run = tmp_path / "runs" / "source"
    cfg = compose_config(base_overrides(tmp_path, data, "child") + [f"trainer.init_from={source_run}"])
    trainer = Trainer(cfg)
    state, _ = runs.load(source)
    assert torch.equal(trainer.model.blocks[0].attn.qkv.weight, state["model"]["blocks.0.attn.qkv.weight"])
    resumed = compose_config(base_overrides(tmp_path, data, "source") + ["model.overrides.depth=3"])
    with pytest.raises(ValueError, match=r"written with another config \(model.overrides.depth: 2 -> 3"):
        Trainer(resumed)
    bad = compose_config(base_overrides(tmp_path, data, "deeper") + ["model.overrides.depth=3",
                                                                      f"trainer.init_from={source_run}"])
    with pytest.raises(RuntimeError, match=r"checkpoint .*000000000096 is incompatible with this model config"):
        Trainer(bad)


def test_clear_errors(tmp_path, data):
    with pytest.raises(DataError, match=r"dataset .*nowhere \(stage 'pretrain'\) is missing: encode one there with "
                                        r"this run's encoders \(microdit-data encode IMAGES .*nowhere --autoencoder "
                                        r"pixel:4 --text-encoder offline:256:32 --resolutions 64;"):
        Trainer(compose_config(base_overrides(tmp_path, tmp_path / "nowhere", "x") + [
            "encoder.autoencoder=pixel:4", "encoder.text_encoder=offline:256:32", "data.resolution=64"]))
    download = tmp_path / "jdb-download"  # a download given where a dataset is read: how it becomes one
    (download / "data" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match=re.escape(f"dataset {download} (stage 'pretrain'): {download}/manifest.json is "
                                                  f"missing") + r".* prepare SOURCE OUT --from .*jdb-download, then "
                                                  r"microdit-data encode OUT LATENTS, and train on LATENTS$"):
        Trainer(compose_config(base_overrides(tmp_path, download, "x")))
    (tmp_path / "train.log").write_text("")
    with pytest.raises(DataError, match=r"^dataset .*train.log \(stage 'pretrain'\) is a file, not a folder$"):
        Trainer(compose_config(base_overrides(tmp_path, tmp_path / "train.log", "x")))
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if os.access(locked, os.W_OK):  # running as root: permissions are not enforced
        locked.chmod(0o700)
        (tmp_path / "file").write_text("")
        run_dir = tmp_path / "file"  # a file where a folder is needed
    else:
        run_dir = locked
    with pytest.raises(PermissionError, match="is not writable"):
        Trainer(compose_config(base_overrides(tmp_path, data, "x") + [f"trainer.run_dir={run_dir}"]))
    with pytest.raises(DataError, match=r"caption width 32 != model caption_dim 128"):
        Trainer(compose_config(base_overrides(tmp_path, FIXTURE_DIR / "latents", "y")))
    result = run_train(base_overrides(tmp_path, data, "z") + ["stages.pretrain.mask.ratio=1.5"], check=False)
    assert result.returncode == 2 and "stages.pretrain: mask: ratio must be in [0, 1), got 1.5" in result.stderr


def test_resolution_stage(tmp_path, data):
    big = tmp_path / "synthetic64"
    cfg = TrainConfig()
    cfg.data.folders, cfg.data.prepare_samples, cfg.data.prepare_size = [str(big)], 32, 64
    cfg.trainer.progress = False
    prepare_synthetic(cfg)
    stages = ["~stages.pretrain", f"+stages={{low: {{mask: {{ratio: 0.5}}, images: 32}}, high: {{mask: {{ratio: 0.5}}, "
              f"images: 16, data_folders: [{big}], input_size: [32, 32], pos_interp_scale: 2.0, "
              "ema: {decay: 0.5}}}"]
    summary = train(compose_config(base_overrides(tmp_path, data, "res", stages) + ["trainer.sample_every_images=48"]))
    assert summary["nimg"] == 48
    info = json.loads((tmp_path / "runs" / "res" / "run_info.json").read_text())
    assert info["stages"][1]["flops_per_image"] > 3 * info["stages"][0]["flops_per_image"]  # 4x the tokens
    from PIL import Image

    assert Image.open(tmp_path / "runs" / "res" / "samples" / "000000000048.png").size == (4 * 64, 64)


def test_multirun_sweep_names_one_run_per_point(tmp_path, data):
    overrides = base_overrides(tmp_path, data, "sweep", ["stages.pretrain.mask.ratio=0.5", "stages.pretrain.images=16",
                                                         "stages.pretrain.warmup_images=0"])
    result = run_train(["-m", *overrides, "model.overrides.mixer_depth=0,1"])
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir() if p.is_dir() and p.name.startswith("sweep"))
    assert len(runs) == 2, result.stdout
    assert "model.overrides.mixer_depth=0" in runs[0] and "model.overrides.mixer_depth=1" in runs[1]
    assert all((tmp_path / "runs" / r / "summary.json").is_file() for r in runs)


def test_optimizer_reset_at_a_stage_boundary(tmp_path, data):
    """stages.<name>.reset_optimizer starts the stage with fresh AdamW moments and step counts (the
    reference does at its 512 px stage); by default the state carries over."""
    steps = {}
    for reset in (False, True):
        name = f"reset-{reset}"
        train(compose_config(base_overrides(tmp_path, data, name) + [f"stages.finetune.reset_optimizer={reset}"]))
        state, _ = runs.load(runs.latest(tmp_path / "runs" / name))
        steps[reset] = {int(s["step"]) for s in state["optimizer"]["state"].values()}
    assert steps == {False: {12}, True: {4}}  # 8 + 4 steps carried, or the 4 finetune steps only


def test_a_run_logged_to_a_file_is_readable_and_plots_its_curves(tmp_path, data):
    """stderr to a pipe (a log file, SLURM): progress lines without carriage returns, with the loss;
    the run writes training.png (loss, lr, grad norm against images)."""
    result = run_train(base_overrides(tmp_path, data, "logged") + ["trainer.progress=true"])
    assert "\r" not in result.stderr and "train" in result.stderr and "loss=" in result.stderr
    from PIL import Image

    assert Image.open(tmp_path / "runs" / "logged" / "training.png").size[0] > 600


def test_rerunning_a_finished_run_changes_nothing_and_cuda_without_a_gpu_is_refused(tmp_path, data):
    overrides = base_overrides(tmp_path, data, "done")
    first = train(compose_config(overrides))
    summary = (tmp_path / "runs" / "done" / "summary.json").read_text()
    again = train(compose_config(overrides))
    assert again == first and (tmp_path / "runs" / "done" / "summary.json").read_text() == summary
    assert first["final_loss"] == first["final_loss"]  # not NaN
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="trainer.device=cuda, but torch sees no CUDA device"):
            Trainer(compose_config(base_overrides(tmp_path, data, "gpu") + ["trainer.device=cuda"]))
