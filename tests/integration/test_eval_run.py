"""Evaluation of a real (tiny) trained run: microdit-eval (resumable), microdit-sample (text-to-image
and image-to-image) and microdit-results over the run folder."""

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from microdit import run as runs
from microdit.cli.eval import main as eval_main
from microdit.cli.results import main as results_main
from microdit.cli.sample import main as sample_main
from microdit.data import DataError, load_manifest
from microdit.eval import EvalSettings, evaluate, read_metrics
from microdit.run import load_model
from microdit.train.config import TrainConfig
from microdit.train.plan import prepare_synthetic
from microdit.train.trainer import train

from conftest import FIXTURE_DIR
from train_helpers import base_overrides, compose_config

pytestmark = pytest.mark.slow
PHOTO = FIXTURE_DIR / "photos" / "cat" / "0.jpg"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("evalrun")
    cfg = TrainConfig()
    cfg.data.folders, cfg.data.prepare_samples, cfg.trainer.progress = [str(tmp / "data")], 96, False
    prepare_synthetic(cfg)
    train(compose_config(base_overrides(tmp, tmp / "data", "tiny") + ["stages.finetune.ema.decay=0.5"]))
    return tmp / "runs" / "tiny"


def test_evaluate_is_resumable_and_recorded(run, capsys):
    data = run.parent.parent / "data"
    settings = EvalSettings(num_samples=12, sampler_overrides={"steps": 3}, batch_size=5, probe_steps=30)
    entry = evaluate(run, data, settings)
    assert "generate " in capsys.readouterr().err
    assert entry["nimg"] == 96 and entry["ema"] and entry["num_samples"] == 12
    assert set(entry["metrics"]) >= {"probe_fd", "probe_acc", "probe_acc_mean", "probe_heldout_acc"}
    chunks = sorted((run / "eval").glob("*/samples-*.pt"))
    assert len(chunks) == 3
    mtimes = [c.stat().st_mtime_ns for c in chunks]
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    killed = chunks[0].with_name(f".{chunks[0].name}.{socket.gethostname()}-{int(gone.stdout)}-1.tmp")
    killed.write_bytes(b"half a chunk")  # what an evaluation killed while saving a chunk leaves
    again = evaluate(run, data, settings)
    assert [c.stat().st_mtime_ns for c in chunks] == mtimes  # nothing regenerated
    assert "generate " not in capsys.readouterr().err  # and no empty progress bar for it
    assert not killed.exists()
    assert again["metrics"] == entry["metrics"]
    assert len(read_metrics(run)) == 1
    loaded = load_model(run, use_ema=False)
    assert not loaded.ema and loaded.nimg == 96


def test_another_sample_count_or_batch_reuses_only_its_own_chunks(run, tmp_path):
    """Sample i has prompt i and seed + i whatever the count: an evaluation of another count or batch
    size reuses the chunks of its own ranges (bit for bit) and generates the others; its samples
    equal a fresh evaluation's."""
    data = run.parent.parent / "data"
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("eval", "metrics.json"))
    few, more = (EvalSettings(num_samples=n, sampler_overrides={"steps": 3}, batch_size=b, probe_steps=30)
                 for n, b in ((4, 5), (9, 5)))
    evaluate(copy, data, few, name="e")
    first = {c.name: c.read_bytes() for c in (copy / "eval").glob("*/samples-*.pt")}
    assert list(first) == ["samples-0000000-0000004.pt"]
    entry = evaluate(copy, data, more, name="e")  # a chunk of 4 was read as a chunk of 5 before
    files = {c.name: c.read_bytes() for c in (copy / "eval").glob("*/samples-*.pt")}
    assert sorted(files) == ["samples-0000000-0000004.pt", "samples-0000000-0000005.pt", "samples-0000005-0000009.pt"]
    assert files["samples-0000000-0000004.pt"] == first["samples-0000000-0000004.pt"] and entry["num_samples"] == 9
    fresh = tmp_path / "fresh"
    shutil.copytree(run, fresh, ignore=shutil.ignore_patterns("eval", "metrics.json"))
    assert evaluate(fresh, data, more, name="e")["metrics"] == entry["metrics"]
    chunk = next((copy / "eval").glob("*/samples-0000005-0000009.pt"))
    torch.save(torch.zeros(3, 1), chunk)  # a chunk whose length is not its name's
    with pytest.raises(DataError, match=r"samples-0000005-0000009.pt holds 3 samples, its name says 4: delete it"):
        evaluate(copy, data, more, name="e")


