"""The bad-input battery: bad data, bad configs, bad paths and faults, each tried the way a user
meets it (the command line, in a subprocess where the command is microdit-train). Each case must
end in a one-line error (no traceback) that names the file, key or field and what was expected,
with nothing already written lost or changed.

With MICRODIT_BATTERY_TABLE=path the battery also writes its table (case, message) there.
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from microdit.cli import bench as bench_cli
from microdit.cli import cpu_ablation
from microdit.cli import data as data_cli
from microdit.cli import eval as eval_cli
from microdit.cli import results as results_cli
from microdit.cli import sample as sample_cli
from microdit.data import load_manifest
from microdit.data.encode import build_synthetic_dataset
from microdit.data.manifest import save_manifest
from microdit.data.shards import ShardWriter, iter_shard, npy_bytes
from microdit.data.synthetic import SyntheticRecipe
from microdit.eval.results import read_csv
from microdit.job_runs import train_and_evaluate
from microdit.pipeline import compose_job, job_configs

from conftest import FIXTURE_DIR, fixture_script
from train_helpers import TWO_STAGES, base_overrides

pytestmark = pytest.mark.slow
TABLE: list[tuple[str, str]] = []


def snapshot(*folders: Path) -> dict[str, bytes]:
    """Every file under ``folders`` with its bytes (to show nothing was lost or changed)."""
    return {str(p): p.read_bytes() for f in folders if f.exists() for p in sorted(Path(f).rglob("*")) if p.is_file()}


def one_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert lines, "no error message"
    assert "Traceback" not in text, text[-2000:]
    return lines[-1]


def cli_error(main, argv: list[str], capsys) -> str:
    """Run a microdit console command in-process; it must exit non-zero with one line."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    captured = capsys.readouterr()
    code = exc.value.code
    text = code if isinstance(code, str) else captured.err
    assert code not in (0, None)
    return one_line(text)


def train_error(overrides: list[str], cwd: Path | None = None) -> str:
    """Run microdit-train in a subprocess; it must fail with exit code 2 and one line on stderr."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-m", "microdit.cli.train", *overrides], capture_output=True, text=True,
                            env=env, timeout=600, cwd=cwd)
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    return one_line(result.stderr)


def record(case: str, message: str, *expected: str) -> None:
    for part in expected:
        assert part in message, (case, message)
    TABLE.append((case, message))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A small latent dataset, a finished two-stage run on it, and a folder for scratch copies."""
    tmp = tmp_path_factory.mktemp("battery")
    data = tmp / "data"
    build_synthetic_dataset(SyntheticRecipe(str(data), 48, 32, 0, "pixel:2", "offline:128:32"), progress=False)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-m", "microdit.cli.train", *base_overrides(tmp, data, "done")], check=True,
                   env=env, capture_output=True, timeout=600)
    yield {"tmp": tmp, "data": data, "run": tmp / "runs" / "done"}
    table = os.environ.get("MICRODIT_BATTERY_TABLE")
    if table:
        rows = "\n".join(f"| {case} | `{msg}` |" for case, msg in TABLE)
        Path(table).write_text(f"| case | message |\n|---|---|\n{rows}\n")


def copy_dataset(world, name: str) -> Path:
    dst = world["tmp"] / name
    shutil.copytree(world["data"], dst)
    return dst


def rewrite_first_shard(folder: Path, change) -> None:
    """Rewrite shard 0 with ``change(key, members) -> members`` and record it in the manifest."""
    manifest = load_manifest(folder)
    info = manifest.shards[0]
    samples = list(iter_shard(folder / info.name))
    with ShardWriter(folder / info.name) as writer:
        for i, (key, members) in enumerate(samples):
            writer.write(key, change(i, dict(members)))
        manifest.shards[0] = writer.close()
    save_manifest(folder, manifest)


# -- data --------------------------------------------------------------------------------------------

def test_truncated_shard(world, capsys):
    folder = copy_dataset(world, "truncated")
    shard = folder / load_manifest(folder).shards[0].name
    shard.write_bytes(shard.read_bytes()[:1000])
    msg = cli_error(data_cli.main, ["verify", str(folder)], capsys)
    record("truncated shard (`microdit-data verify`)", msg, shard.name, "size or sha256")
    msg = train_error(base_overrides(world["tmp"], folder, "t-trunc"))
    record("truncated shard (`microdit-train`)", msg, shard.name, "size or sha256")


def test_corrupted_shard(world, capsys):
    folder = copy_dataset(world, "corrupt")
    shard = folder / load_manifest(folder).shards[0].name
    raw = bytearray(shard.read_bytes())
    raw[2000] ^= 0xFF  # same size, other bytes
    shard.write_bytes(bytes(raw))
    msg = cli_error(data_cli.main, ["verify", str(folder)], capsys)
    record("corrupted shard, same size", msg, shard.name, "sha256")


def test_shard_missing_a_member(world):
    folder = copy_dataset(world, "member")
    rewrite_first_shard(folder, lambda i, m: {k: v for k, v in m.items() if not (i == 3 and k == "text.npy")})
    msg = train_error(base_overrides(world["tmp"], folder, "t-member"))
    record("sample without its text.npy", msg, "lacks", "text.npy")


