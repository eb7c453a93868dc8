"""Trainer parts: config validation, schedules, optimizer groups, FLOPs meter, EMA, checkpoints."""

import math

import pytest
import torch
from hydra.errors import ConfigCompositionException
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from train_helpers import compose_config

from microdit.cli.train import CONF_DIR
from microdit.masking import sample_keep_ids
from microdit.models import build_model
from microdit.nn import ExpertChoiceMoE
from microdit.nn.attention import check_attention_backend
from microdit.train import checkpoint as ckpt
from microdit.train.config import problems
from microdit.train.cost import CostMeter
from microdit.train.ema import EMA
from microdit.train.flops import flops_per_image
from microdit.train.guard import NonFiniteGuard, guarded_step
from microdit.train.optim import build_optimizer, param_groups
from microdit.train.schedule import lr_factor


def test_defaults_compose_and_validate():
    cfg = compose_config([])
    assert problems(cfg) == []
    assert cfg.model.build_config().width == 128 and cfg.stages[0].mask_ratio == 0.75


def test_unknown_keys_are_rejected():
    with pytest.raises(ConfigCompositionException):
        compose_config(["trainer.bogus=1"])
    with pytest.raises(ConfigCompositionException):
        compose_config(["model.overrides.widht=64"])


@pytest.mark.parametrize("overrides,message", [
    (["stages.0.mask_ratio=1.0"], "mask_ratio must be in [0, 1)"),
    (["model.overrides.width=100"], "width 100 is not divisible by head_dim 32"),
    (["trainer.batch_size=30", "trainer.grad_accum=4"], "batch_size 30 is not divisible by processes x grad_accum"),
    (["stages=[]"], "stages is empty"),
    (["stages.0.steps=10"], "give exactly one of images, steps, flops, budget_fraction"),
    (["stages.0.images=null", "+stages.0.budget_fraction=1.0"], "budget_fraction needs trainer.budget_flops"),
    (["stages.0.mask_strategy=block", "stages.0.mask_block_size=3"], "mask_block_size 3 does not divide"),
    (["data.folders=[]"], "data.folders is empty"),
    (["model.preset=huge"], "unknown model preset 'huge'"),
    (["trainer.precision=fp16"], "trainer.precision must be one of"),
    (["trainer.attention_backend=fast"], "trainer.attention_backend must be one of"),
    (["trainer.compile_mode=turbo"], "trainer.compile_mode must be one of"),
    (["trainer.sync_every_steps=0"], "trainer.sync_every_steps and trainer.max_nonfinite must be >= 1"),
])
def test_validation_messages(overrides, message):
    cfg = compose_config(overrides)
    found = problems(cfg)
    assert any(message in p for p in found), found


def test_all_problems_reported_together():
    cfg = compose_config(["stages.0.mask_ratio=2", "trainer.batch_size=7", "trainer.grad_accum=2", "data.folders=[]"])
    assert len(problems(cfg)) >= 3
    assert any("processes x grad_accum = 2 x 2" in p for p in problems(cfg, world_size=2))


def test_lr_schedule():
    assert lr_factor(0, 1000, 100, "cosine", 0.33) == 0
    assert lr_factor(50, 1000, 100, "cosine", 0.33) == pytest.approx(0.5)
    assert lr_factor(100, 1000, 100, "cosine", 0.33) == pytest.approx(1.0)
    assert lr_factor(550, 1000, 100, "cosine", 0.33) == pytest.approx(0.33 + 0.67 * 0.5)
    assert lr_factor(1000, 1000, 100, "cosine", 0.33) == pytest.approx(0.33)
    assert lr_factor(5000, 1000, 100, "cosine", 0.33) == pytest.approx(0.33)
    assert lr_factor(700, 1000, 0, "constant", 0.33) == 1.0