def test_eval_over_two_ranks_equals_one_rank(run, tmp_path):
    """torchrun with 2 CPU ranks: each generates its share of the chunks on its local device and
    rank 0 measures; the metrics are exactly those of 1 process."""
    import json
    import os
    import shutil
    import subprocess
    import sys

    data = run.parent.parent / "data"
    for name, nproc in (("one", 1), ("two", 2)):
        copy = tmp_path / name / "run"
        shutil.copytree(run, copy, ignore=shutil.ignore_patterns("eval", "metrics.json"))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "microdit.cli.eval", "run", str(copy), "--dataset", str(data), "--num-samples", "12",
               "--steps", "3", "--batch-size", "4", "--probe-steps", "30", "--device", "cpu"]
        result = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
                                timeout=600)
        assert result.returncode == 0, result.stderr[-2000:]
    one, two = (json.loads((tmp_path / n / "run" / "metrics.json").read_text())["entries"] for n in ("one", "two"))
    assert two[0]["metrics"] == one[0]["metrics"] and one[0]["num_samples"] == 12
    assert one[0]["settings"]["probe_steps"] == 30 and (data / "probe" / "probe-30steps.pt").is_file()


def test_eval_cli_errors(run, capsys):
    with pytest.raises(SystemExit, match="unknown metric"):
        eval_main(["run", str(run), "--dataset", str(run.parent.parent / "data"), "--metrics", "is"])
    with pytest.raises(SystemExit, match="does not exist"):
        eval_main(["run", str(run), "--dataset", str(run / "nowhere")])


def test_a_real_vs_real_floor_only_at_the_samples_count(run, tmp_path, capsys):
    """probe_fd_real / probe_kid_real compare as many real images with the references as were
    generated: an evaluation set under 2 x n measures no floor (was: one from the fewer left, which
    reads too high) and the command says why in one line; at 2 x n the floor is there."""
    data = run.parent.parent / "data"  # 96 images
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("eval", "metrics.json"))
    args = ["run", str(copy), "--dataset", str(data), "--steps", "2", "--probe-steps", "30", "--batch-size", "25"]
    eval_main([*args, "--num-samples", "50"])
    out, err = capsys.readouterr()
    assert "probe_fd" in json.loads(out) and "probe_fd_real" not in json.loads(out)
    assert err.splitlines()[-1] == (f"microdit-eval: no real-vs-real floor (probe_fd_real, probe_kid_real) to read "
                                    f"probe_fd against: {data} holds fewer than 2 x 50 images (the prompts' and as "
                                    "many others); evaluate fewer samples (--num-samples) to measure it")
    eval_main([*args, "--num-samples", "48"])
    out, err = capsys.readouterr()
    assert {"probe_fd_real", "probe_kid_real"} <= set(json.loads(out)) and "real-vs-real" not in err