def test_skipped_bad_samples_are_counted(world):
    folder = copy_dataset(world, "member-skip")
    rewrite_first_shard(folder, lambda i, m: {k: v for k, v in m.items() if not (i == 3 and k == "text.npy")})
    run = world["tmp"] / "runs" / "t-skip"
    result = subprocess.run([sys.executable, "-m", "microdit.cli.train",
                             *base_overrides(world["tmp"], folder, "t-skip"), "data.skip_bad_samples=true"],
                            capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    line = next(x for x in result.stderr.splitlines() + result.stdout.splitlines() if "unreadable sample" in x)
    record("data.skip_bad_samples: a sample without its text.npy", line, "unreadable sample(s) skipped")
    rows = [json.loads(x) for x in (run / "stats.jsonl").read_text().splitlines() if '"pretrain"' in x]
    skipped = int(line.split(": ")[1].split()[0])  # once per epoch: 64 images of 48 samples read it twice
    assert skipped == 2 and rows[-1]["bad_samples"] == skipped  # each log row: skipped so far in its stage


def test_nan_latents(world):
    folder = copy_dataset(world, "nan")

    def poison(i, members):
        latent = np.load(__import__("io").BytesIO(members["latent.npy"]))
        latent[0, 0, 0] = np.nan
        return {**members, "latent.npy": npy_bytes(latent)}

    rewrite_first_shard(folder, poison)
    msg = train_error(base_overrides(world["tmp"], folder, "t-nan"))
    record("NaN in the latents", msg, "latent contains NaN or Inf")


def test_manifest_sample_count_mismatch(world, capsys):
    folder = copy_dataset(world, "count")
    values = json.loads((folder / "manifest.json").read_text())
    values["samples"] += 5
    (folder / "manifest.json").write_text(json.dumps(values))
    msg = cli_error(data_cli.main, ["verify", str(folder)], capsys)
    record("manifest sample count != shards", msg, "manifest.json", "samples is 53")


def test_manifest_without_shards(world, capsys):
    folder = copy_dataset(world, "noshards")
    values = json.loads((folder / "manifest.json").read_text())
    values["shards"] = []
    (folder / "manifest.json").write_text(json.dumps(values))
    msg = cli_error(data_cli.main, ["verify", str(folder)], capsys)
    record("manifest with no shard list", msg, "manifest.json", "must list its shards")


def test_dataset_that_does_not_fit_the_model(world):
    msg = train_error(base_overrides(world["tmp"], world["data"], "t-fit") + ["model=micro",
                                                                               "model.overrides.caption_dim=256"])
    record("dataset does not fit the model (caption width)", msg, "caption width 128 != model caption_dim 256")


def image_folder(root: Path, files: dict[str, bytes | Image.Image]) -> Path:
    for name, content in files.items():
        path = root / "cat" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            content.save(path)
    return root


def test_folder_build_bad_images(world, capsys, tmp_path):
    good = Image.new("RGB", (64, 64), (200, 10, 10))
    for name, bad, expected in (("zero-byte image", b"", "0.jpg: not a readable image"),
                                ("non-image file named .jpg", b"hello, not a JPEG", "0.jpg: not a readable image")):
        root = image_folder(tmp_path / name.replace(" ", "_"), {"0.jpg": bad, "1.png": good})
        out = tmp_path / (root.name + "-out")
        msg = cli_error(data_cli.main, ["cifar-captions", str(out), "--from-folder", str(root), "--size", "32",
                                        "--min-side", "32"], capsys)
        record(f"folder build: {name}", msg, *expected.split(": ", 1))
        assert not out.exists()  # nothing half-written is left behind: rerun after fixing the file
    # grayscale is converted to RGB, too-small images are skipped and counted, a .txt beside them is ignored
    root = image_folder(tmp_path / "mixed", {"0.png": good, "1.png": Image.new("L", (64, 64), 128),
                                              "2.png": Image.new("RGB", (16, 16)), "notes.txt": b"not an image"})
    data_cli.main(["cifar-captions", str(tmp_path / "mixed-out"), "--from-folder", str(root), "--size", "32",
                   "--min-side", "32"])
    out = capsys.readouterr().out
    record("folder build: grayscale + too-small images", one_line(out), "wrote 2 samples", "'too_small': 1")


def test_synthetic_into_an_existing_dataset(world, capsys):
    target = world["data"].with_name("data-images")
    before = snapshot(target)
    msg = cli_error(data_cli.main, ["synthetic", str(target), "--num-samples", "8"], capsys)
    record("`microdit-data synthetic` into an existing dataset", msg, str(target), "not empty")
    assert snapshot(target) == before


def test_synthetic_scene_into_a_dataset_of_another_scene(world):
    images = world["data"].with_name("data-images")
    before = snapshot(world["data"], images)
    overrides = [o for o in base_overrides(world["tmp"], world["data"], "scene") if not o.startswith("data.prepare=")]
    msg = train_error([*overrides, "data.prepare=synthetic", "data.prepare_scene=one_object"])
    record("`microdit-train` data.prepare_scene=one_object on a folder of the mixed scene", msg, str(images),
           "holds synthetic(seed=0), not synthetic(seed=0, scene=one_object)")
    msg = train_error([*overrides, "data.prepare=synthetic", "data.prepare_seed=5"])
    record("`microdit-train` another data.prepare_seed on a built folder", msg, "not synthetic(seed=5)")
    assert snapshot(world["data"], images) == before


def test_encode_into_a_non_empty_folder(world, capsys):
    dst = world["tmp"] / "enc-dst"
    dst.mkdir()
    (dst / "latents-00000.tar").write_bytes(b"someone's data")
    before = snapshot(dst)
    msg = cli_error(data_cli.main, ["encode", str(world["data"].with_name("data-images")), str(dst)], capsys)
    record("encode into a non-empty folder without manifest", msg, str(dst), "no manifest.json")
    assert snapshot(dst) == before


def test_encode_over_another_encoding(world, capsys):
    before = snapshot(world["data"])
    msg = cli_error(data_cli.main, ["encode", str(world["data"].with_name("data-images")), str(world["data"]),
                                    "--text-encoder", "offline:64:32"], capsys)
    record("encode into a dataset of another encoding", msg, "already holds a different encoding")
    assert snapshot(world["data"]) == before


# -- configs -----------------------------------------------------------------------------------------

CONFIG_CASES = [
    ("mask ratio 1.0", ["stages.pretrain.mask.ratio=1.0"], "ratio must be in [0, 1), got 1.0"),
    ("mask ratio 1.5", ["stages.pretrain.mask.ratio=1.5"], "ratio must be in [0, 1), got 1.5"),
    ("batch not divisible by processes x accumulation", ["trainer.batch_size=10", "trainer.grad_accum=3"],
     "batch_size"),
    ("both images and steps", ["stages.pretrain.steps=10"], "exactly one of"),
    ("negative learning rate", ["stages.pretrain.lr=-1e-3"], "lr must be > 0"),
    ("NaN learning rate", ["optim.lr=nan"], "optim.lr must be a finite number, got nan"),
    ("unknown preset", ["model.preset=giant"], "unknown model preset 'giant'"),
    ("unknown experiment", ["experiment=fig99"], "no config 'fig99' in group experiment (built in: beta2 "),
    ("unknown key", ["+trainer.bogus=1"], "unknown config key(s) ['trainer.bogus']"),
    ("mistyped key", ["trainer.bogus=1"], "Could not override 'trainer.bogus'. (Key 'bogus' not in 'TrainerConfig')"),
    ("a word for an integer", ["trainer.batch_size=abc"], "trainer.batch_size=abc (Value 'abc' of type 'str' could "
     "not be converted to Integer"),
    ("a word for the seed", ["trainer.seed=abc"], "Value 'abc' of type 'str' could not be converted to Integer"),
    ("trainer.device=cuda without a GPU", ["trainer.device=cuda"], "sees no CUDA device"),
    ("unknown synthetic scene", ["data.prepare_scene=circles"], "prepare_scene must be one of ('mixed', 'one_object'), "
     "got 'circles'"),
]


@pytest.mark.parametrize("case,overrides,expected", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_invalid_config(world, case, overrides, expected):
    run = world["tmp"] / "runs" / f"cfg-{len(TABLE)}"
    msg = train_error(base_overrides(world["tmp"], world["data"], run.name) + overrides)
    record(f"`microdit-train` {case}", msg, expected)
    assert not (run / "checkpoints").exists()


def test_cfg_job_validates(world):
    msg = train_error(["--cfg", "job", "stages.pretrain.mask.ratio=1.5"])
    record("`microdit-train --cfg job` with mask ratio 1.5", msg, "ratio must be in [0, 1), got 1.5")


def test_sweep_with_a_bad_point(world):
    """Every point of a -m sweep is validated before the first job runs: nothing is trained."""
    run = world["tmp"] / "runs" / "bad-sweep"
    sweep = "stages.pretrain.mask.ratio=0.5,1.5"
    msg = train_error(["-m", *base_overrides(world["tmp"], world["data"], run.name), sweep])
    record("`microdit-train -m` sweep with one bad point (mask ratio 0.5,1.5)", msg,
           "sweep point", "stages.pretrain.mask.ratio=1.5", "ratio must be in [0, 1), got 1.5")
    assert not list((world["tmp"] / "runs").glob("bad-sweep*"))


def test_slurm_launcher_without_its_plugin(world, monkeypatch, capsys):
    """hydra/launcher=submitit_slurm without the slurm extra: one line naming the extra to install."""
    from microdit.cli import train as train_cli

    run = world["tmp"] / "runs" / "no-plugin"
    monkeypatch.setitem(sys.modules, "hydra_plugins.hydra_submitit_launcher", None)  # import fails
    monkeypatch.setattr(sys, "argv", ["microdit-train", "-m", "hydra/launcher=submitit_slurm",
                                      *base_overrides(world["tmp"], world["data"], run.name)])
    msg = cli_error(lambda argv: train_cli.cli(), [], capsys)
    record("`microdit-train -m hydra/launcher=submitit_slurm` without the plugin", msg,
           "hydra/launcher=submitit_slurm", "pip install 'microdit[slurm]'")
    assert not run.exists()


def test_slurm_launcher_off_a_slurm_cluster(world, monkeypatch, capsys):
    """hydra/launcher=submitit_slurm where SLURM is not (no srun on PATH, as on this machine and a
    laptop): one line before anything is composed or submitted, not submitit's traceback."""
    from microdit.cli import train as train_cli

    run = world["tmp"] / "runs" / "no-slurm"
    monkeypatch.setenv("PATH", str(world["tmp"] / "empty-bin"))  # no srun
    monkeypatch.setattr(sys, "argv", ["microdit-train", "-m", "hydra/launcher=submitit_slurm",
                                      "hydra.launcher.tasks_per_node=8",
                                      *base_overrides(world["tmp"], world["data"], run.name)])
    msg = cli_error(lambda argv: train_cli.cli(), [], capsys)
    record("`microdit-train -m hydra/launcher=submitit_slurm` off a SLURM cluster", msg,
           "hydra/launcher=submitit_slurm submits to SLURM", "no srun on its PATH", "hydra/launcher=submitit_local")
    assert not run.exists()


# -- runs and checkpoints ----------------------------------------------------------------------------

def test_truncated_checkpoint(world):
    run = world["tmp"] / "runs" / "trunc-ckpt"
    shutil.copytree(world["run"], run)
    state = sorted((run / "checkpoints").iterdir())[-1] / "state.pt"
    state.write_bytes(state.read_bytes()[:100])
    msg = train_error(base_overrides(world["tmp"], world["data"], run.name))
    older = sorted((run / "checkpoints").iterdir())[-2]
    record("truncated state.pt on resume", msg, str(state.parent), f"trainer.resume={older}")


def test_resume_from_a_missing_path(world):
    msg = train_error(base_overrides(world["tmp"], world["data"], "resume-missing") +
                      [f"trainer.resume={world['tmp'] / 'nowhere'}"])
    record("trainer.resume=<path that does not exist>", msg, "nowhere does not exist")


def test_resume_with_another_batch_size(world):
    run = world["tmp"] / "runs" / "rebatch"
    shutil.copytree(world["run"], run)
    shutil.rmtree(sorted((run / "checkpoints").iterdir())[-1])  # resume at the end of pretrain
    before = snapshot(run / "checkpoints")
    msg = train_error(base_overrides(world["tmp"], world["data"], run.name) + ["trainer.batch_size=16"])
    record("resume with another batch size", msg, "trainer.batch_size: 8 -> 16", "mix two runs", "trainer.init_from=")
    assert snapshot(run / "checkpoints") == before


def test_resume_with_another_stage_length(world):
    run = world["tmp"] / "runs" / "restage"
    shutil.copytree(world["run"], run)
    shutil.rmtree(sorted((run / "checkpoints").iterdir())[-1])
    before = snapshot(run)
    longer = TWO_STAGES.replace("images: 32", "images: 48")
    msg = train_error(base_overrides(world["tmp"], world["data"], run.name, [longer]))
    record("resume with a longer fine-tune (another budget)", msg, "stages.finetune.images: 32 -> 48",
           str(run / "checkpoints"))
    assert snapshot(run) == before


def test_cpu_job_rerun_with_another_budget(world, capsys, tmp_path):
    """A finished run under the job's --out with another config is not reported as this job's."""
    first = job_configs(compose_job("main"), tmp_path, ["trainer.budget_flops=1e12"])[0]
    run = Path(first.trainer.run_dir) / first.trainer.name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(first)))
    before = snapshot(tmp_path)
    msg = cli_error(cpu_ablation.main, ["--out", str(tmp_path), "--budget-flops", "2e12"], capsys)
    record("`microdit-cpu-ablation` rerun into an --out with another budget", msg, str(run),
           "trainer.budget_flops: 1000000000000.0 -> 2000000000000.0", "another --out")
    assert snapshot(tmp_path) == before


