"""The run module: the one dataset/text-encoder fit check, and the checkpoint reading hints."""

import pytest

from microdit.data import DataError, load_manifest
from microdit.models import preset_config
from microdit.run import CheckpointError, check_fits_model, fit_problems, load, older_hint, resolve_checkpoint

from conftest import FIXTURE_DIR

FIXTURE = FIXTURE_DIR / "latents"


def test_model_fit_check():
    manifest = load_manifest(FIXTURE)
    nano = preset_config("nano", caption_dim=32)
    check_fits_model(manifest, str(FIXTURE), nano)
    with pytest.raises(DataError, match=r"latent channels 12 != model in_channels 4; caption width 32 != model "
                                        r"caption_dim 1024; latent size 16x16 != model input_size 32x32: do this"):
        tiny = preset_config("MicroDiT_Tiny_2")
        check_fits_model(manifest, str(FIXTURE), tiny, hint="do this")
    with pytest.raises(DataError, match=r"fit the model: caption width 32 != model caption_dim 1024$"):
        check_fits_model(manifest, str(FIXTURE), tiny, latents=False)  # captions only
    assert fit_problems(nano, caption_dim=32) == [] and fit_problems(nano, latent_shape=[12, 16, 16]) == []
    assert fit_problems(nano, caption_dim=64) == ["caption width 64 != model caption_dim 32"]


def test_unreadable_checkpoint_hints_name_what_exists(tmp_path):
    root = tmp_path / "run" / "checkpoints"
    for name in ("000000000064", "000000000128"):
        (root / name).mkdir(parents=True)
        (root / name / "meta.json").write_text("{}")
    (root / "000000000128" / "state.pt").write_bytes(b"cut short")
    with pytest.raises(CheckpointError, match=r"000000000128 is unreadable .*000000000064 is intact: give that folder"):
        load(root / "000000000128")
    assert "trainer.resume=" in older_hint(root / "000000000128", resuming=True)
    assert older_hint(root / "000000000064", resuming=False) == "the run has no older checkpoint"
    assert "move" in older_hint(root / "000000000064", resuming=True)


def test_a_checkpoint_is_found_from_its_folder_its_run_or_the_runs_checkpoints_folder(tmp_path):
    root = tmp_path / "run" / "checkpoints"
    for name in ("000000000064", "000000000128"):
        (root / name).mkdir(parents=True)
        (root / name / "meta.json").write_text("{}")
    (root / "000000000192").mkdir()  # not complete: no meta.json
    newest = root / "000000000128"
    assert resolve_checkpoint(tmp_path / "run") == resolve_checkpoint(root) == newest
    assert resolve_checkpoint(root / "000000000064") == root / "000000000064"
    with pytest.raises(FileNotFoundError, match=r"nope does not exist$"):
        resolve_checkpoint(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"is neither a checkpoint folder"):
        resolve_checkpoint(tmp_path)
