"""The experiment language as a library: jobs are Hydra configs (composed, inherited, overridden
and validated like any other), and a job runs end to end from a Python call."""

import dataclasses
import json
import os
import re
from pathlib import Path

import pytest
import yaml

from microdit.cli.eval import main as eval_main
from microdit.eval.metrics import EXTRACTORS
from microdit.experiment import CONF_DIR, compose_config
from microdit.job_runs import run_splits
from microdit.pipeline import JobConfig, compose_job, job_configs, report_dir, run_job
from microdit.pretrained import WeightsUnavailable
from microdit.train.plan import resolve, synthetic_recipes, unused_budget

JOBS = sorted(p.stem for p in (CONF_DIR / "job").glob("*.yaml"))


@pytest.mark.parametrize("name", JOBS)
def test_every_job_composes_and_its_runs_validate(name, tmp_path):
    job = compose_job(name)
    assert isinstance(job, JobConfig) and job.problems() == []
    configs = job_configs(job, tmp_path)
    per_experiment = len(job.seeds) * max(len(job.budgets), 1) + (
        len(job.largest_budget_seeds) - len(job.seeds) if job.largest_budget_seeds else 0)
    assert len(configs) == len(job.experiments) * per_experiment
    assert [c.trainer.seed for c in configs[:len(job.seeds)]] == job.seeds
    assert all(str(c.trainer.run_dir).startswith(str(tmp_path / "seed")) for c in configs)
    # no run carries a budget it does not use (its trainer would print a note per run)
    assert [c.trainer.name for c in configs if unused_budget(resolve(c), c.trainer.budget_flops)] == []


def test_no_two_built_in_configs_ask_one_folder_for_two_datasets():
    """A synthetic folder holds one dataset (another sample count, size, seed, scene or encoders
    there is refused when a run prepares it), so the default run, every protocol and experiment and
    every job's runs with their held-out and probe splits ask each folder for one recipe: the default
    run's 20,000 images and cpu_ablation's 10,000 once shared data/synthetic, and whichever ran first
    decided what the other trained on."""
    asked = {}
    configs = [("default", compose_config([]))]
    configs += [(f"protocol {p.stem}", compose_config([f"protocol={p.stem}"]))
                for p in (CONF_DIR / "protocol").glob("*.yaml")]
    configs += [(f"experiment {p.stem}", compose_config([f"experiment={p.stem}"]))
                for p in (CONF_DIR / "experiment").glob("*.yaml")]
    for name in JOBS:
        job = compose_job(name)
        configs += [(f"job {name}", cfg, job) for cfg in job_configs(job, Path("runs"))]
    for who, cfg, *job in configs:
        if cfg.data.prepare != "synthetic":
            continue
        recipes = synthetic_recipes(cfg) + (list(run_splits(cfg, job[0])[1:]) if job else [])
        for recipe in recipes:
            asked.setdefault(recipe.folder, {}).setdefault(dataclasses.replace(recipe, folder=""), set()).add(who)
    shared = {folder: by for folder, by in asked.items() if len(by) > 1}
    assert shared == {}
    assert {"data/synthetic", "data/synthetic-ablation", "data/synthetic-minilm-one-object-probe"} <= set(asked)


def test_a_job_inherits_another_and_says_only_what_differs():
    study, one_object = compose_job("masking_study"), compose_job("masking_study_one_object")
    assert one_object.experiments == study.experiments and one_object.seeds == study.seeds
    assert dataclasses.replace(one_object.eval, probe_samples=study.eval.probe_samples) == study.eval
    assert one_object.eval.probe_samples == 2000  # the probe split its committed results were measured with
    assert one_object.overrides != study.overrides and one_object.report != study.report
    text = (CONF_DIR / "job" / "masking_study_one_object.yaml").read_text()
    assert "experiments" not in yaml.safe_load(text)  # the five cells are written once