def test_unwritable_run_dir(world):
    if os.geteuid() == 0:  # root writes anywhere: use a path under a regular file instead
        blocker = world["tmp"] / "a-file"
        blocker.write_text("x")
        run_dir = blocker / "runs"
    else:
        run_dir = world["tmp"] / "ro"
        run_dir.mkdir()
        run_dir.chmod(0o500)
    msg = train_error(base_overrides(world["tmp"], world["data"], "w") + [f"trainer.run_dir={run_dir}"])
    record("unwritable run directory", msg, "not writable")


def test_run_in_use_by_another_trainer(world, lock_holder):
    holder = lock_holder(world["run"] / ".lock")
    before = snapshot(world["run"])
    msg = train_error(base_overrides(world["tmp"], world["data"], "done"))
    record("a run another trainer is using (same sweep launched twice)", msg,
           f"run {world['run']} is in use by pid {holder.pid} on host", f"delete {world['run'] / '.lock'}")
    assert snapshot(world["run"]) == before
    holder.kill()
    holder.wait()
    (world["run"] / ".lock").unlink()


def test_sample_bad_paths(world, capsys, tmp_path):
    msg = cli_error(sample_cli.main, [str(tmp_path / "nowhere"), "--prompt", "a red circle"], capsys)
    record("`microdit-sample` a path that does not exist", msg, "nowhere", "does not exist")
    (tmp_path / "empty-run").mkdir()
    msg = cli_error(sample_cli.main, [str(tmp_path / "empty-run"), "--prompt", "a red circle"], capsys)
    record("`microdit-sample` a run without checkpoints", msg, "empty-run", "neither a checkpoint folder")


SAMPLE_OPTION_CASES = [
    ("--cfg-scale nan", ["--cfg-scale", "nan"], "cfg_scale must be a finite number >= 0"),
    ("--batch-size 0", ["--batch-size", "0"], "argument --batch-size: expected an integer >= 1, got '0'"),
    ("a device torch does not know", ["--device", "tpu0"], "device 'tpu0' is not a torch device"),
    ("--init-image that is not an image", ["--init-image", "PROMPTS"],
     "--init-image PROMPTS cannot be read as an image"),
    ("an empty --prompts-file", ["--prompts-file", "PROMPTS"], "has no prompts"),
    ("--out that is a file", ["--out", "PROMPTS"], "is a file, not a folder"),
    ("--sigma-start without --init-image", ["--sigma-start", "1"],
     "--sigma-start 1.0 is the noise level an --init-image is taken to"),
]


@pytest.mark.parametrize("case,extra,expected", SAMPLE_OPTION_CASES, ids=[c[0] for c in SAMPLE_OPTION_CASES])
def test_sample_bad_options(world, capsys, tmp_path, case, extra, expected):
    empty = tmp_path / "prompts.txt"
    empty.write_text("\n  \n")
    argv = [str(world["run"]), "--prompt", "a red circle", "--steps", "2", "--out", str(tmp_path / "out")]
    msg = cli_error(sample_cli.main, argv + [str(empty) if a == "PROMPTS" else a for a in extra], capsys)
    record(f"`microdit-sample` {case}", msg, expected.replace("PROMPTS", str(empty)))
    assert not (tmp_path / "out").exists()