def test_eval_on_the_held_out_split_of_a_runs_synthetic_data(run, tmp_path, monkeypatch, capsys):
    """`--dataset held-out`: the split a CPU job evaluates a run on (FOLDER-eval: 1,000 images drawn
    with the next seed, its encoders), built where missing and then reused; refused in one line for
    a run trained on data of its own and for an export, which keeps no training config."""
    from microdit.data.encode import build_synthetic_dataset
    from microdit.job_runs import run_splits
    from microdit.pipeline import JobConfig
    from microdit.run import HELD_OUT_SAMPLES
    from microdit.train.plan import resolve

    monkeypatch.chdir(tmp_path)  # the run's data folder is relative, as a job's are
    overrides = [o for o in base_overrides(tmp_path, Path("data/syn"), "syn") if o != "data.prepare=none"]
    cfg = compose_config([*overrides, "data.prepare_samples=40"])
    train(cfg)
    args = ["run", str(tmp_path / "runs" / "syn"), "--dataset", "held-out", "--num-samples", "4", "--steps", "2",
            "--probe-steps", "5", "--batch-size", "4"]
    eval_main(args)
    split = run_splits(cfg, JobConfig())[1]
    assert split.folder == "data/syn-eval" and HELD_OUT_SAMPLES == JobConfig().eval.held_out_samples
    manifest = load_manifest("data/syn-eval")
    assert manifest.samples == 1000 and load_manifest("data/syn-eval-images").source == "synthetic(seed=1)"
    assert manifest.text_encoder == cfg.encoder.text_encoder and manifest.autoencoder == cfg.encoder.autoencoder
    entry = read_metrics(tmp_path / "runs" / "syn")[-1]
    assert entry["eval_dataset"] == "data/syn-eval" and entry["name"] == "syn-eval" and entry["num_samples"] == 4
    capsys.readouterr()
    eval_main(args)  # the split is reused, not drawn again
    assert "building" not in capsys.readouterr().err
    shutil.rmtree("data/syn-eval"), shutil.rmtree("data/syn-eval-images")
    build_synthetic_dataset(resolve(cfg)[0].dataset.held_out(20))  # a job's smaller split in the same folder
    with pytest.raises(SystemExit, match=r"--dataset held-out: data/syn-eval holds 20 synthetic images of 32x32 px, "
                                         r"not the 1000 .* asked for \(a job's split, .*\): evaluate on it as it is "
                                         r"with --dataset data/syn-eval, or delete data/syn-eval and "):
        eval_main(args)
    eval_main([*args[:2], "--dataset", "data/syn-eval", *args[4:]])
    with pytest.raises(SystemExit, match=r"--dataset held-out: .*tiny trained on data of its own \(.*data, "
                                         r"data\.prepare=none\), which has no synthetic held-out split"):
        eval_main(["run", str(run), "--dataset", "held-out"])
    export = tmp_path / "export"
    export.mkdir()
    for name in ("model.safetensors", "config.json"):
        shutil.copy(next((tmp_path / "runs" / "syn").rglob(name)), export / name)
    with pytest.raises(SystemExit, match=r"^microdit-eval: error: --dataset held-out: .*export is an export, which "
                                         r"keeps no training config"):
        eval_main(["run", str(export), "--dataset", "held-out"])


def test_sample_cli_text_and_image_to_image(run, tmp_path):
    sample_main([str(run), "--prompt", "a red circle on the left", "--prompt", "a blue star", "--steps", "3",
                 "--out", str(tmp_path / "t2i"), "--seed", "7"])
    assert Image.open(tmp_path / "t2i" / "grid.png").size == (64, 32)
    assert (tmp_path / "t2i" / "prompts.txt").read_text().splitlines()[1] == "0001\t8\ta blue star"
    first = Image.open(tmp_path / "t2i" / "0000.png").tobytes()
    sample_main([str(run), "--prompt", "a red circle on the left", "--steps", "3", "--out", str(tmp_path / "again"),
                 "--seed", "7"])
    assert Image.open(tmp_path / "again" / "0000.png").tobytes() == first  # seed per image: reproducible
    sample_main([str(run), "--prompt", "a blue star", "--prompt", "a red circle on the left", "--steps", "3",
                 "--out", str(tmp_path / "same"), "--seed", "7", "--same-noise"])  # both from seed 7's noise
    assert Image.open(tmp_path / "same" / "0001.png").tobytes() == first
    assert Image.open(tmp_path / "same" / "0000.png").tobytes() != first
    assert (tmp_path / "same" / "prompts.txt").read_text().splitlines()[0] == "0000\t7\ta blue star"
    sample_main([str(run), "--prompt", "a cat", "--steps", "3", "--init-image", str(PHOTO), "--sigma-start", "1.0",
                 "--out", str(tmp_path / "i2i")])
    assert Image.open(tmp_path / "i2i" / "0000.png").size == (32, 32)
    with pytest.raises(SystemExit, match="give --prompt"):
        sample_main([str(run), "--out", str(tmp_path / "x")])