def test_the_main_jobs_equal_steps_arm_takes_deferreds_steps(tmp_path):
    configs = {c.trainer.name: c for c in job_configs(compose_job("main", ["seeds=[0]"]), tmp_path)}
    plans = {name: resolve(cfg, caption_len=32)[0] for name, cfg in configs.items()}  # minilm:32 captions
    deferred, eqsteps = plans["cpu-deferred75"], plans["cpu-naive75-eqsteps"]
    assert eqsteps.steps == deferred.steps and eqsteps.images == deferred.images  # the paper's protocol
    flops = {name: plan.images * plan.flops_per_image for name, plan in plans.items()}
    assert abs(flops["cpu-naive75"] / flops["cpu-deferred75"] - 1) < 0.01  # naive75 and deferred75: equal FLOPs
    assert (eqsteps.steps, configs["cpu-naive75-eqsteps"].trainer.budget_flops) == (944, None)  # as committed
    for extra in (["trainer.budget_flops=5e11"], ["trainer.batch_size=16"]):  # --budget-flops, another batch
        other = {c.trainer.name: resolve(c, caption_len=32)[0]
                 for c in job_configs(compose_job("main", ["seeds=[0]"]), tmp_path / extra[0], extra)}
        assert other["cpu-naive75-eqsteps"].steps == other["cpu-deferred75"].steps != 944, extra
    job = compose_job("main", ["seeds=[0]"])
    job.equal_steps = {"cpu-naive75-eqsteps": "cpu-deferred"}
    with pytest.raises(ValueError, match=r"equal_steps name \['cpu-deferred'\], which no run is called"):
        job_configs(job, tmp_path / "bad")
    job.equal_steps = {"cpu-naive75-eqsteps": "cpu-deferred75", "cpu-deferred75": "cpu-naive75"}  # a chain
    assert job.problems() == [f"equal_steps: a run that takes another's steps leads none, got {job.equal_steps}"]
    study = {c.trainer.name: resolve(c, caption_len=32)[0]
             for c in job_configs(compose_job("images_vs_steps", ["seeds=[0]"]), tmp_path / "ivs")}
    assert study["cpu-naive75-eqsteps"].steps == study["cpu-deferred75"].steps  # as its comments say
    assert abs(study["cpu-naive75-b13"].steps / study["cpu-deferred75"].steps - 1) < 0.03
    assert abs(study["cpu-deferred75-b5"].steps / study["cpu-naive75"].steps - 1) < 0.05
    assert abs(study["cpu-naive75-b13"].images / study["cpu-naive75"].images - 1) < 0.01


def test_a_jobs_plan_check_says_how_to_run_it_anyway(tmp_path):
    """A job's run whose warm-up outlasts its stage (the main job at a test-sized budget) is refused
    naming the command-line form that runs it anyway (a run's key goes to --override); with it, every
    run is composed."""
    job = compose_job("main", ["seeds=[0]"])
    with pytest.raises(ValueError) as refused:
        job_configs(job, tmp_path, ["trainer.budget_flops=5e10"])
    assert str(refused.value).startswith("job entry 'cpu_masking_naive75 protocol=cpu_prompt': stages.pretrain: "
                                         "warmup_images=1600 is longer than the stage")
    assert str(refused.value).endswith("(microdit-cpu-ablation --override trainer.plan_check=warn runs it anyway)")
    assert len(job_configs(job, tmp_path, ["trainer.budget_flops=5e10", "trainer.plan_check=warn"])) == 3


def test_two_job_entries_that_train_one_run_folder_are_refused(tmp_path):
    """Two entries giving one trainer.name (at a seed): one folder, two configs; refused before
    anything trains, naming both (each run of a job is one row of its table)."""
    entries = "[cpu_masking_naive75,'cpu_masking_naive75 stages.pretrain.mask.ratio=0.5']"
    job = compose_job("main", ["seeds=[0]", "report.contrasts=[]", f"experiments={entries}"])
    with pytest.raises(ValueError, match=re.escape("job entries 'cpu_masking_naive75' and 'cpu_masking_naive75 stages."
                                                   f"pretrain.mask.ratio=0.5' both train the run {tmp_path}/seed0/"
                                                   "cpu-naive75 (one trainer.name at one seed and budget): give one "
                                                   "its own trainer.name=NAME")):
        job_configs(job, tmp_path)
    assert not any(tmp_path.iterdir())


