"""The EMA: blend arithmetic, copy before its start, device-side skip."""

import torch

from microdit.train.ema import EMA


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