def test_a_moved_checkpoint_samples_without_its_dataset(run, tmp_path, capsys):
    """Each checkpoint records the encoders of its data, so a copy on a machine without the dataset
    samples exactly as the run does."""
    data = run.parent.parent / "data"
    manifest, latest = load_manifest(data), runs.latest(run)
    recorded = json.loads((latest / "meta.json").read_text())["encoders"]
    assert recorded == {"text_encoder": manifest.text_encoder, "autoencoder": manifest.autoencoder}
    moved = tmp_path / "moved"
    shutil.copytree(latest, moved)
    config = moved / "config.yaml"
    config.write_text(config.read_text().replace(str(data), str(tmp_path / "gone")))
    prompt = ["--prompt", "a red circle", "--steps", "3", "--seed", "3"]
    sample_main([str(run), *prompt, "--out", str(tmp_path / "here")])
    sample_main([str(moved), *prompt, "--out", str(tmp_path / "there")])
    assert Image.open(tmp_path / "here" / "0000.png").tobytes() == Image.open(tmp_path / "there" / "0000.png").tobytes()
    export = tmp_path / "export"  # the run's last export alone: weights, network config, run config
    export.mkdir()
    for name in ("model.safetensors", "config.json", "config.yaml"):
        shutil.copy(moved / name, export / name)
    sample_main([str(export), *prompt, "--out", str(tmp_path / "export-samples")])
    assert (Image.open(tmp_path / "export-samples" / "0000.png").tobytes()
            == Image.open(tmp_path / "here" / "0000.png").tobytes())
    meta = json.loads((moved / "meta.json").read_text())  # a checkpoint without the record needs the dataset
    (moved / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "encoders"}))
    with pytest.raises(SystemExit, match="gone does not exist .* give --text-encoder and --autoencoder"):
        sample_main([str(moved), *prompt, "--out", str(tmp_path / "again")])


def test_results_cli(run, tmp_path, capsys):
    settings = EvalSettings(num_samples=6, sampler_overrides={"steps": 2}, batch_size=6, probe_steps=10)
    evaluate(run, run.parent.parent / "data", settings, name="quick")
    results_main([str(run.parent), "--out", str(tmp_path / "results.csv"), "--group-by", "stages.pretrain.mask.ratio",
                  "--metrics", "eval.quick.probe_fd,cost.flops", "--plot", "eval.quick.nimg:eval.quick.probe_fd",
                  "--training-plot"])
    out = capsys.readouterr().out
    assert "1 runs ->" in out and "| 0.5 |" in out and "(one seed)" in out
    assert (tmp_path / "results-training.png").stat().st_size > 1000
    assert (tmp_path / "results.csv").read_text().count("\n") == 2
    assert (tmp_path / "results-eval_quick_probe_fd-vs-eval_quick_nimg.png").stat().st_size > 1000
    # --group-by alone (the README's command): a table of the runs' quality columns, here the probe's
    results_main([str(run.parent), "--out", str(tmp_path / "grouped.csv"), "--group-by", "stages.pretrain.mask.ratio"])
    header = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| stages"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert columns[0] == "stages.pretrain.mask.ratio" and columns[-1] == "runs"
    assert {"eval.quick.probe_acc_mean", "eval.quick.probe_fd", "eval.quick.probe_kid"} <= set(columns)
    assert {c.rsplit(".", 1)[-1] for c in columns[1:-1]} == {"probe_acc_mean", "probe_fd", "probe_kid"}
    unevaluated = tmp_path / "unevaluated"
    shutil.copytree(run, unevaluated / "tiny", ignore=shutil.ignore_patterns("metrics.json", "eval"))
    results_main([str(unevaluated), "--out", str(tmp_path / "none.csv"), "--group-by", "stages.pretrain.mask.ratio"])
    out, err = capsys.readouterr()
    assert "| stages" not in out and "no run is evaluated yet (microdit-eval run RUN --dataset ...): no table" in err
