"""The training step shared by the trainer and the bench: accumulation, graph breaks."""

import torch

from microdit.masking import MaskConfig, sample_keep_ids
from microdit.models import build_model
from microdit.nn import ExpertChoiceMoE


def test_training_loss_compiles_without_graph_breaks():
    import torch._dynamo as dynamo

    from microdit.diffusion import EDMConfig, edm_loss

    model = build_model("nano", depth=3)
    assert isinstance(model.blocks[1].mlp, ExpertChoiceMoE)  # the MoE routing is inside the traced graph
    cfg = model.cfg
    x0, y = torch.randn(4, cfg.in_channels, *cfg.input_size), torch.randn(4, 5, cfg.caption_dim)
    keep = sample_keep_ids(4, cfg.base_grid, MaskConfig(0.75))

    def loss(x0, y, keep, sigma, noise):
        return edm_loss(model, x0, y, EDMConfig(), cfg.patch_size, keep_ids=keep, sigma=sigma, noise=noise).mean()

    explanation = dynamo.explain(loss)(x0, y, keep, torch.rand(4) + 0.5, torch.randn_like(x0))
    assert explanation.graph_break_count == 0, [b.reason for b in explanation.break_reasons]



def _batch(n: int, cfg, length: int = 5) -> dict:
    return {"latent": torch.randn(n, cfg.in_channels, *cfg.input_size), "text": torch.randn(n, length, cfg.caption_dim),
            "text_mask": torch.ones(n, length, dtype=torch.bool)}


def _one_step(micro: int, seed: int = 0):
    """One optimizer step of a 4-image global batch in micro-batches of ``micro`` images."""
    from microdit.perf.bench_step import bench_stage
    from microdit.train.guard import NonFiniteGuard
    from microdit.train.optim import OptimConfig, build_optimizer
    from microdit.train.step import AutocastNet, draw_step, step_generator, train_step

    torch.manual_seed(seed)
    model = build_model("nano", depth=2).double()  # float64: accumulation order does not blur the comparison
    cfg = model.cfg
    stage = bench_stage(cfg, MaskConfig(0.5))
    stage.config.grad_clip = 0.5
    batch = {k: v.double() if v.is_floating_point() else v for k, v in _batch(4, cfg).items()}
    opt, guard = build_optimizer(model, OptimConfig(lr=1e-2)), NonFiniteGuard(torch.device("cpu"))
    draws = draw_step(4, stage, step_generator(0, 0, 0, torch.device("cpu")), torch.device("cpu"))
    draws.noise = draws.noise.double()
    parts = [({k: v[lo:lo + micro] for k, v in batch.items()}, slice(lo, lo + micro)) for lo in range(0, 4, micro)]
    loss, grad_norm, skip = train_step(AutocastNet(model, "cpu", bf16=False), opt, guard, parts, draws, stage)
    return loss, grad_norm, skip, [p.detach().clone() for p in model.parameters()]


def test_accumulated_micro_batches_equal_one_batch():
    whole, halves, quarters = _one_step(4), _one_step(2), _one_step(1)
    for other in (halves, quarters):
        torch.testing.assert_close(other[0], whole[0])  # mean loss over the global batch
        torch.testing.assert_close(other[1], whole[1])  # gradient norm before clipping
        assert float(other[2]) == float(whole[2]) == 0.0  # finite: the step was applied
        for a, b in zip(other[3], whole[3], strict=True):
            torch.testing.assert_close(a, b)
    assert not torch.equal(whole[3][0], _one_step(4, seed=1)[3][0])  # a different init gives other weights


def test_step_draws_depend_only_on_seed_stage_and_step():
    from microdit.perf.bench_step import bench_stage
    from microdit.train.step import draw_step, step_generator

    cfg, cpu = build_model("nano").cfg, torch.device("cpu")

    def draws(seed, stage, step):
        return draw_step(6, bench_stage(cfg, MaskConfig(0.75)), step_generator(seed, stage, step, cpu), cpu)

    a, b = draws(0, 0, 3), draws(0, 0, 3)
    assert torch.equal(a.sigma, b.sigma) and torch.equal(a.noise, b.noise) and torch.equal(a.keep, b.keep)
    for other in (draws(1, 0, 3), draws(0, 1, 3), draws(0, 0, 4)):
        assert not torch.equal(a.sigma, other.sigma)
    assert a.keep.shape == (6, 16) and draws(0, 0, 0).sigma.shape == (6,)
    unmasked = draw_step(6, bench_stage(cfg, MaskConfig(0.0)), None, cpu)
    assert unmasked.keep is None
