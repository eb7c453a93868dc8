"""One CLI convention: every option of every command has help text and shows its default, and the
shared names mean one thing (--num-samples, --steps, --cfg-scale, --metrics; lists comma-separated)."""

import argparse
import json

import pytest

from microdit.cli import bench, cpu_ablation, data, plan, results, sample
from microdit.cli import eval as eval_cli

COMMANDS = {"microdit-bench": bench.main, "microdit-cpu-ablation": cpu_ablation.main, "microdit-data": data.main,
            "microdit-plan": plan.main,
            "microdit-eval": eval_cli.main, "microdit-results": results.main, "microdit-sample": sample.main}


class Captured(Exception):
    pass


def parsers_of(main, monkeypatch) -> list[argparse.ArgumentParser]:
    """The parser a command builds, and its sub-command parsers."""
    seen = []

    def capture(self, *args, **kwargs):
        seen.append(self)
        raise Captured

    for parse in ("parse_args", "parse_intermixed_args"):  # a command never runs here: it stops at parsing
        monkeypatch.setattr(argparse.ArgumentParser, parse, capture)
    with pytest.raises(Captured):
        main([])
    out, todo = [], list(seen)
    while todo:
        parser = todo.pop()
        out.append(parser)
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo.extend(action.choices.values())
    return out


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_option_has_help_and_shows_its_default(command, monkeypatch):
    for parser in parsers_of(COMMANDS[command], monkeypatch):
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            name = f"{parser.prog} {'/'.join(action.option_strings) or action.dest}"
            assert action.help, f"{name} has no help text"
            has_default = action.default not in (None, False, [], argparse.SUPPRESS) and action.option_strings
            if has_default:
                assert "default" in action.help, f"{name} does not show its default {action.default!r}"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_shared_option_names(command, monkeypatch):
    """The same quantity has the same name in every command (--num-samples, --metrics, --cfg-scale)."""
    for parser in parsers_of(COMMANDS[command], monkeypatch):
        flags = {f for a in parser._actions for f in a.option_strings}
        assert not flags & {"--num", "--metric", "--eval-samples", "--cfg", "--guidance"}, (parser.prog, flags)
        if "--steps" in flags:
            assert "--cfg-scale" in flags


def test_key_value_arguments_go_before_and_after_options(monkeypatch, capsys, tmp_path):
    """`microdit-cpu-ablation --job main seeds=[0] --out x eval.num_samples=8` was argparse's
    'unrecognized arguments: eval.num_samples=8': the positional list ended at the first option."""
    seen = {}

    def fake_run_job(job, extra=None):
        seen["job"] = job
        raise Captured

    monkeypatch.setattr(cpu_ablation, "run_job", fake_run_job)
    with pytest.raises(Captured):
        cpu_ablation.main(["seeds=[3]", "--out", str(tmp_path / "x"), "eval.num_samples=8", "--workers", "1",
                           "eval.probe_steps=5"])
    job = seen["job"]
    assert (job.seeds, job.eval.num_samples, job.eval.probe_steps, job.workers) == ([3], 8, 5, 1)
    assert job.report.out == str(tmp_path / "x")
    plan.main(["trainer.batch_size=8", "--json", "model=micro", "--mfu", "0.3"])
    assert json.loads(capsys.readouterr().out)["runs"][0]["overrides"] == ["trainer.batch_size=8", "model=micro"]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_help_page_formats(command, monkeypatch):
    """``--help`` of the command and of each sub-command prints (argparse %-formats every help text:
    a bare '%' in one breaks the whole page)."""
    for parser in parsers_of(COMMANDS[command], monkeypatch):
        page = parser.format_help()
        assert page.startswith("usage:") and "%(" not in page, parser.prog


def test_a_path_with_an_overrides_characters_stays_one_path(monkeypatch, tmp_path):
    """`--out runs/lr=1e-3` was Hydra's "mismatched input '='", `--data data/a,b` trained on a
    folder `data/a` it built and then refused `b`: a path with `=`, `,`, spaces, brackets, quotes or
    `${` reaches the job and every run's config as the one path it is."""
    from microdit.pipeline import job_configs

    seen = {}

    def fake_run_job(job, extra=None):
        seen.update(job=job, extra=extra)
        raise Captured

    monkeypatch.setattr(cpu_ablation, "run_job", fake_run_job)
    odd = tmp_path / "lr=1e-3, it's [a] {b} ${x}"
    with pytest.raises(Captured):
        cpu_ablation.main(["--out", str(odd / "out"), "--data", str(odd / "data"), "seeds=[0]"])
    assert seen["job"].report.out == str(odd / "out")
    configs = job_configs(seen["job"], odd / "out", seen["extra"])
    paths = {(c.data.folders[0], c.trainer.run_dir) for c in configs}
    assert paths == {(str(odd / "data"), str(odd / "out" / "seed0"))}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_an_empty_file_or_folder_is_refused_not_taken_for_the_working_directory(command, monkeypatch):
    """`--out ""` (an unset shell variable) was Path(""), the working directory: every option or
    argument naming a file or folder is read by options.file_or_folder, which refuses it."""
    from pathlib import Path

    from microdit.cli.options import file_or_folder

    for parser in parsers_of(COMMANDS[command], monkeypatch):
        for action in parser._actions:
            assert action.type is not Path, f"{parser.prog} {action.dest}: type=Path takes '' for the working directory"
    for given in ("", "  "):
        with pytest.raises(argparse.ArgumentTypeError, match=f"expected a file or folder, got {given!r}"):
            file_or_folder(given)
    assert file_or_folder("runs/x") == Path("runs/x")


def test_empty_seeds_are_refused_not_the_jobs_seeds(monkeypatch):
    """`microdit-cpu-ablation --seeds ""` ran the job with its own seeds."""
    monkeypatch.setattr(cpu_ablation, "run_job", lambda *a, **k: pytest.fail("the job ran"))
    with pytest.raises(SystemExit, match=r"^microdit-cpu-ablation: error: --seeds: expected comma-separated integers "
                                         r"\(e.g. 0,1,2\), got ''$"):
        cpu_ablation.main(["--seeds", ""])
