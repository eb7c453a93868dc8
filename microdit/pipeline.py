"""Jobs: lists of experiments trained for several seeds, evaluated and reported together.

A **job** (``conf/job/NAME.yaml``, composed onto :class:`JobConfig` from ``conf/jobs.yaml``) is a
list of experiments (each ``"NAME [KEY=VALUE ...]"``, in the experiment language of
:mod:`microdit.experiment`), trained for every seed of ``seeds`` with ``overrides`` for every run,
an ``eval:`` section (held-out split, generated samples, metrics, probe length, whether every stage
end is evaluated) and a ``report:`` section (where results land, the table's columns, the planned
contrasts). :func:`run_job` trains what is missing, evaluates what is not cached and returns the
table; ``microdit-cpu-ablation`` is its command line, and a notebook calls it the same way::

    from microdit.pipeline import compose_job, run_job
    rows, table = run_job(compose_job("main", ["seeds=[0]", "eval.num_samples=50"]))
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from microdit import run as runs
from microdit.eval.job_rows import chance_table, reference_rows, stage_rows
from microdit.eval.metrics import check_names, metric_columns
from microdit.eval.trend import budget_tag
from microdit.experiment import CONF_DIR, compose_config, compose_named, config_error, equal_steps, quoted, validate_run
from microdit.files import WriteError, create_exclusive, unwritable, write_atomic
from microdit.job_runs import run_splits, sample_grid, train_and_evaluate
from microdit.train.config import TrainConfig, summarize_changes
from microdit.train.plan import prepare_synthetic, resolve

RESULTS = "results.csv"
OWNER = "job.json"  # in a job's results folder: the job whose report lands there


@dataclass
class JobEval:
    """How each run of a job is evaluated: on ``held_out_samples`` samples of a held-out split of
    its dataset (``FOLDER-eval``, built with the next seed), ``num_samples`` generated samples
    each, with ``metrics`` of the registry; the probe is trained ``probe_steps`` steps on
    ``probe_samples`` images of its own split (``FOLDER-probe``), which no generator saw. Each
    training seed s is evaluated with its own noise and its own draw of prompts (seed s), so the
    spread across seeds includes the evaluation's. With ``evaluate_stages`` every stage end is
    evaluated, not only the run's end."""

    held_out_samples: int = runs.HELD_OUT_SAMPLES
    num_samples: int = 300
    probe_steps: int = 1000
    probe_samples: int = 5000
    metrics: list[str] = field(default_factory=lambda: ["probe"])
    evaluate_stages: bool = False


@dataclass
class JobReport:
    """Where the runs and the results land (``out``: ``results.csv``, ``results.md``,
    ``results.png``; in ``out/<job name>`` where ``out`` holds another job's: :func:`report_dir`),
    which evaluation columns the table shows (e.g. ``probe_fd``, ``probe_acc.colour``) and the
    job's planned ``contrasts`` (``"ARM vs ARM"``, arms by ``trainer.name``), tested on those
    columns with the equivalence ``margins`` given per column. The table also has a row of the
    shuffled-prompt chance and one of real-vs-real at the same sample count."""

    out: str = "runs/cpu"
    columns: list[str] = field(default_factory=lambda: ["probe_fd", "probe_acc_mean"])
    contrasts: list[str] = field(default_factory=list)
    margins: dict[str, float] = field(default_factory=dict)
    sample_grid: bool = False  # also samples.png: a row per arm, the same held-out prompts and noise

    @property
    def heldout_columns(self) -> list[str]:
        """``columns`` as results.csv names them (the held-out evaluation's ``eval.heldout.*``)."""
        return [f"eval.heldout.{c}" for c in self.columns]


