"""microdit-data on the command line: synthetic -> encode -> inspect -> verify, one-line errors."""

import pytest
from PIL import Image

from microdit.cli.data import main as data_main


@pytest.fixture()
def images(tmp_path):
    data_main(["synthetic", str(tmp_path / "img"), "--num-samples", "30", "--shard-size", "10", "--size", "16"])
    return tmp_path / "img"


def test_command_line(tmp_path, capsys, images):
    data_main(["encode", str(images), str(tmp_path / "lat"), "--text-encoder", "offline:32:16", "--device", "cpu"])
    data_main(["inspect", str(tmp_path / "lat"), "--grid", str(tmp_path / "grid.png"), "--num-samples", "6"])
    data_main(["verify", str(tmp_path / "lat")])
    out = capsys.readouterr().out
    assert "30 samples" in out and "all match the manifest" in out
    assert Image.open(tmp_path / "grid.png").size == (8 * 16, 16)
    (tmp_path / "lat" / "latents-00002.tar").write_bytes(b"garbage")
    with pytest.raises(SystemExit) as exit_info:
        data_main(["verify", str(tmp_path / "lat")])
    assert exit_info.value.code == 2
    assert "latents-00002.tar does not match its manifest entry" in capsys.readouterr().err