def test_a_budget_job_trains_each_arm_at_each_budget(tmp_path):
    from microdit.eval.trend import budget_tag
    from microdit.pipeline import arm_of

    assert [budget_tag(b) for b in (5e11, 1e12, 1.2e13, 2.5e12, 3e12 + 1)] == ["5e11", "1e12", "1.2e13", "2.5e12",
                                                                                "3e12"]
    job = compose_job("crossover", ["budgets=[1e12,4e12]", "seeds=[0,1]", "largest_budget_seeds=[0,1,2]"])
    configs = job_configs(job, tmp_path)
    got = [(c.trainer.name, c.trainer.budget_flops, c.trainer.seed) for c in configs if "naive" in c.trainer.name]
    assert got == [("xo64-naive75-1e12", 1e12, 0), ("xo64-naive75-1e12", 1e12, 1),
                   ("xo64-naive75-4e12", 4e12, 0), ("xo64-naive75-4e12", 4e12, 1), ("xo64-naive75-4e12", 4e12, 2)]
    assert {arm_of(c, job) for c in configs} == {(a, b) for a in ("xo64-naive75", "xo64-deferred75", "xo64-none")
                                                 for b in (1e12, 4e12)}
    for overrides, message in ((["budgets=[1e12,1e12]"], "budgets must be distinct positive FLOP counts"),
                               (["budgets=[0]"], "budgets must be distinct positive FLOP counts"),
                               (["budgets=[]"], "largest_budget_seeds needs budgets"),
                               (["largest_budget_seeds=[-1]"], "largest_budget_seeds must be distinct non-negative"),
                               (["largest_budget_seeds=[0,1,1]"], "largest_budget_seeds must be distinct")):
        with pytest.raises(ValueError, match=r"^job crossover: .*" + message):
            compose_job("crossover", overrides)


def test_job_overrides_and_bad_values():
    job = compose_job("main", ["seeds=[4]", "eval.num_samples=7", "report.out=elsewhere"])
    assert job.seeds == [4] and job.eval.num_samples == 7 and job.report.out == "elsewhere"
    for overrides, message in ((["eval.bogus=1"], "Key 'bogus' not in 'JobEval'"),
                               (["seeds=[0,x]"], "could not be converted to Integer"),
                               (["eval.probe_steps=0"], "eval.probe_steps must be a positive integer"),
                               (["eval.held_out_samples=299"], "eval.held_out_samples must be at least 2 x "
                                                               "eval.num_samples (300: prompts, and as many real"),
                               (["eval.metrics=[fid,nope]"], "eval.metrics: unknown metric(s) ['nope']"),
                               (["report.columns=[probe_fdd,probe_acc.shape]"],
                                "report.columns ['probe_fdd'] are not written by eval.metrics ['probe']"),
                               (["eval.metrics=[fid]"], "report.columns ['probe_acc.shape', 'probe_acc.colour', "
                                                        "'probe_fd', 'probe_kid'] are not written by eval.metrics"),
                               (["experiments=[]"], "experiments must be a non-empty list"),
                               (["report.out="], "report.out '' must name a folder (. for the working directory)"),
                               (["eval.metrics=[]"], "eval.metrics: no metric given; choose from probe,"),
                               (["seeds=[0,1,0]"], "seeds must be a non-empty list of distinct non-negative integers, "
                                                   "got [0, 1, 0]")):
        with pytest.raises(ValueError, match=r"^job main: .*" + message.replace("(", r"\(").replace(")", r"\)")
                           .replace("[", r"\[").replace("]", r"\]")):
            compose_job("main", overrides)
    with pytest.raises(ValueError, match="unknown job 'nope'"):
        compose_job("nope")