def test_moe_group_holds_exactly_expert_and_router_parameters():
    model = build_model("MicroDiT_Tiny_2", depth=6, mixer_depth=2)
    groups = {g["name"]: g for g in param_groups(model, 0.1, 0.5)}
    expected = {n for n, _ in model.named_parameters()
                if n.rsplit(".", 2)[-2:] in (["mlp", "w1"], ["mlp", "w2"], ["gate", "weight"])
                and isinstance(model.get_submodule(n.split(".mlp")[0] + ".mlp"), ExpertChoiceMoE)}
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in groups["moe"]["params"]} == expected
    assert len(expected) == 3 * 3  # blocks 1, 3 and mixer block 1: w1, w2 and router each
    assert groups["moe"]["lr_scale"] == 0.5 and groups["moe"]["weight_decay"] == 0.1
    no_decay = {names[id(p)] for p in groups["no_decay"]["params"]}
    norms = {f"{m}.weight" for m, mod in model.named_modules() if isinstance(mod, torch.nn.LayerNorm)}
    biases = {n for n in names.values() if n.endswith(".bias")}
    embedders = {n for n in names.values() if n.startswith(("patch_embed.", "timestep_embed."))}
    assert no_decay == (norms | biases | embedders) - expected
    assert "blocks.0.attn.qkv.weight" in {names[id(p)] for p in groups["decay"]["params"]}
    total = sum(len(g["params"]) for g in groups.values())
    assert total == len(list(model.parameters()))
    opt = build_optimizer(model, 1e-3, (0.9, 0.999), 1e-8, 0.1, 0.5, True)
    assert {g["name"]: g["lr"] for g in opt.param_groups}["moe"] == pytest.approx(5e-4)


@pytest.mark.parametrize("preset,overrides,ratio", [
    ("nano", {}, 0.0), ("nano", {}, 0.75), ("micro", {}, 0.5),
    ("MicroDiT_Tiny_2", dict(depth=4, mixer_depth=2, mixer_width=384), 0.75),
    ("nano", dict(mixer_depth=0, ffn="gelu", moe=False), 0.75),
    ("nano", dict(decoder_depth=2), 0.75),
])
def test_flops_meter_matches_the_flop_counter(preset, overrides, ratio):
    model = build_model(preset, **overrides)
    cfg = model.cfg
    n, length = 2, 7
    x, y = torch.randn(n, cfg.in_channels, *cfg.input_size), torch.randn(n, length, cfg.caption_dim)
    keep = sample_keep_ids(n, cfg.base_grid, ratio)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(x, torch.zeros(n), y, keep_ids=keep).square().mean().backward()
    measured = counter.get_total_flops() / n
    predicted = flops_per_image(cfg, cfg.base_grid, length, ratio).train
    assert abs(predicted / measured - 1) < 0.02


def test_ema_math():
    model = torch.nn.Linear(3, 2)
    ema = EMA(model)
    with torch.no_grad():
        model.weight.add_(1.0)
    before = ema.model.weight.clone()
    ema.update(model, 0.9)
    torch.testing.assert_close(ema.model.weight, 0.9 * before + 0.1 * model.weight)
    ema.update(model, 0.0)
    torch.testing.assert_close(ema.model.weight, model.weight)
    with torch.no_grad():
        model.weight.add_(1.0)
    kept = ema.model.weight.clone()
    ema.update(model, 0.5, skip=torch.tensor(1.0))
    assert torch.equal(ema.model.weight, kept)
    ema.update(model, 0.5, skip=torch.tensor(0.0))
    torch.testing.assert_close(ema.model.weight, 0.5 * kept + 0.5 * model.weight)


def _snapshot(model, opt, ema):
    return ([p.detach().clone() for p in model.parameters()], [p.clone() for p in ema.model.parameters()],
            {k: v.clone() for state in opt.state.values() for k, v in state.items()})


def test_device_side_skip_leaves_weights_moments_and_ema_untouched():
    torch.manual_seed(0)
    model = build_model("nano", depth=2)
    opt = build_optimizer(model, 1e-3, (0.9, 0.999), 1e-8, 0.1, 0.5, True)
    ema, guard = EMA(model), NonFiniteGuard(torch.device("cpu"))
    x = torch.randn(2, model.cfg.in_channels, *model.cfg.input_size)
    y = torch.randn(2, 3, model.cfg.caption_dim)

    def step(scale: float):
        loss = model(x, torch.zeros(2), y).square().mean() * scale
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        ema.update(model, 0.9, guarded_step(opt, guard, loss.detach(), grad_norm, lambda v: v))

    step(1.0)
    step(1.0)
    before = _snapshot(model, opt, ema)
    for scale in (float("nan"), float("inf")):
        step(scale)
    after = _snapshot(model, opt, ema)
    for a, b in zip(before, after, strict=True):
        items = zip(a.values(), b.values(), strict=True) if isinstance(a, dict) else zip(a, b, strict=True)
        assert all(torch.equal(u, v) for u, v in items)
    assert guard.read() == {"nonfinite_total": 2, "consecutive": 2, "longest": 2}
    step(1.0)
    assert not all(torch.equal(p, q) for p, q in zip(model.parameters(), before[0], strict=True))
    assert guard.read() == {"nonfinite_total": 2, "consecutive": 0, "longest": 2}  # the run ended after the read
    assert guard.read()["longest"] == 0
    restored = NonFiniteGuard(torch.device("cpu"))
    restored.load_state_dict(guard.state_dict())
    assert restored.state_dict() == {"nonfinite_total": 2, "consecutive": 0}


