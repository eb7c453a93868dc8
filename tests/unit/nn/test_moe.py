"""Expert-choice MoE: equality with a one-hot oracle (forward and gradients), routing invariants."""

import pytest
import torch
import torch.nn.functional as F

from microdit.nn import ExpertChoiceMoE, expert_capacity


def one_hot_oracle(moe: ExpertChoiceMoE, x: torch.Tensor) -> torch.Tensor:
    """The reference's formulation, written independently: dense one-hot dispatch and combine."""
    n, t, d = x.shape
    probs = torch.softmax(x @ moe.gate.weight.T, dim=-1)  # (N, T, E)
    k = expert_capacity(t, moe.num_experts, moe.capacity)
    gates, idx = torch.topk(probs.permute(0, 2, 1), k, dim=-1)  # (N, E, k)
    dispatch = F.one_hot(idx, t).to(x.dtype)  # (N, E, k, T)
    expert_in = torch.einsum("nekt,ntd->nekd", dispatch, x)
    hidden = F.gelu(torch.einsum("nekd,edh->nekh", expert_in, moe.w1))
    expert_out = torch.einsum("nekh,ehd->nekd", hidden, moe.w2)
    combine = dispatch * gates.unsqueeze(-1)  # (N, E, k, T)
    return torch.einsum("nekt,nekd->ntd", combine, expert_out)


def make_moe(d=16, hidden=32, experts=4, capacity=2.0):
    moe = ExpertChoiceMoE(d, hidden, experts, capacity).double()
    with torch.no_grad():
        moe.w1.normal_(0, 0.3)
        moe.w2.normal_(0, 0.3)
    return moe


@pytest.mark.parametrize("t,experts,capacity", [(24, 4, 2.0), (64, 8, 2.0), (10, 3, 1.0), (5, 8, 2.0)])
def test_moe_matches_one_hot_forward_and_backward(t, experts, capacity):
    moe = make_moe(experts=experts, capacity=capacity)
    x = torch.randn(3, t, 16, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    out = moe(x)
    ref = one_hot_oracle(moe, x_ref)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, [x, moe.w1, moe.w2, moe.gate.weight], grad_out)
    grads_ref = torch.autograd.grad(ref, [x_ref, moe.w1, moe.w2, moe.gate.weight], grad_out)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)


def test_every_expert_takes_exactly_k_distinct_tokens():
    moe = make_moe(experts=8)
    x = torch.randn(5, 64, 16, dtype=torch.float64)
    gates, ids = moe.route(x)
    k = expert_capacity(64, 8, 2.0)
    assert k == 16
    assert ids.shape == (5, 8, k) and gates.shape == (5, 8, k)
    for n in range(5):
        for e in range(8):
            assert ids[n, e].unique().numel() == k
    probs = torch.softmax(x @ moe.gate.weight.T, dim=-1)
    # the chosen tokens are the expert's top-k by router probability
    for e in range(8):
        kth = probs[:, :, e].topk(k, dim=1).values[:, -1:]
        assert torch.all(torch.gather(probs[:, :, e], 1, ids[:, e]) >= kth)


def test_routing_is_per_sample():
    moe = make_moe()
    x = torch.randn(2, 24, 16, dtype=torch.float64)
    both = moe(x)
    alone = torch.cat([moe(x[:1]), moe(x[1:])])
    torch.testing.assert_close(both, alone, rtol=0, atol=0)


def test_capacity_formula():
    assert expert_capacity(256, 8, 2.0) == 64
    assert expert_capacity(64, 8, 2.0) == 16
    assert expert_capacity(3, 8, 2.0) == 1  # at least one token per expert
    assert expert_capacity(4, 1, 2.0) == 4  # at most every token


def test_bad_moe_arguments():
    with pytest.raises(ValueError, match="num_experts"):
        ExpertChoiceMoE(8, 8, 0, 2.0)
    with pytest.raises(ValueError, match="capacity"):
        ExpertChoiceMoE(8, 8, 4, 0.0)
