"""The end-to-end demo (train -> sample -> check) on a few steps: the loss falls, files land."""

from microdit.cli.demo import BlobTask, run


def test_demo_end_to_end(tmp_path):
    result = run("nano", steps=60, batch=16, mask_ratio=0.5, finetune_steps=20, lr=1e-3, sample_steps=4,
                 cfg_scale=2.0, out_dir=tmp_path, seed=0, log_every=20)
    losses = [loss for _, loss in result["curve"]]
    assert len(losses) == 3 and losses[-1] < 0.5 * losses[0]
    assert (tmp_path / "samples.png").stat().st_size > 0
    assert 0.0 <= result["class_accuracy"] <= 1.0


def test_blob_task_is_deterministic_and_caption_dependent():
    a, b = BlobTask(16, seed=3), BlobTask(16, seed=3)
    ia, ca, la = a.sample(8)
    ib, cb, lb = b.sample(8)
    assert (ia == ib).all() and (ca == cb).all() and (la == lb).all()
    assert ia.min() >= -1 and ia.max() <= 1 and ia.shape == (8, 3, 32, 32) and ca.shape == (8, 8, 16)
    # the caption identifies the class: nearest class caption = label
    nearest = ((ca[:, None] - a.captions[None]) ** 2).sum(dim=(2, 3)).argmin(dim=1)
    assert (nearest == la).all()
