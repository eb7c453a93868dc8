"""``microdit-cpu-ablation``: run a job (``conf/job/NAME.yaml``): a list of experiments trained for
several seeds, each run evaluated with the offline probe metrics on a held-out split of its
dataset, then one table with every number as mean ± 95% confidence interval over the seeds.

    microdit-cpu-ablation                                  # the main job (the README's command)
    microdit-cpu-ablation --job masking_study              # the CPU masking study (≈ 40 min)
    microdit-cpu-ablation --job main seeds=[0] eval.num_samples=50 report.out=runs/quick
    microdit-cpu-ablation --job crossover --workers 2      # two one-thread processes share the runs

Jobs are Hydra configs composed and validated like every other config (their schema and the
library behind this command: :mod:`microdit.pipeline`); trailing ``KEY=VALUE`` arguments
override the job's fields. Runs that finished earlier are not trained again, evaluations are
cached, an interrupted run resumes: rerunning a job only adds what is missing. A run folder
written with another config (another ``--budget-flops``, an edited job) is refused before
anything trains, not reported as this job's; a results folder that holds another job's results
gets this job's in OUT/<job name>/. ``probe_fd`` (lower is better) and ``probe_acc``
(higher is better) are probe metrics, not FID.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from microdit.cli.options import file_or_folder, positive_float, positive_int
from microdit.cli.stopping import stopped_in_one_line
from microdit.experiment import CONF_DIR, quoted
from microdit.pipeline import RESULTS, JobConfig, compose_job, report_dir, run_job
from microdit.run import RUN_ERRORS
from microdit.train.config import TrainConfig

JOB_FIELDS = {f.name for f in dataclasses.fields(JobConfig)}
GROUPS = {g.name for g in CONF_DIR.iterdir() if g.is_dir() and any(g.glob("*.yaml"))} - {"job"}  # job/: jobs.yaml's
RUN_KEYS = {f.name for f in dataclasses.fields(TrainConfig)} | GROUPS | {"hydra"}  # what a run's overrides set
STOPPED = ("microdit-cpu-ablation: the job was stopped; finished runs, evaluations and checkpoints are kept: run "
           "the job again to continue")


def job_overrides(args: argparse.Namespace) -> list[str]:
    """The job-field overrides of the command line: its flags, then its KEY=VALUE arguments."""
    out = []
    if args.seeds is not None:  # "" is no seed, not the job's seeds
        try:
            out.append(f"seeds=[{','.join(str(int(s)) for s in args.seeds.split(','))}]")
        except ValueError:
            raise ValueError(f"--seeds: expected comma-separated integers (e.g. 0,1,2), got {args.seeds!r}") from None
    out += [f"eval.num_samples={args.num_samples}"] if args.num_samples else []
    out += [f"eval.probe_steps={args.probe_steps}"] if args.probe_steps else []
    out += [f"report.out={quoted(args.out)}"] if args.out else []
    out += [f"workers={args.workers}"] if args.workers is not None else []
    return out + [refuse_run_key(arg) for arg in args.job_overrides]


def refuse_run_key(arg: str) -> str:
    """``arg`` (a JOB_KEY=VALUE argument), unless it sets a run's config (``trainer.plan_check=warn``,
    ``protocol=cpu_study``), which the job's schema would refuse without saying where it goes."""
    key = arg.split("=", 1)[0].lstrip("+~")
    if key.split(".")[0] in RUN_KEYS - JOB_FIELDS:
        raise ValueError(f"{arg} sets every run's config, not a field of the job: give it as --override {arg}")
    return arg


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``microdit-cpu-ablation``."""
    parser = argparse.ArgumentParser(prog="microdit-cpu-ablation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--job", default="main", help="a job name in conf/job or a job YAML file (default: main)")
    parser.add_argument("--out", type=file_or_folder, help="where the runs and results land (default: the job's "
                        "report.out)")
    parser.add_argument("--seeds", help="comma-separated seeds instead of the job's (e.g. 0,1,2)")
    parser.add_argument("--data", type=file_or_folder, help="training dataset folder for every run (default: each "
                        "experiment's own; its held-out split is FOLDER-eval)")
    parser.add_argument("--budget-flops", type=positive_float, help="override the shared compute budget of every run")
    parser.add_argument("--num-samples", type=positive_int, help="generated samples per evaluation (default: the job's "
                        "eval.num_samples)")
    parser.add_argument("--probe-steps", type=positive_int, help="training steps of the probe (default: the job's)")
    parser.add_argument("--workers", type=int, help="runs trained and evaluated at once, each process with its "
                        "share of the threads; 0: one per thread (default: the job's workers)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="extra Hydra override for every run (repeatable, e.g. sampler.steps=20)")
    parser.add_argument("job_overrides", nargs="*", metavar="JOB_KEY=VALUE",
                        help="overrides of the job's own fields (e.g. seeds=[0,1] eval.num_samples=100; "
                        "a run's key, such as trainer.plan_check=warn, goes to --override)")
    args = parser.parse_intermixed_args(argv)  # KEY=VALUE arguments before and after options
    extra = [*([f"data.folders=[{quoted(args.data)}]"] if args.data else []), *args.override,
             *([f"trainer.budget_flops={args.budget_flops}"] if args.budget_flops else [])]
    with stopped_in_one_line(STOPPED):  # Ctrl-C, kill or SLURM, outside a run's training too
        try:
            job = compose_job(args.job, job_overrides(args))
            _, table = run_job(job, extra=extra)
        except RUN_ERRORS as err:  # bad input, an unwritable folder, another job training one of the runs, ...
            raise SystemExit(f"microdit-cpu-ablation: error: {err}") from None
    out = report_dir(job, Path(job.report.out))
    print(table)
    grid = f", prompts -> images per arm {out / 'samples.png'} ({out / 'samples.md'})" if job.report.sample_grid else ""
    print(f"\n[job] results: {out / RESULTS} (one row per run and evaluated stage), {out / 'results.md'}, "
          f"plot {out / 'results.png'}{grid}")


if __name__ == "__main__":
    main()
