"""Shared fixtures of the evaluation tests."""

import pytest

from microdit.cli.data import main as data_main


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory):
    """A labelled synthetic latent dataset (1,500 training and 300 held-out samples), built once."""
    root = tmp_path_factory.mktemp("probe")
    for name, num, seed in (("train", 1500, 0), ("eval", 300, 1)):
        data_main(["synthetic", str(root / f"{name}-img"), "--num", str(num), "--seed", str(seed)])
        data_main(["encode", str(root / f"{name}-img"), str(root / name), "--text-encoder", "offline:128:32",
                   "--device", "cpu"])
    return root