def test_attention_backend_must_run_on_the_device():
    for name in ("auto", "math", "flash"):
        check_attention_backend(name, torch.device("cpu"), torch.float32, 32)
    with pytest.raises(ValueError, match="attention backend 'efficient' cannot run on cpu"):
        check_attention_backend("efficient", torch.device("cpu"), torch.float32, 32)


def test_checkpoint_crash_during_save_keeps_the_last_good_one(tmp_path, monkeypatch):
    tmp = ckpt.begin(tmp_path, 8)
    good = ckpt.commit(tmp, {"x": torch.ones(2)}, {"nimg": 8}, keep=2)
    assert ckpt.latest(tmp_path) == good

    def crash(*args, **kwargs):
        raise OSError("disk died mid-save")

    tmp = ckpt.begin(tmp_path, 16)
    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        ckpt.commit(tmp, {"x": torch.zeros(2)}, {"nimg": 16}, keep=2)
    monkeypatch.undo()
    assert ckpt.latest(tmp_path) == good  # the half-written .tmp-... folder is not a checkpoint
    state, meta = ckpt.load(good)
    assert torch.equal(state["x"], torch.ones(2)) and meta["nimg"] == 8
    for nimg in (24, 32, 40):
        ckpt.commit(ckpt.begin(tmp_path, nimg), {"x": torch.ones(1)}, {"nimg": nimg}, keep=2)
    assert [p.name for p in ckpt.list_checkpoints(ckpt.checkpoint_root(tmp_path))] == ["000000000032", "000000000040"]
    assert not list(ckpt.checkpoint_root(tmp_path).glob(".tmp-*"))


def test_cost_meter():
    meter = CostMeter(peak_flops=1e9, devices=2, price_per_device_hour=3.6)
    meter.seconds = 3600.0
    assert meter.device_hours == 2 and meter.dollars == pytest.approx(7.2)
    assert meter.mfu(1e9, 1.0) == pytest.approx(0.5)
    assert not math.isnan(meter.mfu(0, 0))


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")))
def test_every_experiment_composes_and_validates(experiment):
    cfg = compose_config([f"experiment={experiment}"])
    assert problems(cfg, world_size=8) == []


def test_paper_recipe_is_the_paper_table():
    cfg = compose_config(["experiment=paper_recipe"])
    assert [s.steps for s in cfg.stages] == [250000, 30000, 50000, 5000]
    assert [s.mask_ratio for s in cfg.stages] == [0.75, 0.0, 0.75, 0.0]
    assert cfg.model.build_config().width == 1024 and cfg.trainer.batch_size == 2048
    assert cfg.stages[2].input_size == [64, 64] and cfg.stages[2].pos_interp_scale == 2.0


def test_training_loss_compiles_without_graph_breaks():
    import torch._dynamo as dynamo

    from microdit.diffusion import EDMConfig, edm_loss

    model = build_model("nano", depth=3)
    assert isinstance(model.blocks[1].mlp, ExpertChoiceMoE)  # the MoE routing is inside the traced graph
    cfg = model.cfg
    x0, y = torch.randn(4, cfg.in_channels, *cfg.input_size), torch.randn(4, 5, cfg.caption_dim)
    keep = sample_keep_ids(4, cfg.base_grid, 0.75)

    def loss(x0, y, keep, sigma, noise):
        return edm_loss(model, x0, y, EDMConfig(), cfg.patch_size, keep_ids=keep, sigma=sigma, noise=noise).mean()

    explanation = dynamo.explain(loss)(x0, y, keep, torch.rand(4) + 0.5, torch.randn_like(x0))
    assert explanation.graph_break_count == 0, [b.reason for b in explanation.break_reasons]