def test_sample_into_a_folder_of_samples(world, capsys, tmp_path):
    argv = [str(world["run"]), "--prompt", "a red circle", "--steps", "2", "--out", str(tmp_path / "out")]
    sample_cli.main(argv)
    before = snapshot(tmp_path / "out")
    msg = cli_error(sample_cli.main, argv + ["--seed", "5"], capsys)
    record("`microdit-sample` into a folder that holds samples", msg, str(tmp_path / "out"), "already holds samples")
    assert snapshot(tmp_path / "out") == before
    plain = tmp_path / "plain"
    plain.write_text("x")
    msg = cli_error(sample_cli.main, argv[:-1] + [str(plain / "out")], capsys)
    record("`microdit-sample` --out under a file", msg, f"--out {plain / 'out'} cannot be created: {plain} is a file")


def test_two_samplers_into_one_folder(world, capsys, tmp_path, monkeypatch):
    """Two microdit-sample commands started at once into one new folder: the one that finds the
    other sampling there is refused before it samples; one that gets the lock after the other has
    written its samples is refused by the same check as a folder of samples, the other's files kept."""
    out = tmp_path / "out"
    argv = [str(world["run"]), "--prompt", "a red circle", "--steps", "2", "--out", str(out)]
    out.mkdir()
    other = {"host": socket.gethostname(), "pid": os.getppid(), "since": 0.0, "token": "other"}  # alive
    (out / sample_cli.LOCK).write_text(json.dumps(other))
    msg = cli_error(sample_cli.main, argv, capsys)
    record("`microdit-sample` into a folder another microdit-sample is writing to", msg,
           f"--out {out} (microdit-sample writing its samples there) is in use by pid {os.getppid()}")
    assert os.listdir(out) == [sample_cli.LOCK]
    (out / sample_cli.LOCK).unlink()
    acquire = sample_cli.acquire

    def finished_meanwhile(*args, **kwargs):
        (out / "prompts.txt").write_text("the other's\n")
        return acquire(*args, **kwargs)

    monkeypatch.setattr(sample_cli, "acquire", finished_meanwhile)
    msg = cli_error(sample_cli.main, argv, capsys)
    assert f"--out {out} already holds samples (prompts.txt)" in msg
    assert os.listdir(out) == ["prompts.txt"] and (out / "prompts.txt").read_text() == "the other's\n"


def test_sample_on_a_full_disk(world, capsys, tmp_path, monkeypatch):
    """The disk fills after the first image: one line naming the file that could not be written, and
    none of this command's files left (a folder with some would refuse the next try)."""
    from microdit import files

    writes = {"n": 0}
    fsync = files.os.fsync

    def filling(fd):
        writes["n"] += 1
        if writes["n"] > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        fsync(fd)

    argv = [str(world["run"]), "--prompt", "a red circle", "--prompt", "a blue square", "--steps", "2", "--out",
            str(tmp_path / "out")]
    monkeypatch.setattr(files.os, "fsync", filling)
    msg = cli_error(sample_cli.main, argv, capsys)
    record("`microdit-sample` on a disk that fills", msg, f"{tmp_path / 'out' / '0001.png'} could not be written "
           "(No space left on device; is the disk or your quota full?)")
    assert list((tmp_path / "out").iterdir()) == []
    monkeypatch.setattr(files.os, "fsync", fsync)  # space freed: the same command samples
    sample_cli.main(argv)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0000.png", "0001.png", "grid.png", "prompts.txt",
                                                                 "sampling.json"]


def test_eval_bad_options(world, capsys):
    argv = ["run", str(world["run"]), "--dataset", str(world["data"]), "--num-samples", "2"]
    before = snapshot(world["run"])
    msg = cli_error(eval_cli.main, argv + ["--num-samples", "0"], capsys)
    record("`microdit-eval` --num-samples 0", msg, "argument --num-samples: expected an integer >= 1")
    msg = cli_error(eval_cli.main, argv + ["--device", "cuda:x"], capsys)
    record("`microdit-eval` a device torch does not know", msg, "device 'cuda:x' is not a torch device")
    msg = cli_error(eval_cli.main, argv + ["--name", "a/b"], capsys)
    record("`microdit-eval` --name with a slash", msg, "evaluation name 'a/b' must be a plain name")
    other = world["tmp"] / "other-captions"  # the same images, captions of another width
    build_synthetic_dataset(SyntheticRecipe(str(other), 8, 32, 0, "pixel:2", "offline:64:32"), progress=False)
    msg = cli_error(eval_cli.main, ["run", str(world["run"]), "--dataset", str(other), "--num-samples", "2"], capsys)
    record("`microdit-eval` a dataset of another text encoder", msg, str(other), "offline:64:32 captions",
           "caption width 64 != model caption_dim 128")
    msg = cli_error(eval_cli.main, argv + ["--probe-dataset", str(world["tmp"] / "nowhere")], capsys)
    record("`microdit-eval` a --probe-dataset that does not exist", msg, "probe dataset", "nowhere", "does not exist")
    assert snapshot(world["run"]) == before


def test_eval_whose_weights_cannot_be_had_stops_before_generating(world, capsys, tmp_path, monkeypatch):
    """FID's InceptionV3 that cannot be fetched (no network here: its download raised as urllib
    raises it) or read ends the evaluation before one sample is generated, not after."""
    import urllib.error

    import torch_fidelity.feature_extractor_inceptionv3 as fe

    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    argv = ["run", str(run), "--dataset", str(world["data"]), "--num-samples", "2", "--steps", "2", "--metrics", "fid"]
    msg = cli_error(eval_cli.main, argv + ["--inception-weights", str(tmp_path / "nope.pth")], capsys)
    record("`microdit-eval` --inception-weights that is not a file", msg, "nope.pth is not a file")

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(fe, "load_state_dict_from_url", no_network)
    msg = cli_error(eval_cli.main, argv, capsys)
    record("`microdit-eval` FID's weights without network", msg, "FID's InceptionV3", "cannot be fetched",
           "--inception-weights FILE")
    assert not list(run.rglob("samples-*.pt"))  # nothing generated


@pytest.fixture(scope="module")
def real_latents(tmp_path_factory) -> Path:
    """A real dataset as a user prepares one: JourneyDB's download layout (file names, no
    categorical label) through microdit-data prepare and encode, at nano's 32 px and encoders."""
    tmp = tmp_path_factory.mktemp("real")
    fixture_script("make_source_fixtures").main(tmp / "raw", ["jdb"])
    data_cli.main(["prepare", "jdb", str(tmp / "jdb"), "--from", str(tmp / "raw" / "jdb")])
    data_cli.main(["encode", str(tmp / "jdb"), str(tmp / "jdb-latents"), "--resolutions", "32", "--device", "cpu"])
    return tmp / "jdb-latents"


