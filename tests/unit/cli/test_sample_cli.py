"""``microdit-sample``'s prompts: from --prompt, a file, a pipe or standard input (``-``); a prompts
file that cannot give prompts is refused in one line naming it."""

from __future__ import annotations

import argparse
import io
import os
import threading
from pathlib import Path

import pytest

from microdit.cli.sample import read_prompts
from microdit.encoders.text import OfflineTextEncoder


def _args(prompt=None, prompts_file=None) -> argparse.Namespace:
    return argparse.Namespace(prompt=prompt, prompts_file=None if prompts_file is None else Path(prompts_file))


def test_prompts_from_arguments_then_a_file(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a red circle\n\n  a blue square  \n")
    assert read_prompts(_args(["a green star"], path)) == ["a green star", "a red circle", "a blue square"]


def test_prompts_from_a_pipe(tmp_path):
    """A named pipe stands for what a shell's ``--prompts-file <(...)`` passes: not a regular file."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_text("a red circle\na blue square\n"))
    writer.start()
    try:
        assert read_prompts(_args(prompts_file=fifo)) == ["a red circle", "a blue square"]
    finally:
        writer.join(timeout=10)  # a writer whose text was read ends at once (it may still be alive a moment after)
        if writer.is_alive():  # the pipe was not read: read it, so that the writer ends and the test fails
            fifo.read_text()
            writer.join()


def test_prompts_from_standard_input(monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("a red circle\n"))
    assert read_prompts(_args(prompts_file="-")) == ["a red circle"]


@pytest.mark.parametrize("case", ["missing", "folder", "empty", "binary"])
def test_a_prompts_file_that_gives_no_prompts_is_named(tmp_path, case):
    path = tmp_path / "prompts.txt"
    expected = {"missing": "does not exist", "folder": "is a folder", "empty": "has no prompts (expected one per line)",
                "binary": "cannot be read as text"}[case]
    if case == "folder":
        path.mkdir()
    elif case == "empty":
        path.write_text("\n \n")
    elif case == "binary":
        path.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(SystemExit) as stop:
        read_prompts(_args(prompts_file=path))
    assert str(stop.value.code).startswith(f"microdit-sample: error: prompts file {path} {expected}")


def test_an_empty_prompt_is_said_not_to_be_the_unconditional_model(capsys):
    """An empty prompt is sampled as the text encoder encodes "" (its start and end tokens: not the
    all-zero caption that training's dropout gives), and the command says so and what gives
    unconditional samples (``--cfg-scale 0``: tests/unit/diffusion/test_samplers.py)."""
    assert read_prompts(_args(["a red circle", "", "  "])) == ["a red circle", "", "  "]
    said = capsys.readouterr().err
    assert said.count("\n") == 1 and "prompts 0001, 0002 are empty" in said and "--cfg-scale 0" in said
    emb, mask = OfflineTextEncoder(dim=16, length=8).encode([""])
    assert mask.any() and emb.abs().sum() > 0
    read_prompts(_args(["", "a red circle"]))
    assert "microdit-sample: prompt 0000 is empty: sampled with" in capsys.readouterr().err
    read_prompts(_args(["a red circle"]))
    assert capsys.readouterr().err == ""
