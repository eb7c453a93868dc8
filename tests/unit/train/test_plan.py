"""The stage resolver and stage plans: every stage's network, EDM constants, mask, data and length
resolved once, as the trainer, the GPU plan and checkpoint loading read them."""

import pytest

from microdit.encoders import caption_length
from microdit.experiment import CONF_DIR
from microdit.masking import MaskConfig
from microdit.train.flops import flops_per_image
from microdit.train.plan import budget_flops, check_plan, plan_problems, resolve, stage_at

from train_helpers import compose_config

TWO = ["trainer.batch_size=8", "diffusion.P_mean=-1.0",
       "+stages={pretrain: {images: 100}, hires: {mask: {ratio: 0.0}, steps: 3, P_mean: 0.5, input_size: [32, 32], "
       "pos_interp_scale: 2.0, data_folders: [big]}}"]


def test_resolve_applies_every_stage_override_and_nothing_else():
    cfg = compose_config(TWO)
    low, high = resolve(cfg)
    assert (low.index, low.name, high.index, high.name) == (0, "pretrain", 1, "hires")
    assert low.model.input_size == [16, 16] and high.model.input_size == [32, 32]
    assert (low.model.pos_interp_scale, high.model.pos_interp_scale) == (1.0, 2.0)
    assert high.model.width == low.model.width == cfg.model.build_config().width
    assert (low.edm.P_mean, low.edm.P_std, high.edm.P_mean, high.edm.P_std) == (-1.0, 1.2, 0.5, 1.2)
    assert low.edm.sigma_data == high.edm.sigma_data == cfg.diffusion.sigma_data
    assert low.mask == MaskConfig(0.75) and high.mask == MaskConfig(0.0)
    assert low.data.folders == cfg.data.folders and high.data.folders == ["big"]
    assert high.data.caption_dropout == cfg.data.caption_dropout
    assert low.images is None and high.steps is None  # no caption length given: nothing to size
    assert cfg.stages["pretrain"].model_config(cfg.model.build_config()) == low.model  # the one definition


def test_plans_round_to_whole_global_batches_and_count_flops():
    cfg = compose_config(TWO)
    low, high = resolve(cfg, caption_len=5)
    assert (low.images, low.steps) == (96, 12)  # 100 images -> 12 whole batches of 8
    assert (high.images, high.steps) == (24, 3)
    assert low.flops_per_image == flops_per_image(low.model, (8, 8), 5, MaskConfig(0.75)).train
    assert high.flops_per_image == flops_per_image(high.model, (16, 16), 5, MaskConfig(0.0)).train


def test_budget_fractions_flops_and_dollars():
    cfg = compose_config(["trainer.batch_size=4", "trainer.budget_flops=1e12", "stages.pretrain.images=null",
                          "stages.pretrain.budget_fraction=0.5",
                          "+stages={b: {mask: {ratio: 0.0}, budget_fraction: 0.5}, c: {flops: 1e11}}"])
    a, b, c = resolve(cfg, caption_len=8)
    for stage, flops in ((a, 5e11), (b, 5e11), (c, 1e11)):
        assert stage.steps == int(flops / stage.flops_per_image // 4)
    assert a.steps > b.steps  # masking makes an image cheaper: more of them in the same FLOPs
    dollars = compose_config(["trainer.budget_dollars=3.75", "trainer.expected_mfu=0.5"])
    assert budget_flops(dollars, peak_flops=1e12) == pytest.approx(3600 * 1e12 * 0.5)
    with pytest.raises(ValueError, match="budget_dollars needs the device's peak"):
        budget_flops(dollars, None)


def test_null_stages_are_skipped_and_order_is_first_definition():
    cfg = compose_config(["+stages={finetune: {mask: {ratio: 0.0}, images: 8}, extra: {images: 8}}",
                          "stages.extra=null"])
    assert [s.name for s in resolve(cfg)] == ["pretrain", "finetune"]
    assert [s.index for s in resolve(cfg)] == [0, 1]


def test_stage_of_a_checkpoint():
    stages = resolve(compose_config(TWO))
    assert stage_at(stages, 0).name == "pretrain" and stage_at(stages, 1).name == "hires"
    assert stage_at(stages, 2).name == "hires"  # written after the last stage ended


def test_a_stage_whose_ema_never_starts_or_whose_warmup_outlasts_it_is_named():
    cfg = compose_config(["trainer.batch_size=8", "stages.pretrain.images=80", "stages.pretrain.ema.decay=0.9",
                          "stages.pretrain.ema.start_images=80", "stages.pretrain.warmup_images=96"])
    stages = resolve(cfg, caption_len=32)
    assert plan_problems(stages) == [
        "stages.pretrain: ema.start_images=80 is not before the stage's end (80 images): its EMA never starts",
        "stages.pretrain: warmup_images=96 is longer than the stage (80 images)"]
    with pytest.raises(ValueError, match=r"its EMA never starts; .* \(trainer.plan_check=warn runs it anyway\)"):
        check_plan(stages, "error")
    said = []
    check_plan(stages, "warn", said.append)
    assert len(said) == 2 and said[0].startswith("[train] warning: stages.pretrain: ema.start_images")


def test_a_budget_that_sizes_no_stage_is_said_once():
    """microdit-train trainer.budget_flops=X on stages of fixed length ran them unchanged, silently."""
    fixed = resolve(compose_config(["trainer.budget_flops=2e9"]), caption_len=32)
    said = []
    check_plan(fixed, "error", said.append, budget=2e9)
    assert said == ["[train] note: the compute budget (2e+09 FLOPs) sizes no stage (none has a budget_fraction): "
                    "each stage runs its own images, steps or FLOPs"]
    sized = resolve(compose_config(["protocol=cpu_ablation"]), caption_len=32)
    assert sized[0].config.budget_fraction == 1.0
    said.clear()
    for stages, budget in ((sized, 8e12), (fixed, None)):
        check_plan(stages, "error", said.append, budget=budget)
    assert said == []


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
                         + sorted(f"protocol={p.stem}" for p in (CONF_DIR / "protocol").glob("*.yaml")))
def test_no_experiment_or_protocol_wastes_its_ema_or_warmup(name):
    """Every shipped config sized as it would train (its text encoder's caption length): no stage
    whose EMA never starts (it would be evaluated on raw weights) or whose warm-up outlasts it."""
    cfg = compose_config([name if "=" in name else f"experiment={name}"])
    stages = resolve(cfg, caption_length(cfg.encoder.text_encoder), peak_flops=989e12)
    assert plan_problems(stages) == []


def test_the_ablation_protocols_decay_their_lr_as_the_paper_does():
    for protocol in ("ablation", "ablation_oob"):
        stage = resolve(compose_config([f"protocol={protocol}"]))[0]
        assert (stage.config.schedule, stage.config.min_lr_fraction) == ("cosine", 0.33)
        assert stage.config.warmup_images == 2500 * 2048 and stage.model.mixer_depth == 4


def test_table1_runs_naive_masking_and_maskdit_sits_at_deferreds_compute():
    assert resolve(compose_config(["experiment=table1_width_scaling"]))[0].model.mixer_depth == 0
    for ratio in (0.0, 0.25, 0.5, 0.75, 0.875):
        deferred, maskdit = (resolve(compose_config([f"experiment={e}", f"stages.pretrain.mask.ratio={ratio}"]), 77)[0]
                             for e in ("fig6_deferred", "fig6_maskdit"))
        assert abs(maskdit.flops_per_image / deferred.flops_per_image - 1) < 0.05, ratio