def test_eval_whose_probe_dataset_has_no_labels_stops_before_generating(world, real_latents, capsys, tmp_path):
    """A prepared real dataset as the probe dataset of the default probe metrics: one line naming it
    before any sample is generated."""
    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    msg = cli_error(eval_cli.main, ["run", str(run), "--dataset", str(world["data"]), "--num-samples", "2",
                                    "--steps", "2", "--probe-dataset", str(real_latents)], capsys)
    record("`microdit-eval` a probe dataset without labels", msg, f"probe dataset {real_latents}",
           "no categorical attribute", "metrics that need no labels (fid, clip_fid, clip_score, kid)")
    assert not list(run.rglob("samples-*.pt"))  # nothing generated


def test_a_dataset_of_ones_own_under_the_synthetic_data_group(world, real_latents, capfd, tmp_path):
    """data.folders=[own latents] with the default data group (data.prepare=synthetic): refused in one
    line saying data.prepare=none, not trained on as if synthetic; a job (whose held-out and probe
    splits are synthetic draws) given --data of it is refused before it prepares or owns anything."""
    msg = train_error([*base_overrides(world["tmp"], real_latents, "own-data"), "data.prepare=synthetic"])
    record("`microdit-train` own data under data.prepare=synthetic", msg, f"{real_latents} holds the latents of",
           "(jdb: JourneyDB), not a synthetic dataset", "set data.prepare=none")
    assert not (world["tmp"] / "runs" / "own-data").exists()
    out = tmp_path / "out"
    msg = cli_error(cpu_ablation.main, ["--data", str(real_latents), "--seeds", "0", "--out", str(out)], capfd)
    record("`microdit-cpu-ablation --data` a dataset that is not synthetic", msg, f"dataset {real_latents} holds",
           "splits drawn by the synthetic generator", "microdit-eval run RUN --dataset")
    assert sorted(p.name for p in out.iterdir()) == []  # no job.json, no run folder
    assert not real_latents.with_name("jdb-latents-eval").exists()  # no synthetic split built beside it


def test_eval_of_a_run_trained_elsewhere(world, capsys, tmp_path, monkeypatch):
    """A run trained on a relative data path, evaluated from another folder: its default probe
    dataset (the run's training data) is not found, and the error says to give --probe-dataset."""
    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    for config in run.rglob("config.yaml"):
        config.write_text(config.read_text().replace(str(world["data"]), "data"))
    monkeypatch.chdir(tmp_path)
    msg = cli_error(eval_cli.main, ["run", str(run), "--dataset", str(world["data"]), "--num-samples", "2"], capsys)
    record("`microdit-eval` a run trained on a relative data path, from elsewhere", msg,
           "probe dataset (by default the run's training data", "give --probe-dataset", "data does not exist")


def test_eval_of_a_run_one_cannot_write(world, capsys, tmp_path, monkeypatch):
    """Another's run or a shared store: the evaluation writes into the run folder (RUN/eval/,
    metrics.json), so a folder the user cannot write is refused at once, not after the probe has
    trained and the samples are generated. (Tests may run as root, for whom every folder is
    writable: the folder is made unwritable as the system answers a user for it.)"""
    from microdit import files

    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    before = snapshot(run)
    access = files.os.access
    monkeypatch.setattr(files.os, "access", lambda path, mode: Path(path) != run and access(path, mode))
    msg = cli_error(eval_cli.main, ["run", str(run), "--dataset", str(world["data"]), "--num-samples", "2"], capsys)
    record("`microdit-eval` a run folder the user cannot write", msg, f"run {run} is not writable: an evaluation "
           f"keeps its samples in {run / 'eval'}", "copy the run to a folder you can write (cp -r)")
    assert snapshot(run) == before


def test_unknown_metric(world, capsys):
    msg = cli_error(eval_cli.main, ["run", str(world["run"]), "--dataset", str(world["data"]), "--metrics", "is"],
                    capsys)
    record("`microdit-eval` unknown metric", msg, "--metrics", "'is'", "probe")


RESULTS_CASES = [
    ("--metrics with a typo", ["--metrics", "cost.flop"], ("--metrics: no run has the column 'cost.flop'",
                                                           "closest: cost.flops")),
    ("--group-by a key no run has", ["--group-by", "trainer.nope"], ("--group-by", "'trainer.nope'")),
    ("--plot without X:Y", ["--plot", "cost.flops"], ("--plot 'cost.flops': expected X:Y",)),
    ("--out in a folder that does not exist", ["--out", "NOWHERE/r.csv"], ("nowhere", "does not exist")),
    ("--markdown in a folder that does not exist", ["--metrics", "cost.flops", "--markdown", "NOWHERE/t.md"],
     ("--markdown", "nowhere", "does not exist")),
    ("--contrasts of one value", ["--metrics", "cost.flops", "--group-by", "trainer.name", "--contrasts", "a vs"],
     ("--contrasts needs --group-by ARM[,STAGE] and 'A vs B' values of ARM",)),
    ("--margin without --contrasts", ["--margin", "cost.flops=1"], ("--margin needs --contrasts",)),
    ("--out under a file", ["--out", "RUN/config.yaml/r.csv"], ("config.yaml is a file, not a folder",)),
    ("--markdown without --metrics", ["--markdown", "t.md"], ("--markdown needs --metrics",)),
]


@pytest.mark.parametrize("case,extra,expected", RESULTS_CASES, ids=[c[0] for c in RESULTS_CASES])
def test_results_bad_options(world, capsys, tmp_path, case, extra, expected):
    extra = [a.replace("NOWHERE", str(tmp_path / "nowhere")).replace("RUN", str(world["run"])) for a in extra]
    msg = cli_error(results_cli.main, [str(world["run"].parent), "--out", str(tmp_path / "r.csv"), *extra], capsys)
    record(f"`microdit-results` {case}", msg, *expected)
    assert list(tmp_path.iterdir()) == []


def test_results_replace_their_own_output_and_no_other_file(world, capsys, tmp_path):
    """A results.csv or table gathered again replaces the last one; a file microdit-results did not
    write (a CSV of one's own, a README) is refused before anything is written."""
    argv = [str(world["run"].parent), "--metrics", "cost.flops", "--out", str(tmp_path / "r.csv"),
            "--markdown", str(tmp_path / "t.md")]
    results_cli.main(argv)
    first = snapshot(tmp_path)
    results_cli.main(argv)  # gathered again: its own output replaced
    assert snapshot(tmp_path) == first and f" runs -> {tmp_path / 'r.csv'}" in capsys.readouterr().out
    for option, name, text in (("--out", "mine.csv", "id,value\n1,2\n"), ("--markdown", "README.md", "# notes\n")):
        (tmp_path / name).write_text(text)
        before = snapshot(tmp_path)
        msg = cli_error(results_cli.main, [*argv[:-4], *((option, str(tmp_path / name)) if option == "--out" else (
            "--out", str(tmp_path / "new.csv"), option, str(tmp_path / name)))], capsys)
        record(f"`microdit-results` {option} a file it did not write", msg, f"{option} {tmp_path / name} exists and "
               "is not an output of microdit-results", "choose another path or delete it")
        assert snapshot(tmp_path) == before  # nothing written, nothing lost


def test_results_on_a_full_disk_keep_the_last_ones(world, capsys, tmp_path, monkeypatch):
    from microdit import files

    argv = [str(world["run"].parent), "--metrics", "cost.flops", "--out", str(tmp_path / "r.csv"),
            "--markdown", str(tmp_path / "t.md")]
    results_cli.main(argv)
    before = snapshot(tmp_path)

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "fsync", full)
    msg = cli_error(results_cli.main, argv, capsys)
    record("`microdit-results` on a full disk", msg, f"--out {tmp_path / 'r.csv'} could not be written (No space "
           "left on device; is the disk or your quota full?); what was there before is unchanged")
    assert snapshot(tmp_path) == before


