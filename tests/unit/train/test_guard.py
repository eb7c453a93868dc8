"""The device-side non-finite guard: skipped steps leave weights, moments and EMA untouched."""

import torch

from microdit.models import build_model
from microdit.train.ema import EMA
from microdit.train.guard import NonFiniteGuard, guarded_step
from microdit.train.optim import OptimConfig, build_optimizer


def _snapshot(model, opt, ema):
    return ([p.detach().clone() for p in model.parameters()], [p.clone() for p in ema.model.parameters()],
            {k: v.clone() for state in opt.state.values() for k, v in state.items()})


def test_device_side_skip_leaves_weights_moments_and_ema_untouched():
    torch.manual_seed(0)
    model = build_model("nano", depth=2)
    opt = build_optimizer(model, OptimConfig(lr=1e-3))
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

