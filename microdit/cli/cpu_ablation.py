"""``microdit-cpu-ablation``: a CPU job, i.e. a list of experiments trained for several seeds,
each run evaluated with the offline probe metrics on a held-out split of its dataset, then one
table with every number as mean ± 95% confidence interval over the seeds (n runs).

Jobs are YAML files in ``conf/cpu_jobs/`` (``--job NAME``) or any path (``--job FILE``):

- ``main`` (the default, the README's main command): naive vs deferred masking at equal FLOPs,
  three seeds each, ≈ 6–10 minutes on 2 CPU cores.
- ``masking_study`` and ``masking_study_t256``: the CPU masking study of ``experiments/README.md``
  (64 tokens: equal images and equal FLOPs, before and after an unmasked fine-tune, ≈ 60 minutes;
  256 tokens: equal FLOPs, ≈ 20 minutes).

With ``evaluate_stages`` every stage end is evaluated, not only the run's end: a run of a masked
pretraining stage followed by an unmasked fine-tune gives a row "after pretrain" and a row
"after finetune". ``probe_fd`` (lower is better) and ``probe_acc`` (higher is better, chance is 1
/ number of values) are probe metrics, not FID. Runs that finished earlier are not trained
again, evaluations are cached, an interrupted run resumes: rerunning a job only adds what is
missing. A run folder written with another config (another ``--budget-flops``, an edited job) is
refused before anything trains, not reported as this job's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from microdit import run as runs
from microdit.cli.options import positive_float, positive_int
from microdit.cli.train import CONF_DIR, compose_config
from microdit.locks import LockHeld
from microdit.train.config import TrainConfig, summarize_changes, validate

JOBS_DIR = CONF_DIR / "cpu_jobs"
RESULTS = "results.csv"


@dataclass
class CpuJob:
    """A job file: ``experiments`` (each a name in conf/experiment, optionally followed by Hydra
    overrides of that run only: ``"cpu_masking_none protocol=cpu_study_t256"``) run for every seed of ``seeds``,
    with ``overrides`` (Hydra) for every run, written under ``out``; evaluation on
    ``held_out_samples`` held-out samples (``eval_samples`` generated per evaluation, probe trained
    ``probe_steps`` steps); ``evaluate_stages`` also evaluates every stage end; the table shows
    ``columns`` (metrics of the probe evaluation, e.g. probe_fd, probe_acc.colour)."""

    experiments: list[str]
    seeds: list[int] = field(default_factory=lambda: [0])
    overrides: list[str] = field(default_factory=list)
    out: str = "runs/cpu"
    held_out_samples: int = 1000
    eval_samples: int = 300
    probe_steps: int = 1000
    evaluate_stages: bool = False
    columns: list[str] = field(default_factory=lambda: ["probe_fd", "probe_acc_mean"])

    @classmethod
    def load(cls, spec: str | Path) -> CpuJob:
        """The job ``spec``: a name in conf/cpu_jobs or a YAML file; one-line errors naming the file."""
        path = Path(spec)
        if not path.suffix:
            path = JOBS_DIR / f"{spec}.yaml"
            if not path.is_file():
                names = sorted(p.stem for p in JOBS_DIR.glob("*.yaml"))
                raise ValueError(f"unknown job {spec!r}: use one of {names} or a path to a job YAML file")
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
            raise ValueError(f"{path}: not a readable YAML job file ({type(err).__name__})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a job file is a mapping with at least 'experiments'")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown key(s) {unknown}; a job has {sorted(known)}")
        if "experiments" not in data:
            raise ValueError(f"{path}: 'experiments' is missing (a list of names in conf/experiment)")
        job = cls(**data)
        problems = job.problems()
        if problems:
            raise ValueError(f"{path}: " + "; ".join(problems))
        return job

    def problems(self) -> list[str]:
        """One message per invalid field."""
        out = []
        for name in ("experiments", "seeds", "overrides", "columns"):
            value = getattr(self, name)
            if not isinstance(value, list) or (name != "overrides" and not value):
                out.append(f"{name} must be a non-empty list, got {value!r}")
        if isinstance(self.experiments, list) and not all(isinstance(e, str) and e.split() for e in self.experiments):
            out.append(f"experiments must be strings 'NAME [KEY=VALUE ...]', got {self.experiments}")
        if isinstance(self.seeds, list) and not all(isinstance(s, int) and s >= 0 for s in self.seeds):
            out.append(f"seeds must be non-negative integers, got {self.seeds}")
        for name in ("held_out_samples", "eval_samples", "probe_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                out.append(f"{name} must be a positive integer, got {value!r}")
        return out


def run_configs(job: CpuJob, out: Path, extra: list[str]) -> list[TrainConfig]:
    """The resolved and validated config of every run of the job, experiment-major, then seed (the
    runs of seed ``s`` live in ``out/seed<s>/<trainer.name>``): a bad experiment or override stops
    the job before anything trains."""
    from hydra.errors import HydraException

    configs = []
    for entry in job.experiments:
        name, *own = entry.split()
        for seed in job.seeds:
            overrides = [f"experiment={name}", f"trainer.seed={seed}", f"trainer.run_dir={out / f'seed{seed}'}",
                         *job.overrides, *own, *extra]
            try:
                cfg = compose_config(overrides)
                validate(cfg)
            except (HydraException, ValueError) as err:
                raise ValueError(f"job entry {entry!r}: {' '.join(str(err).split())}") from None
            check_existing_run(cfg)
            configs.append(cfg)
    return configs


def check_existing_run(cfg: TrainConfig) -> None:
    """A run folder the job would reuse (its results, its checkpoints) must have been written with
    this config: a rerun with another budget or override would otherwise report the old run."""
    run = Path(cfg.trainer.run_dir) / cfg.trainer.name
    changes = runs.saved_config_changes(run, cfg)
    if changes:
        raise ValueError(f"run {run} was written with another config ({summarize_changes(changes)}); "
                         f"its results are not this job's: pass another --out, or delete {run} to train it again")


def stage_ends(run: Path) -> list[tuple[str, int, float]]:
    """(stage name, images and planned training FLOPs up to its end) of every stage of a run, from
    its run_info.json; the checkpoint at a stage's end is ``checkpoints/<images:012d>``."""
    ends, images, flops = [], 0, 0.0
    for stage in json.loads((run / "run_info.json").read_text())["stages"]:
        images += stage["images"]
        flops += stage["images"] * stage["flops_per_image"]
        ends.append((stage["name"], images, flops))
    return ends