def test_results_from_roots_that_are_not_folders(world, capsys, tmp_path):
    config = world["run"] / "config.yaml"
    msg = cli_error(results_cli.main, [str(tmp_path / "nowhere"), str(config), "--out", str(tmp_path / "r.csv")],
                    capsys)
    record("`microdit-results` from roots that are not folders", msg,
           f"no run folders (with config.yaml) under {tmp_path / 'nowhere'} (does not exist), {config} (is a file")
    assert list(tmp_path.iterdir()) == []


def test_data_bad_options(world, capsys, tmp_path):
    msg = cli_error(data_cli.main, ["encode", str(world["data"]), str(tmp_path / "enc"), "--autoencoder", "vqgan"],
                    capsys)
    record("`microdit-data encode` an unknown autoencoder", msg, "unknown autoencoder 'vqgan'")
    msg = cli_error(data_cli.main, ["synthetic", str(tmp_path / "syn"), "--size", "4"], capsys)
    record("`microdit-data synthetic` images of 4 px", msg, "argument --size: expected a side of at least 8 pixels",
           "got '4'")
    msg = cli_error(data_cli.main, ["synthetic", str(tmp_path / "syn"), "--size", "100000"], capsys)
    record("`microdit-data synthetic` images of 100000 px", msg, "argument --size: expected an image side of at most "
           "1024 pixels, got '100000'")
    msg = cli_error(data_cli.main, ["synthetic", str(tmp_path / "syn"), "--num-samples", "-3"], capsys)
    record("`microdit-data synthetic` --num-samples -3", msg, "argument --num-samples: expected an integer >= 1")
    # each of these asked for tens of GB per image: the kernel's out-of-memory kill (exit 137), not an error
    msg = cli_error(data_cli.main, ["cifar-captions", str(tmp_path / "cc"), "--from-folder", str(tmp_path / "none"),
                                    "--size", "100000"], capsys)
    record("`microdit-data cifar-captions` images of 100000 px", msg,
           "argument --size: expected an image side of at most 1024 pixels, got '100000'")
    msg = cli_error(data_cli.main, ["encode", str(world["data"]), str(tmp_path / "enc"), "--resolutions", "256",
                                    "99999"], capsys)
    record("`microdit-data encode` a resolution of 99999 px", msg, "argument --resolutions: expected an image side")
    msg = cli_error(data_cli.main, ["prepare", "cc12m", str(tmp_path / "cc12m"), "--from", str(tmp_path),
                                    "--max-side", "-5"], capsys)
    record("`microdit-data prepare` --max-side -5", msg, "argument --max-side: expected an integer >= 0, got '-5'")
    assert list(tmp_path.iterdir()) == []


def test_data_outputs_and_inputs_of_the_wrong_kind(world, capsys, tmp_path):
    """An output under a file, a file where a folder goes (or the reverse), and an input folder that
    is a file: one line naming the argument, before any work; nothing is written."""
    plain = tmp_path / "plain"
    plain.write_text("x")
    file_not_folder = "is a file, not a folder"
    cases = [
        (["synthetic", str(plain / "syn"), "--num-samples", "4"], "OUT", "cannot be created", file_not_folder),
        (["synthetic", str(plain), "--num-samples", "4"], f"OUT {plain} is a file, not a folder"),
        (["encode", str(world["data"]), str(plain), "--autoencoder", "pixel:2"], f"DST {plain} {file_not_folder}"),
        (["prepare", "jdb", str(tmp_path / "jdb"), "--raw-dir", str(plain / "raw")], "--raw-dir", "cannot be created"),
        (["inspect", str(world["data"]), "--grid", str(tmp_path)], f"--grid {tmp_path} is a folder, not a file"),
        (["inspect", str(plain)], f"dataset folder {plain} is a file, not a folder"),
        (["cifar-captions", str(tmp_path / "cc"), "--from-folder", str(plain)],
         f"image folder {plain} is a file, not a folder"),
        (["prepare", "jdb", str(tmp_path / "jdb"), "--from", str(plain)], f"raw folder {plain} {file_not_folder}"),
    ]
    for argv, *expected in cases:
        msg = cli_error(data_cli.main, argv, capsys)
        shown = " ".join(a.replace(str(tmp_path), "…") for a in argv[1:3])
        record(f"`microdit-data {argv[0]}` {shown}", msg, *expected)
        assert "[Errno" not in msg and "filter kept none" not in msg, msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain"] and plain.read_text() == "x"
    msg = cli_error(data_cli.main, ["inspect", str(world["data"]), "--grid", str(plain)], capsys)
    record("`microdit-data inspect` --grid an existing file", msg, f"--grid {plain} exists: choose another path or "
           "delete it; nothing was written")
    before = snapshot(world["data"])
    for command in (["synthetic", str(world["data"]), "--num-samples", "4"],
                    ["cifar-captions", str(world["data"]), "--from-folder", str(FIXTURE_DIR / "photos")]):
        with pytest.raises(SystemExit):
            data_cli.main(command)
        err = capsys.readouterr().err
        assert err.splitlines() == [f"microdit-data {command[0]}: error: {world['data']} is not empty (a dataset "
                                    "already there): write a new dataset into a new or empty folder; nothing was "
                                    "changed"]  # no progress bar
    assert plain.read_text() == "x" and snapshot(world["data"]) == before


def test_gpu_plan_bad_overrides(capsys, tmp_path):
    msg = cli_error(bench_cli.main, ["--out", str(tmp_path / "plan"), "--gpu-plan", "optim.lr=inf"], capsys)
    record("`microdit-bench --gpu-plan` optim.lr=inf", msg, "optim.lr must be a finite number, got inf")
    msg = cli_error(bench_cli.main, ["--out", str(tmp_path / "plan"), "--gpu-plan", "experiment=fig99"], capsys)
    record("`microdit-bench --gpu-plan` an unknown experiment", msg, "no config 'fig99' in group experiment")
    assert not (tmp_path / "plan").exists()  # a refused command leaves no folder behind
    plain = tmp_path / "plain"
    plain.write_text("x")
    msg = cli_error(bench_cli.main, ["--out", str(plain / "bench"), "--quick"], capsys)
    record("`microdit-bench` --out under a file", msg, f"--out {plain / 'bench'} cannot be created: {plain} is a "
           "file, not a folder")
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "bench.partial.json").write_text("{}")  # what a bench that failed kept
    msg = cli_error(bench_cli.main, ["--out", str(earlier), "--quick"], capsys)
    record("`microdit-bench` --out holding an earlier measurement", msg, f"--out {earlier} already holds "
           "bench.partial.json: choose another folder or delete them")
    assert [p.name for p in earlier.iterdir()] == ["bench.partial.json"]


def test_cpu_job_bad_seeds(capsys):
    msg = cli_error(cpu_ablation.main, ["--seeds", "0,one"], capsys)
    record("`microdit-cpu-ablation` --seeds 0,one", msg, "--seeds: expected comma-separated integers", "'0,one'")