def test_a_job_files_value_of_the_wrong_kind_is_named_by_its_key(tmp_path):
    """OmegaConf's merge errors name no key ("Cannot merge DictConfig with ListConfig full_key: "):
    the job file's key that the schema refuses is named before them."""
    path = tmp_path / "mine.yaml"
    for body, key in (("equal_steps: [a, b]", "equal_steps"), ("seeds: {a: 1}", "seeds"), ("eval: [1]", "eval"),
                      ("report: {columns: {a: 1}}", "report.columns"),
                      ("eval: {num_samples: [3]}", "eval.num_samples")):
        path.write_text(f"experiments: [cpu_masking_naive75]\n{body}\n")
        with pytest.raises(ValueError, match=rf"^job {path}: {key}: \S"):
            compose_job(str(path))


def test_a_job_file_outside_conf(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("experiments: [cpu_masking_naive75]\nseeds: [1]\neval: {num_samples: 9}\n")
    job = compose_job(str(path), ["eval.probe_steps=3"])
    assert job.experiments == ["cpu_masking_naive75"] and job.eval.num_samples == 9 and job.eval.probe_steps == 3
    path.write_text("experiments: [cpu_masking_naive75]\nseed: [1]\n")
    with pytest.raises(ValueError, match=rf"job {path}: .*seed"):
        compose_job(str(path))


def test_jobs_sharing_a_results_folder_keep_each_others_results(tmp_path):
    """The first job to report in a folder owns its results.*; another job sharing it (to reuse its
    runs, as images_vs_steps does in the main job's runs/cpu) reports in a folder of its own name."""
    main, other = compose_job("main"), compose_job("images_vs_steps")
    assert (main.name, other.name) == ("main", "images_vs_steps")
    out = tmp_path / "cpu"
    out.mkdir()
    assert report_dir(main, out) == out and not (out / "job.json").exists()  # asked, not claimed: nobody owns it
    assert report_dir(other, out) == out
    assert report_dir(main, out, claim=True) == out and json.loads((out / "job.json").read_text()) == {"job": "main"}
    assert report_dir(other, out) == report_dir(other, out, claim=True) == out / "images_vs_steps"
    assert report_dir(main, out) == out  # the owner again, after another job
    path = tmp_path / "mine.yaml"
    path.write_text("experiments: [cpu_masking_naive75]\n")
    assert report_dir(compose_job(str(path)), out) == out / "mine"  # a job file: its stem
    copy = tmp_path / "copy" / "main.yaml"  # a copy of the main job, changed: not the job whose results are there
    copy.parent.mkdir()
    copy.write_text((CONF_DIR / "job" / "main.yaml").read_text().replace("seeds: [0, 1, 2, 3, 4]", "seeds: [0, 1]"))
    with pytest.raises(ValueError, match=rf"results folder {out} holds the results of job 'main' from conf/job, not "
                                         rf"from {copy}: give this job another report.out"):
        report_dir(compose_job(str(copy)), out, claim=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert report_dir(compose_job(str(copy)), elsewhere, claim=True) == elsewhere  # its own folder: its own
    assert json.loads((elsewhere / "job.json").read_text()) == {"job": "main", "file": str(copy)}
    assert report_dir(compose_job(str(copy)), elsewhere) == elsewhere
    with pytest.raises(ValueError, match=rf"holds the results of job 'main' from {copy}, not from conf/job"):
        report_dir(main, elsewhere)
    (out / "job.json").write_text("not json")
    with pytest.raises(ValueError, match=r"job\.json: expected \{\"job\": NAME\}"):
        report_dir(main, out)
    (out / "job.json").unlink()
    (out / "job.json").mkdir()
    with pytest.raises(ValueError, match=r"job\.json: expected"):
        report_dir(main, out)
    plain = tmp_path / "plain"  # a file where the folder should be: nothing can be written under it, even by root
    plain.write_text("")
    with pytest.raises(ValueError, match="results folder .*plain .*is not writable"):
        report_dir(main, plain, claim=True)


@pytest.mark.slow
def test_a_job_runs_end_to_end_from_python(tmp_path, monkeypatch, capfd):
    """What a notebook does: compose a job, run it, read the rows; a rerun reuses everything (and
    says of each run that it was trained before)."""
    monkeypatch.chdir(tmp_path)
    job = compose_job("main", ["seeds=[0]", "eval.num_samples=8", "eval.held_out_samples=64", "eval.probe_steps=5",
                               "report.columns=[probe_fd,probe_acc.colour,probe_acc.shape]"])
    small = ["trainer.budget_flops=2e10", "data.prepare_samples=256", "trainer.progress=false",
             "stages.pretrain.warmup_images=0", "trainer.threads=1"]
    rows, table = run_job(job, out=tmp_path / "out", extra=small)
    assert [r["trainer.name"] for r in rows] == ["cpu-naive75", "cpu-deferred75", "cpu-naive75-eqsteps"]
    images = {r["trainer.name"]: r["cost.images"] for r in rows}  # equal steps at the test's budget, as sized
    assert images["cpu-naive75-eqsteps"] == images["cpu-deferred75"] < images["cpu-naive75"]
    assert (tmp_path / "out" / "samples.png").is_file() and "cpu-naive75-eqsteps" in (
        tmp_path / "out" / "samples.md").read_text()
    assert all(isinstance(r["eval.heldout.probe_fd"], float) for r in rows)
    assert "| cpu-naive75 | pretrain |" in table and (tmp_path / "out" / "results.csv").is_file()
    assert json.loads((tmp_path / "out" / "job.json").read_text()) == {"job": "main"}
    assert "| chance (shuffled prompts) | pretrain |" in table and "| real vs real (same n) | pretrain |" in table
    assert "| cpu-naive75 vs cpu-deferred75 | pretrain | probe_acc.shape |" in table  # the planned contrast
    assert "| cpu-deferred75 (shuffled prompts) vs cpu-deferred75 | pretrain | probe_acc.shape |" in table
    assert (tmp_path / "data" / "synthetic-minilm-one-object-probe" / "probe").is_dir()  # the probe's own split
    two_seeds = compose_job("main", ["seeds=[0,1]"])
    assert {(c.trainer.seed, c.trainer.name) for c in job_configs(two_seeds, tmp_path / "x", small)} == {
        (s, n) for s in (0, 1) for n in ("cpu-naive75", "cpu-deferred75", "cpu-naive75-eqsteps")}
    entry = json.loads((tmp_path / "out" / "seed0" / "cpu-naive75" / "metrics.json").read_text())["entries"][0]
    assert (entry["seed"], entry["prompt_seed"]) == (0, 0)  # seed s: noise seeds 1e6 * s + i, prompts drawn with s
    data = "data/synthetic-minilm-one-object"  # experiments/README's command for one run's evaluation by hand
    eval_main(["run", "out/seed0/cpu-naive75", "--dataset", f"{data}-eval", "--probe-dataset", f"{data}-probe",
               "--probe-steps", "5", "--num-samples", "8", "--batch-size", "100", "--seed", "0", "--prompt-seed", "0",
               "--name", "by-hand"])
    by_hand = json.loads((tmp_path / "out" / "seed0" / "cpu-naive75" / "metrics.json").read_text())["entries"][-1]
    assert by_hand["name"] == "by-hand" and by_hand["metrics"] == entry["metrics"]
    capfd.readouterr()
    again, _ = run_job(job, out=tmp_path / "out", extra=small)
    assert [r["eval.heldout.probe_fd"] for r in again] == [r["eval.heldout.probe_fd"] for r in rows]
    said = capfd.readouterr().err.splitlines()  # a worker's lines start with "[worker K] "
    assert any(line.endswith("[job] run 2/3: cpu-deferred75 seed 0: trained before") for line in said)
    job.report.columns.append("probe_acc.shap")  # an attribute the labels do not have: refused before training
    with pytest.raises(ValueError, match=r"report.columns \['probe_acc.shap'\]: the probe of .* reads the "
                                         r"attributes \['class', 'colour', 'shape'\]"):
        run_job(job, out=tmp_path / "new", extra=small)
    assert not (tmp_path / "new" / "seed0").exists()
    assert not (tmp_path / "new" / "job.json").exists()  # a job refused before training owns no folder
    job.report.columns.pop()

    def offline(settings, device):
        raise WeightsUnavailable("FID's InceptionV3: the pretrained weights cannot be fetched (offline)")

    monkeypatch.setitem(EXTRACTORS, "inception", offline)  # a node without network
    job.eval.metrics = ["probe", "fid"]
    with pytest.raises(WeightsUnavailable, match="cannot be fetched"):
        run_job(job, out=tmp_path / "new", extra=small)
    assert not (tmp_path / "new" / "seed0").exists() and not (tmp_path / "new" / "job.json").exists()


@pytest.mark.slow
def test_workers_share_a_jobs_runs_and_compute_what_one_process_does(tmp_path, monkeypatch):
    """Two worker processes (one thread each) train and evaluate the runs one process would, with
    the same numbers as one process at one thread; the parent reports them all."""
    monkeypatch.chdir(tmp_path)
    small = ["trainer.budget_flops=1e10", "data.prepare_samples=128", "trainer.progress=false",
             "stages.pretrain.warmup_images=0", "trainer.threads=1"]
    fields = ["seeds=[0]", "eval.num_samples=4", "eval.held_out_samples=32", "eval.probe_steps=2",
              "eval.probe_samples=64", "report.sample_grid=false", "report.contrasts=[]"]
    jobs = [compose_job("main", [*fields, "workers=2"]), compose_job("main", [*fields, "workers=1"])]
    for job in jobs:
        job.experiments = job.experiments[:2]  # naive75 and deferred75
    parallel, _ = run_job(jobs[0], out=tmp_path / "two", extra=small)
    serial, _ = run_job(jobs[1], out=tmp_path / "one", extra=small)
    assert [r["trainer.name"] for r in parallel] == ["cpu-naive75", "cpu-deferred75"]
    for a, b in zip(parallel, serial, strict=True):
        assert a["eval.heldout.probe_fd"] == b["eval.heldout.probe_fd"]
        summaries = [json.loads((tmp_path / out / "seed0" / a["trainer.name"] / "summary.json").read_text())
                     for out in ("two", "one")]
        assert summaries[0]["final_loss"] == summaries[1]["final_loss"]
    with pytest.raises(ValueError, match="workers must be a positive integer or 0"):
        compose_job("main", ["workers=-1"])


def test_a_jobs_workers_train_every_run_before_they_evaluate():
    """The main job's queue: its 15 trainings, largest budget first (the equal-steps arm, which has
    no budget, last), then 15 evaluations, so that evaluations fill the end."""
    from microdit.job_runs import EVALUATE, task_order

    configs = job_configs(compose_job("main"), Path("runs"))
    order = task_order(configs)
    assert sorted(order[:15]) == list(range(15)) and order[15:] == [EVALUATE] * 15
    budgets = [configs[i].trainer.budget_flops or 0.0 for i in order[:15]]
    assert budgets == sorted(budgets, reverse=True) and budgets[-1] == 0.0


@pytest.mark.slow
def test_a_worker_that_fails_in_training_leaves_no_evaluation_waiting(tmp_path, monkeypatch):
    """A worker that ends during a training (here: its run folder cannot be made) never puts that
    run on the trained queue: the other worker, whose evaluations would wait for it, trains and
    evaluates the other run and ends, and the job names the failed worker (no hang)."""
    import multiprocessing
    import threading

    from microdit.job_runs import train_and_evaluate
    from microdit.pipeline import prepare_data

    monkeypatch.chdir(tmp_path)
    small = ["trainer.budget_flops=1e10", "data.prepare_samples=128", "trainer.progress=false",
             "stages.pretrain.warmup_images=0"]
    job = compose_job("main", ["seeds=[0,1]", "workers=2", "eval.num_samples=4", "eval.held_out_samples=32",
                               "eval.probe_steps=2", "eval.probe_samples=64", "report.contrasts=[]"])
    job.experiments = job.experiments[:1]
    configs = job_configs(job, tmp_path / "out", small)
    prepare_data(configs, job)
    (tmp_path / "out").mkdir(exist_ok=True)
    (tmp_path / "out" / "seed1").write_text("x")  # where seed 1's run folder would go
    outcome = []

    def run():
        try:
            train_and_evaluate(configs, job)
        except ValueError as err:
            outcome.append(str(err))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=600)
    hung = thread.is_alive()
    for child in multiprocessing.active_children():
        child.terminate()
    assert not hung, "the job waited forever for the evaluation of a run that was never trained"
    assert len(outcome) == 1 and outcome[0].startswith("job worker(s) [") and "failed" in outcome[0]
    assert (tmp_path / "out" / "seed0" / "cpu-naive75" / "metrics.json").is_file()


@pytest.mark.slow
def test_a_signal_to_the_job_alone_stops_its_workers_at_a_checkpoint(tmp_path, monkeypatch):
    """SIGTERM (or SIGINT) sent to the job's process only (kill PID, not the terminal's Ctrl-C to
    the whole group) reaches its workers: each stops its run at a checkpoint and the job says it
    was stopped; no worker goes on training alone."""
    import signal
    import threading
    import time

    from microdit.cli.stopping import stopped_in_one_line
    from microdit.job_runs import train_and_evaluate

    monkeypatch.chdir(tmp_path)
    job = compose_job("main", ["seeds=[0]", "workers=2", "report.contrasts=[]"])
    job.experiments = job.experiments[:2]  # naive75 and deferred75
    long = ["data.prepare_samples=64", "trainer.progress=false", "trainer.threads=1", "trainer.log_every_images=8",
            "stages.pretrain.budget_fraction=null", "stages.pretrain.images=1000000", "trainer.budget_flops=null"]
    configs = job_configs(job, tmp_path / "out", long)
    stats = [tmp_path / "out" / "seed0" / c.trainer.name / "stats.jsonl" for c in configs]

    def stop_once_both_train():
        while not all(p.is_file() and p.stat().st_size for p in stats):
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=stop_once_both_train, daemon=True).start()
    with pytest.raises(SystemExit) as stop, stopped_in_one_line("the job was stopped"):  # as microdit-cpu-ablation
        train_and_evaluate(configs, job)
    assert stop.value.code == 128 + signal.SIGTERM
    for cfg in configs:  # each run stopped at a checkpoint it resumes from, long before its end
        run = tmp_path / "out" / "seed0" / cfg.trainer.name
        assert any((run / "checkpoints").iterdir()) and not (run / "summary.json").exists()


def test_what_a_jobs_workers_exit_codes_say():
    """Ctrl-C or SIGTERM reaches every worker: one that stops at its checkpoint (128 + signal) or
    dies of the signal is 'stopped' (the job then exits as a stopped run does), not 'failed (the
    error is printed above)' with no error printed."""
    from microdit.job_runs import workers_outcome

    assert workers_outcome([0, 0]) is None and workers_outcome([130, -2]) is None and workers_outcome([143, 0]) is None
    assert workers_outcome([2, 130]).startswith("job worker(s) [0] failed (the error is printed above); worker(s) [1] "
                                                "stopped at a signal; finished runs")
    assert workers_outcome([1, 2]).startswith("job worker(s) [0, 1] failed")
