"""The MoE benchmark: the expert-choice layer and its routing (gather/scatter) against the
reference's one-hot dispatch formulation, in time and memory."""

from __future__ import annotations

import multiprocessing as mp

import torch
import torch.nn.functional as F

from microdit.nn import ExpertChoiceMoE, expert_capacity
from microdit.nn.moe import combine, dispatch
from microdit.perf.timing import median_time


def one_hot_dispatch(x: torch.Tensor, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's dispatch: a dense one-hot (N, E, k, T) matrix and its product with x -> (N, E, k, D)."""
    onehot = F.one_hot(token_ids, x.shape[1]).to(x.dtype)  # (N, E, k, T)
    return torch.einsum("nekt,ntd->nekd", onehot, x), onehot


def one_hot_combine(out: torch.Tensor, gates: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    """The reference's combine: gate-scaled expert outputs (N, E, k, D) summed through the one-hot -> (N, T, D)."""
    return torch.einsum("nekt,nekd->ntd", onehot, gates.unsqueeze(-1) * out)


def one_hot_moe(moe: ExpertChoiceMoE, x: torch.Tensor) -> torch.Tensor:
    """The reference's formulation of the whole layer: one-hot dispatch, experts as einsums, one-hot combine."""
    gates, token_ids = moe.route(x)  # (N, E, k)
    expert_in, onehot = one_hot_dispatch(x, token_ids)  # (N, E, k, D)
    hidden = F.gelu(torch.einsum("nekd,edh->nekh", expert_in, moe.w1))
    return one_hot_combine(torch.einsum("nekh,ehd->nekd", hidden, moe.w2), gates, onehot)


def gather_routing(moe: ExpertChoiceMoE, x: torch.Tensor) -> torch.Tensor:
    """Our routing alone (experts skipped): route, dispatch, combine."""
    gates, token_ids = moe.route(x)
    routed, rows = dispatch(x, token_ids)
    return combine(routed, gates, rows, x.shape)


def one_hot_routing(moe: ExpertChoiceMoE, x: torch.Tensor) -> torch.Tensor:
    """The reference's routing alone (experts skipped): route, one-hot dispatch and combine."""
    gates, token_ids = moe.route(x)
    expert_in, onehot = one_hot_dispatch(x, token_ids)
    return one_hot_combine(expert_in, gates, onehot)


MOE_CASES = {("layer", "gather"): lambda moe, x: moe(x), ("layer", "one_hot"): one_hot_moe,
             ("routing", "gather"): gather_routing, ("routing", "one_hot"): one_hot_routing}


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def saved_for_backward_mib(fn, x: torch.Tensor, module: torch.nn.Module) -> float:
    """MiB of distinct activation storages (not the input, not ``module``'s parameters) that
    autograd keeps for the backward pass of ``fn(x)``."""
    storages = {}
    skip = {x.untyped_storage().data_ptr()} | {p.untyped_storage().data_ptr() for p in module.parameters()}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in skip:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x).square().mean()
    return sum(storages.values()) / 2**20


def _moe_case(part: str, kind: str, tokens: int, dim: int, batch: int, repeats: int, device: str, queue=None):
    dev = torch.device(device)
    torch.manual_seed(0)
    moe = ExpertChoiceMoE(dim, 4 * dim, 8, 2.0).to(dev)
    moe.init_weights(0.02, 0.02)
    x = torch.randn(batch, tokens, dim, device=dev, requires_grad=True)
    fn = MOE_CASES[(part, kind)]
    saved = saved_for_backward_mib(lambda v: fn(moe, v), x, moe)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
    else:
        base = _rss_kib("VmRSS") * 1024
    seconds = median_time(lambda: fn(moe, x).square().mean().backward(), repeats, 2, dev)
    peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else _rss_kib("VmHWM") * 1024
    result = {"time_s": seconds, "peak_mib": (peak - base) / 2**20, "saved_mib": saved}
    if queue is None:
        return result
    queue.put(result)
    return None


def moe_flops(tokens: int, dim: int, batch: int, experts: int = 8, capacity: float = 2.0) -> dict:
    """Forward FLOPs of the expert GEMMs and of the one-hot dispatch + combine einsums."""
    k = expert_capacity(tokens, experts, capacity)
    return {"experts": 2 * 2 * batch * experts * k * dim * 4 * dim,
            "one_hot_routing": 2 * 2 * batch * experts * k * tokens * dim}


def bench_moe(tokens: int, dim: int = 512, batch: int = 8, repeats: int = 5, device: str = "cpu",
              rounds: int = 2) -> dict:
    """Forward + backward of one MoE layer (E=8, capacity 2, expert hidden 4D) and of its routing
    alone (dispatch + combine, experts skipped): ours vs one-hot. On CPU each case runs in a fresh
    process (peak RSS growth), ``rounds`` times, interleaved, keeping the fastest (the first
    process started after heavy work in this one can run much slower on a small VM); on CUDA peak
    allocated memory. ``speedup_bound`` is what removing the one-hot einsums' FLOPs entirely could
    give the layer."""
    out = {"tokens": tokens, "dim": dim, "batch": batch}
    ctx = mp.get_context("spawn")
    for part in ("layer", "routing"):
        row = {}
        for kind in ("gather", "one_hot") * rounds if device == "cpu" else ("gather", "one_hot"):
            if device == "cpu":
                queue = ctx.Queue()
                proc = ctx.Process(target=_moe_case, args=(part, kind, tokens, dim, batch, repeats, device, queue))
                proc.start()
                result = queue.get()
                proc.join()
            else:
                result = _moe_case(part, kind, tokens, dim, batch, repeats, device)
            if kind not in row or result["time_s"] < row[kind]["time_s"]:
                row[kind] = result
        row["speedup"] = row["one_hot"]["time_s"] / row["gather"]["time_s"]
        row["peak_ratio"] = row["one_hot"]["peak_mib"] / max(row["gather"]["peak_mib"], 1e-9)
        row["saved_ratio"] = row["one_hot"]["saved_mib"] / max(row["gather"]["saved_mib"], 1e-9)
        out[part] = row
    f = moe_flops(tokens, dim, batch)
    out["speedup_bound"] = (f["experts"] + f["one_hot_routing"]) / f["experts"]
    return out