def test_cpu_job_whose_data_does_not_fit_its_model(capfd, tmp_path, monkeypatch):
    """A job whose runs' dataset does not fit their network (the main job with captions of another
    width): one line before any worker starts, nothing owned or trained (was: one error per worker
    and 'run the job again to continue')."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    argv = ["--out", str(out), "--seeds", "0", "--data", str(tmp_path / "syn"), "eval.held_out_samples=32",
            "eval.num_samples=16", "eval.probe_samples=64", "--override", "data.prepare_samples=64",
            "--override", "encoder.text_encoder=offline:128:32"]
    msg = cli_error(cpu_ablation.main, argv, capfd)
    record("`microdit-cpu-ablation` a dataset that does not fit the job's model", msg, "does not fit the model",
           "caption width 128 != model caption_dim 384")
    assert sorted(p.name for p in out.iterdir()) == []  # no job.json, no run folder


def test_cpu_job_into_folders_it_cannot_write(capfd, tmp_path, monkeypatch):
    """A results folder or a run folder that cannot be created is refused in one line before
    anything is prepared; a worker that meets an error anyway (here: a run folder that became a
    file after the job was composed) ends in one labelled line, then the job in one line."""
    monkeypatch.chdir(tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    msg = cli_error(cpu_ablation.main, ["--out", str(blocker / "out")], capfd)
    record("`microdit-cpu-ablation` --out under a file", msg, f"results folder {blocker / 'out'}",
           f"cannot be created: {blocker} is a file, not a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # no dataset prepared, no folder made
    if Path("/proc/self").is_dir():  # Linux: no file can be made in /proc, whatever its permission bits say to root
        msg = cli_error(cpu_ablation.main, ["--out", "/proc/microdit-out"], capfd)
        record("`microdit-cpu-ablation` --out under /proc", msg, "results folder /proc/microdit-out",
               "cannot be created: /proc is not writable")
    out = tmp_path / "out"
    out.mkdir()
    (out / "seed1").write_text("x")  # where seed 1's run folders would go
    msg = cli_error(cpu_ablation.main, ["--out", str(out), "seeds=[0,1]"], capfd)
    record("`microdit-cpu-ablation` a run folder under a file", msg, f"run folder {out / 'seed1' / 'cpu-naive75'}",
           f"cannot be created: {out / 'seed1'} is a file, not a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "out"] and sorted(out.iterdir()) == [out / "seed1"]
    job = compose_job("main", ["seeds=[0,1]", "workers=2"])
    configs = job_configs(job, tmp_path / "later")
    for seed in (0, 1):
        (tmp_path / "later").mkdir(exist_ok=True)
        (tmp_path / "later" / f"seed{seed}").write_text("x")
    with pytest.raises(ValueError, match=r"job worker\(s\) \[0, 1\] failed \(the error is printed above\)"):
        train_and_evaluate(configs[:2], job)
    err = capfd.readouterr().err
    assert "Traceback" not in err, err[-2000:]
    for index in (0, 1):
        line = next(line for line in err.splitlines() if line.startswith(f"[worker {index}] error: "))
        record("`microdit-cpu-ablation` a worker's error (a run folder under a file)", line, "is not writable",
               "Not a directory")


def test_unknown_cpu_job(capsys):
    msg = cli_error(cpu_ablation.main, ["--job", "nope"], capsys)
    record("`microdit-cpu-ablation` unknown job", msg, "unknown job 'nope'", "main")
    msg = cli_error(cpu_ablation.main, ["eval.num_sample=3"], capsys)
    record("`microdit-cpu-ablation` a mistyped job key", msg, "job main", "Key 'num_sample' not in 'JobEval'")
    msg = cli_error(cpu_ablation.main, ["--workers", "-2"], capsys)
    record("`microdit-cpu-ablation` --workers -2", msg, "workers must be a positive integer or 0", "-2")
    msg = cli_error(cpu_ablation.main, ["--job", "crossover", "budgets=[1e12,-1e12]"], capsys)
    record("`microdit-cpu-ablation` a negative budget", msg, "job crossover", "budgets must be distinct positive")


@pytest.mark.parametrize("text, where", [("experiments: [cpu_masking_naive75\n", "line 2, column 1"),
                                         ("experiments:\n  - a\n  b: 2\n", "line 3, column 3"),
                                         ("\tseeds: [0]\n", "line 1, column 1")])
def test_a_job_file_that_is_not_yaml(text, where, capsys, tmp_path):
    """A job file with a YAML syntax error (an unclosed list, a key inside a list, a tab) is named
    with the line and column of the fault, in one line, not with the YAML parser's traceback."""
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    msg = cli_error(cpu_ablation.main, ["--job", str(path), "--out", str(tmp_path / "out")], capsys)
    record("`microdit-cpu-ablation` a job file with a YAML syntax error", msg, f"job {path}: not valid YAML",
           f'in "{path}", {where}')
    assert sorted(tmp_path.iterdir()) == [path]


def test_manifest_fields_of_the_wrong_kind(world, capsys):
    folder = copy_dataset(world, "shardcount")
    values = json.loads((folder / "manifest.json").read_text())
    values["shards"][0]["samples"] += 5
    values["samples"] += 5  # a right-looking total over a wrong shard count
    (folder / "manifest.json").write_text(json.dumps(values))
    msg = cli_error(data_cli.main, ["verify", str(folder)], capsys)
    record("manifest: one shard's count is wrong", msg, values["shards"][0]["name"], "its manifest entry says")
    values["samples"] -= 5
    (folder / "manifest.json").write_text(json.dumps(values))
    msg = cli_error(data_cli.main, ["inspect", str(folder)], capsys)
    record("manifest: total and shard counts disagree", msg, "shards[].samples add up to", "shards[0].samples=")
    values = json.loads((world["data"] / "manifest.json").read_text()) | {"latent_shape": "12x16x16"}
    (folder / "manifest.json").write_text(json.dumps(values))
    msg = cli_error(data_cli.main, ["inspect", str(folder)], capsys)
    record("manifest: a string latent_shape", msg, "latent_shape must be a list of 3 positive integers, got '12x16x16'")


def test_an_image_dataset_as_training_data(world):
    images = world["data"].with_name("data-images")
    msg = train_error(base_overrides(world["tmp"], images, "on-images"))
    record("data.folders given an image dataset", msg, f"dataset {images} holds images, not latents",
           "microdit-data encode")
    assert not (world["tmp"] / "runs" / "on-images").exists()  # a refused run leaves no empty folder


def test_a_damaged_metrics_file(world, capsys, tmp_path):
    runs_dir = tmp_path / "runs"
    for name in ("good", "bad"):
        shutil.copytree(world["run"], runs_dir / name)
    (runs_dir / "bad" / "metrics.json").write_text('{"entries": [')
    results_cli.main([str(runs_dir), "--out", str(tmp_path / "r.csv")])
    err = capsys.readouterr().err
    record("`microdit-results` over a damaged metrics.json", one_line(err), str(runs_dir / "bad" / "metrics.json"),
           "read without metrics")
    assert (tmp_path / "r.csv").is_file()
    eval_cli.main(["run", str(runs_dir / "bad"), "--dataset", str(world["data"]), "--num-samples", "2", "--steps",
                   "2", "--probe-steps", "5"])
    err = capsys.readouterr().err
    record("`microdit-eval` into a damaged metrics.json", one_line(err), "kept as", "metrics.json.damaged-")
    assert [p.read_text() for p in (runs_dir / "bad").glob("metrics.json.damaged-*")] == ['{"entries": [']