@dataclass
class JobConfig:
    """A job: ``experiments`` (each a name in conf/experiment, optionally followed by Hydra
    overrides of that run only: ``"cpu_masking_none protocol=cpu_study"``) for every seed of
    ``seeds``, with ``overrides`` for every run; its ``eval`` and ``report`` sections. ``workers``
    runs train and evaluate at once (0: one per thread torch has), each process with its share of
    the threads: on a small CPU two one-thread processes get through small steps faster than one
    two-thread process (``microdit-bench`` measures both).

    With ``budgets`` (FLOPs) every experiment is an *arm* trained at each budget
    (``trainer.budget_flops``), its runs named ``ARM-TAG`` (``cpu-naive75-3e12``: :func:`budget_tag`);
    the largest budget's runs use ``largest_budget_seeds`` where given (more seeds where a
    crossing would be decided). The report's contrasts then name arms and are tested at every
    budget, and the trend of each contrast's gap with compute is fitted (:mod:`microdit.eval.trend`).

    ``equal_steps`` (``{ARM: LEADER}``) gives each stage of ARM, where the job runs ARM, as many
    optimizer steps as LEADER's stage of that name at the same seed and budget (the paper's
    equal-steps protocol), sized from LEADER as it runs (``--budget-flops``, a batch size, ...)."""

    experiments: list[str] = field(default_factory=list)
    name: str = ""  # set by compose_job: the job's name in conf/job, or its YAML file's stem
    file: str = ""  # set by compose_job: a job file's resolved path ("" for a job of conf/job)
    seeds: list[int] = field(default_factory=lambda: [0])
    workers: int = 1
    budgets: list[float] = field(default_factory=list)
    largest_budget_seeds: list[int] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)
    equal_steps: dict[str, str] = field(default_factory=dict)
    eval: JobEval = field(default_factory=JobEval)
    report: JobReport = field(default_factory=JobReport)

    def problems(self) -> list[str]:
        """One message per invalid field."""
        out = []
        if not self.experiments or not all(e.split() for e in self.experiments):
            out.append(f"experiments must be a non-empty list of 'NAME [KEY=VALUE ...]', got {self.experiments}")
        if not self.seeds or any(s < 0 for s in self.seeds) or len(set(self.seeds)) != len(self.seeds):
            out.append(f"seeds must be a non-empty list of distinct non-negative integers, got {self.seeds}")
        if self.workers < 0:
            out.append(f"workers must be a positive integer or 0 (one per thread), got {self.workers}")
        if len(set(more := self.largest_budget_seeds)) != len(more) or any(s < 0 for s in more):
            out.append(f"largest_budget_seeds must be distinct non-negative integers, got {more}")
        if set(self.equal_steps) & set(self.equal_steps.values()):
            out.append(f"equal_steps: a run that takes another's steps leads none, got {self.equal_steps}")
        if self.largest_budget_seeds and not self.budgets:
            out.append("largest_budget_seeds needs budgets (a list of FLOP budgets)")
        if any(not b > 0 for b in self.budgets) or len(set(self.budgets)) != len(self.budgets):
            out.append(f"budgets must be distinct positive FLOP counts, got {self.budgets}")
        for name in ("held_out_samples", "num_samples", "probe_steps", "probe_samples"):
            if getattr(self.eval, name) < 1:
                out.append(f"eval.{name} must be a positive integer, got {getattr(self.eval, name)}")
        if 1 <= self.eval.held_out_samples < 2 * self.eval.num_samples:
            out.append(f"eval.held_out_samples must be at least 2 x eval.num_samples ({2 * self.eval.num_samples}: "
                       f"prompts, and as many real images for real vs real), got {self.eval.held_out_samples}")
        try:
            check_names(self.eval.metrics, where="eval.metrics: ")
        except ValueError as err:
            out.append(str(err))
        if not self.report.columns:
            out.append("report.columns must name at least one evaluation column")
        if not self.report.out.strip():  # Path("") is the working directory
            out.append(f"report.out {self.report.out!r} must name a folder (. for the working directory)")
        written = metric_columns(self.eval.metrics)
        if self.eval.metrics and (unknown := [c for c in self.report.columns if c.split(".")[0] not in written]):
            out.append(f"report.columns {unknown} are not written by eval.metrics {self.eval.metrics} (their columns: "
                       f"{', '.join(written)}; one per attribute as probe_acc.shape)")
        out += [f"report.contrasts: expected 'ARM vs ARM' (trainer.name of two runs), got {contrast!r}"
                for contrast in self.report.contrasts if len(contrast.split(" vs ")) != 2]
        if unknown := sorted(set(self.report.margins) - set(self.report.columns)):
            out.append(f"report.margins: {unknown} are not report.columns {self.report.columns}")
        return out


ConfigStore.instance().store(name="job_schema", node=JobConfig)