def stage_rows(row: dict, run: Path) -> list[dict]:
    """The long rows of one run: one per evaluated stage end, with ``after`` (the stage name), the
    planned training ``cost.images`` / ``cost.flops`` up to that point and its ``eval.heldout.*``."""
    ends = stage_ends(run)
    base = {k: v for k, v in row.items() if not k.startswith(("eval.", "cost."))}
    out = []
    for i, (name, images, flops) in enumerate(ends):
        prefix = "eval.heldout." if i == len(ends) - 1 else f"eval.heldout@{name}."
        metrics = {"eval.heldout." + k[len(prefix):]: v for k, v in row.items() if k.startswith(prefix)}
        if metrics:
            out.append({**base, "after": name, "cost.images": images, "cost.flops": flops, **metrics})
    return out


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``microdit-cpu-ablation``."""
    parser = argparse.ArgumentParser(prog="microdit-cpu-ablation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--job", default="main", help="a job name in conf/cpu_jobs or a job YAML file (default: main)")
    parser.add_argument("--out", type=Path, help="where the runs and results land (default: the job's 'out')")
    parser.add_argument("--seeds", help="comma-separated seeds instead of the job's (e.g. 0,1,2)")
    parser.add_argument("--data", type=Path, help="training dataset folder for every run (default: each "
                        "experiment's own; its held-out split is FOLDER-eval)")
    parser.add_argument("--budget-flops", type=positive_float, help="override the shared compute budget of every run")
    parser.add_argument("--num-samples", type=positive_int, help="generated samples per evaluation (default: the job's "
                        "eval_samples)")
    parser.add_argument("--probe-steps", type=positive_int, help="training steps of the probe (default: the job's)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="extra Hydra override for every run (repeatable, e.g. sampler.steps=20)")
    args = parser.parse_args(argv)
    try:
        job = CpuJob.load(args.job)
        if args.seeds:
            try:
                job.seeds = [int(s) for s in args.seeds.split(",")]
            except ValueError:
                seeds = args.seeds
                raise ValueError(f"--seeds: expected comma-separated integers (e.g. 0,1,2), got {seeds!r}") from None
        run_job(job, args)
    except (ValueError, FileNotFoundError, LockHeld) as err:  # LockHeld: another job trains one of the runs
        raise SystemExit(f"microdit-cpu-ablation: error: {err}") from None


def run_job(job: CpuJob, args: argparse.Namespace) -> None:
    """Train what is missing, evaluate what is not cached, write and print the table."""
    from microdit.data.encode import build_synthetic_dataset
    from microdit.eval import EvalSettings, evaluate
    from microdit.eval.probe import dataset_probe
    from microdit.eval.results import bar_plot, collect, markdown_table, write_csv
    from microdit.train.trainer import prepare_synthetic, train

    out = args.out or Path(job.out)
    extra = [*([f"data.folders=[{args.data}]"] if args.data else []), *args.override,
             *([f"trainer.budget_flops={args.budget_flops}"] if args.budget_flops else [])]
    configs = run_configs(job, out, extra)
    num_samples = args.num_samples or job.eval_samples
    probe_steps = args.probe_steps or job.probe_steps
    print(f"[job] {len(job.experiments)} experiments x {len(job.seeds)} seeds = {len(configs)} runs under {out}",
          file=sys.stderr)
    shown = set()
    for cfg in configs:  # each dataset once: training split, held-out split, probe
        prepare_synthetic(cfg)
        data = Path(cfg.data.folders[0])
        if data.resolve() not in shown:  # a relative folder resolves against the working directory
            shown.add(data.resolve())
            print(f"[job] dataset {data.resolve()} (held-out split: {data.name}-eval beside it)", file=sys.stderr)
        build_synthetic_dataset(data.with_name(data.name + "-eval"), job.held_out_samples, cfg.data.prepare_size,
                                cfg.data.prepare_seed + 1, cfg.encoder.autoencoder, cfg.encoder.text_encoder,
                                scene=cfg.data.prepare_scene)
        dataset_probe(data, steps=probe_steps)
    settings = EvalSettings(num_samples=num_samples, batch_size=100, probe_steps=probe_steps)
    for i, cfg in enumerate(configs, 1):
        run = Path(cfg.trainer.run_dir) / cfg.trainer.name
        print(f"[job] run {i}/{len(configs)}: {cfg.trainer.name} seed {cfg.trainer.seed}", file=sys.stderr)
        if not (run / "summary.json").is_file():
            train(cfg)
        eval_set = Path(cfg.data.folders[0] + "-eval")
        evaluate(run, eval_set, settings, name="heldout")
        if job.evaluate_stages:
            for name, images, _ in stage_ends(run)[:-1]:
                evaluate(run / "checkpoints" / f"{images:012d}", eval_set, settings, name=f"heldout@{name}")
    runs = {str(Path(c.trainer.run_dir) / c.trainer.name) for c in configs}
    order = list(dict.fromkeys(c.trainer.name for c in configs))
    rows = [r for row in collect([out]) if row["run_dir"] in runs for r in stage_rows(row, Path(row["run_dir"]))]
    rows.sort(key=lambda r: (order.index(r["trainer.name"]), r["cost.images"], r["trainer.seed"]))
    metrics = [f"eval.heldout.{c}" for c in job.columns] + ["cost.images", "cost.flops"]
    table = markdown_table(rows, ["trainer.name", "after"], metrics, sort=False)
    write_csv(rows, out / RESULTS)
    (out / "results.md").write_text(table + "\n")
    bar_plot([{**r, "run": f"{r['trainer.name']} ({r['after']})"} for r in rows], "run",
             ["eval.heldout.probe_fd", "eval.heldout.probe_acc_mean"], out / "results.png")
    print(table)
    print(f"\n[job] results: {out / RESULTS} (one row per run and evaluated stage), {out / 'results.md'}, "
          f"plot {out / 'results.png'}")


if __name__ == "__main__":
    main()