@pytest.mark.parametrize("file, text, expected, then", [
    ("metrics.json", '{"entries": [{"name": 3}]}', "entries[0].name: expected a string, got 3", "read without metrics"),
    ("metrics.json", '{"entries": [{"name": "ev", "nimg": "96"}]}', "entries[0].nimg: expected an integer, got '96'",
     "read without metrics"),
    ("metrics.json", "[]", 'expected an object {"entries": [...]}', "read without metrics"),
    ("summary.json", "{bad", "Expecting property name", "read without its cost"),
    ("summary.json", "[1, 2]", "it holds a list, not a mapping", "read without its cost"),
    ("config.yaml", "a: [b", "line 1, column 4", "left out of the table"),
    ("config.yaml", "- 1", "it holds a list, not a mapping", "left out of the table")])
def test_a_runs_damaged_file_leaves_the_table_of_the_others(world, capsys, tmp_path, file, text, expected, then):
    """microdit-results over runs one of which has a hand-edited or foreign file: a warning naming
    it, and the table of the others (and of what the damaged run still has)."""
    runs_dir = tmp_path / "runs"
    for name in ("good", "bad"):
        shutil.copytree(world["run"], runs_dir / name)
    eval_cli.main(["run", str(runs_dir / "good"), "--dataset", str(world["data"]), "--num-samples", "2", "--steps",
                   "2", "--probe-steps", "5"])
    (runs_dir / "bad" / file).write_text(text)
    capsys.readouterr()
    results_cli.main([str(runs_dir), "--out", str(tmp_path / "r.csv")])
    err = capsys.readouterr().err
    record(f"`microdit-results` over a {file} holding {text}", one_line(err.split("warning: ")[1]),
           f"{runs_dir / 'bad' / file} is not a readable", expected, then)
    rows = {row["run"]: row for row in read_csv(tmp_path / "r.csv")}
    assert "eval.data.probe_fd" in rows["good"] and "cost.flops" in rows["good"]
    assert ("bad" in rows) == (file != "config.yaml")


def test_truncated_generated_chunk_and_export(world, capsys, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    argv = ["run", str(run), "--dataset", str(world["data"]), "--num-samples", "2", "--steps", "2",
            "--probe-steps", "5"]
    eval_cli.main(argv)
    capsys.readouterr()
    chunk = next((run / "eval").rglob("samples-0000000-*.pt"))
    chunk.write_bytes(chunk.read_bytes()[:50])
    msg = cli_error(eval_cli.main, argv, capsys)
    record("`microdit-eval` a truncated generated chunk", msg, str(chunk), "delete it")
    export = sorted((run / "checkpoints").iterdir())[-1]
    (tmp_path / "export").mkdir()
    for name in ("model.safetensors", "config.json"):
        shutil.copy(export / name, tmp_path / "export" / name)
    weights = tmp_path / "export" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    msg = cli_error(sample_cli.main, [str(tmp_path / "export"), "--prompt", "a red circle", "--out",
                                      str(tmp_path / "out")], capsys)
    record("`microdit-sample` a truncated model.safetensors", msg, str(weights))


def test_a_full_disk_during_a_checkpoint(tmp_path, monkeypatch):
    from microdit.run import CheckpointError, list_checkpoints
    from microdit.train import checkpoint as ckpt

    good = ckpt.commit(ckpt.begin(tmp_path, 8), {"x": torch.ones(1)}, {"nimg": 8}, keep=2)

    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0")

    tmp = ckpt.begin(tmp_path, 16)
    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(CheckpointError) as err:
        ckpt.commit(tmp, {"x": torch.ones(1)}, {"nimg": 16}, keep=2)
    record("a full disk during a checkpoint", str(err.value), "000000000016 could not be written", "is the disk full",
           "partial folder was removed", str(good))
    assert not tmp.exists() and list_checkpoints(tmp.parent) == [good]


def test_an_export_says_which_weights_it_holds(world, capsys, tmp_path):
    export = sorted((world["run"] / "checkpoints").iterdir())[-1]  # the run has no EMA
    sample_cli.main([str(export), "--prompt", "a red circle", "--steps", "2", "--out", str(tmp_path / "out")])
    record("`microdit-sample` from a run without EMA", one_line(capsys.readouterr().err), "1 image from",
           "(raw weights: the run has no EMA)")


def test_the_initial_checkpoint_survives_retention(world):
    run = world["tmp"] / "runs" / "t-initial"
    result = subprocess.run([sys.executable, "-m", "microdit.cli.train", *base_overrides(world["tmp"], world["data"],
                             "t-initial"), "trainer.save_initial_checkpoint=true", "trainer.keep_checkpoints=1",
                             "trainer.ckpt_every_images=16"], capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-2000:]
    kept = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert kept[0] == "000000000000" and len(kept) == 2, kept  # the pinned initial one and the last
    TABLE.append(("trainer.save_initial_checkpoint with keep_checkpoints=1", f"kept {kept}"))


def test_unreadable_checkpoint_hints(world, capsys, tmp_path):
    run = tmp_path / "one-ckpt"
    shutil.copytree(world["run"], run)
    checkpoints = sorted((run / "checkpoints").iterdir())
    for older in checkpoints[:-1]:
        shutil.rmtree(older)
    (checkpoints[-1] / "state.pt").write_bytes(b"cut")
    msg = cli_error(sample_cli.main, [str(run), "--prompt", "a red circle", "--out", str(tmp_path / "out")], capsys)
    record("`microdit-sample` the only checkpoint is unreadable", msg, "the run has no older checkpoint")
    assert "trainer.resume" not in msg


class _RunsCode:
    """Unpickling this calls a function: what a crafted checkpoint file would do."""

    def __reduce__(self):
        return print, ("code ran",)


def pickle_with_code() -> bytes:
    buffer = io.BytesIO()
    torch.save({"blocks.0.mlp.w1.weight": _RunsCode()}, buffer)
    return buffer.getvalue()


def test_converter_refuses_a_pickle(tmp_path):
    crafted = tmp_path / "crafted.pt"
    crafted.write_bytes(pickle_with_code())
    script = Path(__file__).resolve().parents[2] / "tools" / "convert_reference_checkpoint.py"
    result = subprocess.run([sys.executable, str(script), "--preset", "MicroDiT_Tiny_2", str(crafted),
                             str(tmp_path / "out.pt")], capture_output=True, text=True, timeout=120)
    msg = one_line(result.stderr)
    assert result.returncode != 0 and "weights_only" not in result.stderr  # no advice to load it unsafely
    record("converter: a pickle that runs code", msg, str(crafted), "would run code when loaded: refused")
    assert not (tmp_path / "out.pt").exists()


def test_folder_build_where_every_image_is_too_small(capsys, tmp_path):
    root = image_folder(tmp_path / "small", {"0.png": Image.new("RGB", (16, 16)), "1.png": Image.new("RGB", (8, 8))})
    msg = cli_error(data_cli.main, ["cifar-captions", str(tmp_path / "out"), "--from-folder", str(root), "--size",
                                    "32", "--min-side", "32"], capsys)
    record("folder build: every image too small", msg, "the filter kept none of the 2 images", "'too_small': 2",
           "--min-side 32")


def test_battery_is_large_enough():
    """Runs last in this file (pytest keeps file order)."""
    assert len(TABLE) >= 25, TABLE
