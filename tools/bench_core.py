"""Core benchmarks of issue #2: CPU-preset training-step time, and our gather/scatter MoE layer
against the reference's dense one-hot (N, E, k, T) formulation (time and peak memory).

    tools/env.sh python tools/bench_core.py [--json OUT.json]

MoE memory is given two ways, each case in a fresh process: the growth of the peak resident set
size (VmHWM) over the resident size after set-up (everything forward + backward allocate,
parameter gradients included), and the bytes autograd saves for the backward pass. Times are
medians over repeats after warm-up. Numbers belong in notes, not tests.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import time

import torch
import torch.nn.functional as F

from microdit.diffusion import EDMConfig, edm_loss
from microdit.masking import sample_keep_ids
from microdit.models import build_model
from microdit.nn import ExpertChoiceMoE, expert_capacity


def one_hot_moe(moe: ExpertChoiceMoE, x: torch.Tensor) -> torch.Tensor:
    """The reference's formulation: dense one-hot dispatch (N, E, k, T) and combine matrices."""
    t = x.shape[1]
    probs = torch.softmax(moe.gate(x), dim=-1)  # (N, T, E)
    gates, idx = torch.topk(probs.transpose(1, 2), expert_capacity(t, moe.num_experts, moe.capacity), dim=-1)
    dispatch = F.one_hot(idx, t).to(x.dtype)  # (N, E, k, T)
    expert_in = torch.einsum("nekt,ntd->nekd", dispatch, x)
    hidden = F.gelu(torch.einsum("nekd,edh->nekh", expert_in, moe.w1))
    expert_out = torch.einsum("nekh,ehd->nekd", hidden, moe.w2)
    return torch.einsum("nekt,nekd->ntd", dispatch * gates.unsqueeze(-1), expert_out)


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


def _moe_case(kind: str, tokens: int, dim: int, batch: int, repeats: int, queue) -> None:
    torch.manual_seed(0)
    moe = ExpertChoiceMoE(dim, 4 * dim, 8, 2.0)
    moe.init_weights(0.02, 0.02)
    x = torch.randn(batch, tokens, dim, requires_grad=True)
    fn = moe if kind == "gather" else (lambda v: one_hot_moe(moe, v))
    saved = saved_for_backward_mib(fn, x, moe)
    base = _rss_kib("VmRSS")
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        fn(x).square().mean().backward()
        if i:
            times.append(time.perf_counter() - start)
    queue.put({"time_s": statistics.median(times), "peak_mib": (_rss_kib("VmHWM") - base) / 1024,
               "saved_mib": saved})


def bench_moe(tokens: int, dim: int = 512, batch: int = 8, repeats: int = 5) -> dict:
    """Forward + backward of one MoE layer (E=8, capacity 2, expert hidden 4D): ours vs one-hot."""
    ctx = mp.get_context("spawn")
    out = {}
    for kind in ("gather", "one_hot"):
        queue = ctx.Queue()
        proc = ctx.Process(target=_moe_case, args=(kind, tokens, dim, batch, repeats, queue))
        proc.start()
        out[kind] = queue.get()
        proc.join()
    out["speedup"] = out["one_hot"]["time_s"] / out["gather"]["time_s"]
    out["memory_ratio"] = out["one_hot"]["peak_mib"] / max(out["gather"]["peak_mib"], 1e-9)
    out["saved_ratio"] = out["one_hot"]["saved_mib"] / out["gather"]["saved_mib"]
    return out


def bench_step(preset: str, batch: int = 32, mask_ratio: float = 0.0, repeats: int = 10) -> dict:
    """Median time of one training step (EDM loss forward + backward + AdamW) of a CPU preset."""
    torch.manual_seed(0)
    model = build_model(preset)
    cfg = model.cfg
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x0 = torch.randn(batch, cfg.in_channels, *cfg.input_size)
    y = torch.randn(batch, 8, cfg.caption_dim)
    grid = model.grid(*cfg.input_size)
    times = []
    for i in range(repeats + 3):
        start = time.perf_counter()
        keep = sample_keep_ids(batch, grid, mask_ratio)
        loss = edm_loss(model, x0, y, EDMConfig(), cfg.patch_size, keep_ids=keep).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= 3:
            times.append(time.perf_counter() - start)
    return {"preset": preset, "batch": batch, "tokens": grid[0] * grid[1], "mask_ratio": mask_ratio,
            "params": sum(p.numel() for p in model.parameters()), "step_s": statistics.median(times)}


def main() -> None:
    """Run all core benchmarks and print (and optionally save) the results."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    results = {"threads": torch.get_num_threads(), "steps": [], "moe": {}}
    for preset in ("nano", "micro"):
        for ratio in (0.0, 0.75):
            r = bench_step(preset, mask_ratio=ratio)
            results["steps"].append(r)
            print(f"step  {preset:5s} batch {r['batch']} tokens {r['tokens']} mask {ratio:.2f} "
                  f"params {r['params']:,}: {r['step_s'] * 1000:.0f} ms")
    for tokens in (64, 256, 1024):
        m = bench_moe(tokens)
        results["moe"][tokens] = m
        g, o = m["gather"], m["one_hot"]
        print(f"moe   T={tokens:4d} D=512 N=8 E=8 cap=2 fwd+bwd: gather {g['time_s'] * 1000:.0f} ms, peak "
              f"{g['peak_mib']:.0f} MiB, saved {g['saved_mib']:.1f} MiB | one-hot {o['time_s'] * 1000:.0f} ms, peak "
              f"{o['peak_mib']:.0f} MiB, saved {o['saved_mib']:.1f} MiB | {m['speedup']:.1f}x faster, "
              f"{m['memory_ratio']:.2f}x less peak, {m['saved_ratio']:.2f}x less saved")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