def compose_job(spec: str, overrides: list[str] | None = None) -> JobConfig:
    """The job ``spec`` (a name in conf/job, or a YAML file with a job's keys) with Hydra
    ``overrides`` of its fields (``seeds=[0,1]``, ``eval.num_samples=100``), validated: one-line
    errors naming the key or file."""
    from omegaconf.errors import OmegaConfBaseException

    from microdit.experiment import refused_key  # on the error path only
    overrides = list(overrides or [])
    path = Path(spec)
    is_file = path.suffix in (".yaml", ".yml")
    names = sorted(p.stem for p in (CONF_DIR / "job").glob("*.yaml"))
    if is_file and not path.is_file():
        raise ValueError(f"job file {path} does not exist")
    if not is_file and spec not in names:
        raise ValueError(f"unknown job {spec!r}: use one of {names} or a path to a job YAML file")
    try:
        if is_file:
            node = OmegaConf.merge(OmegaConf.structured(JobConfig), OmegaConf.load(path),
                                   OmegaConf.from_dotlist(overrides))
        else:
            node = compose_named("jobs", [f"job={spec}", *overrides])
        job = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(JobConfig), node))
    except OmegaConfBaseException as err:  # a job file's keys or values (Hydra's errors: _compose)
        raise ValueError(f"job {spec}: {refused_key(JobConfig, path) if is_file else ''}{config_error(err)}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"job {spec}: not a readable YAML job file ({err})") from None
    except yaml.YAMLError as err:  # the file's syntax (its line and column are in the message)
        raise ValueError(f"job {spec}: not valid YAML: {' '.join(str(err).split())}") from None
    except ValueError as err:
        raise ValueError(f"job {spec}: {err}") from None
    if problems := job.problems():
        raise ValueError(f"job {spec}: " + "; ".join(problems))
    job.name = job.name or (path.stem if is_file else spec)
    job.file = str(path.resolve()) if is_file else ""
    return job


def arm_of(cfg: TrainConfig, job: JobConfig) -> tuple[str, float | None]:
    """(arm, budget) of a run: its name without the budget suffix in a job with ``budgets``."""
    if not job.budgets:
        return cfg.trainer.name, None
    return cfg.trainer.name.removesuffix("-" + budget_tag(cfg.trainer.budget_flops)), cfg.trainer.budget_flops


def _run_points(job: JobConfig) -> list[tuple[float | None, list[int]]]:
    """(budget or None, seeds) of each point an experiment of ``job`` is trained at."""
    if not job.budgets:
        return [(None, job.seeds)]
    largest = max(job.budgets)
    return [(b, job.largest_budget_seeds if b == largest and job.largest_budget_seeds else job.seeds)
            for b in job.budgets]


def job_configs(job: JobConfig, out: Path, extra: list[str] | None = None) -> list[TrainConfig]:
    """The validated config of every run of ``job`` (``equal_steps`` applied), experiment-major,
    then budget, then seed (seed ``s``'s runs in ``out/seed<s>/<trainer.name>``), with ``extra``
    overrides for every run: a bad run stops the job before anything trains (:func:`_check_run`)."""
    points = [(e, budget, seed) for e in job.experiments for budget, seeds in _run_points(job) for seed in seeds]
    configs = [_run_config(job, *point, out, extra) for point in points]
    folders: dict[Path, str] = {}
    for c, (entry, *_) in zip(configs, points, strict=True):
        if (folder := Path(c.trainer.run_dir) / c.trainer.name) in folders:
            raise ValueError(f"job entries {folders[folder]!r} and {entry!r} both train the run {folder} (one "
                             "trainer.name at one seed and budget): give one its own trainer.name=NAME")
        folders[folder] = entry
    names = {arm_of(c, job)[0] for c in configs}
    for key, arms in (("report.contrasts", {arm for c in job.report.contrasts for arm in c.split(" vs ")}),
                      ("equal_steps", {lead for arm, lead in job.equal_steps.items() if arm in names})):
        if arms - names:
            raise ValueError(f"{key} name {sorted(arms - names)}, which no run is called (runs: {sorted(names)})")
    at = {(arm_of(c, job)[0], *point[1:]): c for c, point in zip(configs, points, strict=True)}
    for i in sorted(range(len(points)), key=lambda i: arm_of(configs[i], job)[0] in job.equal_steps):
        if (leader := job.equal_steps.get(arm_of(configs[i], job)[0])) is not None:  # after every leader
            configs[i] = _run_config(job, *points[i], out, extra, equal_steps(configs[i], at[(leader, *points[i][1:])]))
        _check_run(configs[i], points[i][0])
    return configs


def _run_config(job: JobConfig, entry: str, budget: float | None, seed: int, out: Path, extra: list[str] | None,
                steps: list[str] = ()) -> TrainConfig:
    name, *own = entry.split()
    at = [] if budget is None else [f"trainer.budget_flops={budget}"]
    overrides = [f"experiment={name}", f"trainer.seed={seed}", f"trainer.run_dir={quoted(out / f'seed{seed}')}",
                 *job.overrides, *own, *at, *(extra or []), *steps]
    try:
        cfg = compose_config(overrides)
    except ValueError as err:
        raise ValueError(f"job entry {entry!r}: {' '.join(str(err).split())}") from None
    if budget is not None:
        cfg.trainer.name = f"{cfg.trainer.name}-{budget_tag(cfg.trainer.budget_flops)}"
    return cfg


def _check_run(cfg: TrainConfig, entry: str) -> None:
    """A run that is not valid, or whose folder was written with another config (its results would
    not be this job's) or cannot be written, stops the job before anything trains."""
    try:
        validate_run(cfg, run_anyway="microdit-cpu-ablation --override trainer.plan_check=warn")
    except ValueError as err:
        raise ValueError(f"job entry {entry!r}: {' '.join(str(err).split())}") from None
    run = Path(cfg.trainer.run_dir) / cfg.trainer.name
    if changes := runs.saved_config_changes(run, cfg):
        raise ValueError(f"run {run} was written with another config ({summarize_changes(changes)}); its "
                         f"results are not this job's: pass another --out, or delete {run} to train it again")
    if problem := unwritable(run):  # else each worker would meet it, after the data and the probe were prepared
        raise ValueError(f"run folder {run} {problem}")


def prepare_data(configs: list[TrainConfig], job: JobConfig) -> None:
    """Each dataset of the job's runs once: every stage's synthetic dataset (checked to fit each
    run's network), then once per dataset its held-out split, its probe split and the probe, and the
    networks the evaluation's metrics read images through (weights that cannot be fetched stop the
    job before it trains)."""
    from microdit.data import load_manifest
    from microdit.data.encode import build_synthetic_dataset, encoded_from
    from microdit.eval import EvalSettings
    from microdit.eval.metrics import EvalInputs

    done = set()
    for cfg in configs:
        folder = Path(cfg.data.folders[0])
        if (folder / "manifest.json").is_file() and (origin := encoded_from(folder)):
            raise ValueError(f"dataset {folder} holds the latents of {origin}: a job evaluates its runs on held-out "
                             "and probe splits drawn by the synthetic generator, so its runs train on synthetic data "
                             "(--data: a synthetic dataset, or a new folder to build one in); evaluate a run "
                             "trained on other data with microdit-eval run RUN --dataset")
        prepare_synthetic(cfg)
        runs.check_stage_data(resolve(cfg))  # what each run's trainer checks first, before any worker starts
        first, held_out, probe_split = run_splits(cfg, job)
        data = Path(first.dataset.folder).resolve()  # a relative folder resolves against the working directory
        if data in done:
            continue
        done.add(data)
        print(f"[job] dataset {data} (held-out split: {first.held_out} beside it)", file=sys.stderr)
        build_synthetic_dataset(held_out, progress=True)
        if probe := "probe" in job.eval.metrics:
            build_synthetic_dataset(probe_split, progress=True)
        settings = EvalSettings(metrics=list(job.eval.metrics), probe_steps=job.eval.probe_steps)
        networks = EvalInputs.load_networks(job.eval.metrics, load_manifest(held_out.folder).autoencoder, settings,
                                            probe_dataset=probe_split.folder if probe else None)
        attributes = networks[("probe",)].values if probe else None  # probe_acc.shape: checked before training
        if unknown := [c for c in job.report.columns if probe and "." in c and c.split(".", 1)[1] not in attributes]:
            raise ValueError(f"report.columns {unknown}: the probe of {data} reads the attributes {sorted(attributes)}")


def report(configs: list[TrainConfig], job: JobConfig, out: Path, results: Path) -> tuple[list[dict], str]:
    """The job's rows (one per run under ``out`` and evaluated stage end) and markdown table; writes
    ``results.csv``, ``results.md`` and the plot ``results.png`` in ``results`` (:func:`report_dir`)."""
    from microdit.eval.results import bar_plot, collect, contrast_table, markdown_table, plot, trend_table, write_csv

    done = {str(Path(c.trainer.run_dir) / c.trainer.name): arm_of(c, job) for c in configs}
    order = list(dict.fromkeys(c.trainer.name for c in configs))
    rows = [r for row in collect([out]) if row["run_dir"] in done for r in stage_rows(row, Path(row["run_dir"]))]
    if job.budgets:
        for r in rows:
            r["arm"], r["budget"] = done[r["run_dir"]]
    rows.sort(key=lambda r: (order.index(r["trainer.name"]), r["cost.images"], r["trainer.seed"]))
    columns = job.report.heldout_columns
    metrics = columns + ["cost.images", "cost.flops"]
    table = markdown_table(rows + reference_rows(rows, columns), ["trainer.name", "after"], metrics, sort=False,
                           pairs=not job.report.contrasts)
    if job.report.contrasts and job.budgets:
        table += "\n\n" + contrast_table(rows, job.report.contrasts, columns, job.report.margins, arm="arm",
                                          stage="budget")
        table += "\n\n" + trend_table(rows, job.report.contrasts, columns)
    elif job.report.contrasts:
        table += "\n\n" + contrast_table(rows, job.report.contrasts, columns, job.report.margins)
    if chance := chance_table(rows, columns, *(("arm", "budget") if job.budgets else ())):
        table += "\n\nEach arm against its own shuffled-prompt chance (the same samples):\n\n" + chance
    write_csv(rows, results / RESULTS)
    write_atomic(results / "results.md", (table + "\n").encode())
    if job.budgets:
        plot(rows, "cost.flops", columns[0], results / "results.png", group_by="arm", log_x=True)
    else:
        bar_plot([{**r, "run": f"{r['trainer.name']} ({r['after']})"} for r in rows], "run", columns[:2],
                 results / "results.png")
    return rows, table


def report_dir(job: JobConfig, out: Path, claim: bool = False) -> Path:
    """Where ``job``'s report files land: ``out`` itself when ``out`` is its own (the first job to
    report there, recorded in ``out/job.json``: its name, and a job file's path), else
    ``out/<job name>``. Jobs may share a results folder to reuse each other's runs (images vs steps
    trains in the main job's ``runs/cpu`` and reuses its runs) without one job's ``results.*``
    replacing another's; a job file named like the folder's job (a copy of ``main.yaml``) is
    refused rather than taken for it. ``claim``: record ``job`` as the owner of a folder that has
    none (a job does once its checks passed, just before it trains, so that a job refused before
    training owns nothing)."""
    record = out / OWNER
    mine = {"job": job.name or "job"} | ({"file": job.file} if job.file else {})
    owner = _owner(record)
    if owner is None and claim:
        try:  # exclusive: of two jobs starting together, one owns the folder
            if create_exclusive(record, (json.dumps(mine) + "\n").encode(),
                                kept="no run was trained and no record was left"):
                return out
            owner = _owner(record)
        except WriteError:
            raise
        except OSError as err:
            raise ValueError(f"results folder {out} (--out, the job's report.out) is not writable: "
                             f"{err.strerror or err}") from None
    if owner is None or owner == mine:
        return out
    if owner["job"] == mine["job"]:
        raise ValueError(f"results folder {out} holds the results of job {owner['job']!r} from "
                         f"{owner.get('file', 'conf/job')}, not from {mine.get('file', 'conf/job')}: give this job "
                         "another report.out (or another name) so that neither replaces the other's results")
    return out / mine["job"]


def _owner(record: Path) -> dict | None:
    """The job recorded in a results folder's ``job.json`` (``{"job": NAME}``, with ``"file"`` for
    a job file; None: no record)."""
    try:
        owner = json.loads(record.read_text()) if record.exists() else None
        if owner is not None and not (isinstance(owner["job"], str) and isinstance(owner.get("file", ""), str)):
            raise TypeError
        return owner
    except (OSError, ValueError, KeyError, TypeError):
        raise ValueError(f"{record}: expected {{\"job\": NAME}}, the job whose results are in {record.parent}; "
                         "delete it to give the folder to this job") from None


def run_job(job: JobConfig, out: str | Path | None = None, extra: list[str] | None = None) -> tuple[list[dict], str]:
    """Train what is missing, evaluate what is not cached, and return (rows, markdown table) of
    ``job`` (results under ``out``, default ``job.report.out``; ``extra`` overrides every run)."""
    out = Path(out or job.report.out)
    if problem := unwritable(out):  # before anything is prepared or created
        raise ValueError(f"results folder {out} (--out, the job's report.out) {problem}")
    out.mkdir(parents=True, exist_ok=True)
    configs = job_configs(job, out, extra)
    points = (f"{len(job.seeds)} seeds" if not job.budgets else "(" + ", ".join(
        f"{len(seeds)} seeds at {budget_tag(budget)}" for budget, seeds in _run_points(job)) + " FLOPs)")
    results = report_dir(job, out)
    print(f"[job] {len(job.experiments)} experiments x {points} = {len(configs)} runs under {out}"
          + ("" if results == out else f" (another job's results are there: this job's land in {results})"),
          file=sys.stderr)
    prepare_data(configs, job)
    results = report_dir(job, out, claim=True)
    train_and_evaluate(configs, job)
    results.mkdir(exist_ok=True)
    result = report(configs, job, out, results)
    if job.report.sample_grid:
        sample_grid(configs, job, results)
    return result
