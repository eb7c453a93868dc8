"""Performance measurements behind ``microdit-bench``: training-step throughput and MFU against the
machine's measured matmul peak, the MoE layer against the reference's one-hot formulation,
masking efficiency, reader throughput and sampler throughput.

Numbers belong in reports, never in tests. Ratios are meaningful only when measured in one run on
one machine (a shared CPU can vary by +-30% between runs).
"""

from __future__ import annotations

import multiprocessing as mp
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from microdit.data import LatentBatches, make_loader
from microdit.data.encode import build_synthetic_dataset
from microdit.diffusion import EDMConfig, denoise, edm_loss, edm_sample, guided_denoiser, karras_sigmas
from microdit.masking import sample_keep_ids
from microdit.models import build_model, preset_config
from microdit.nn import ExpertChoiceMoE, expert_capacity
from microdit.train.flops import flops_per_image


def matmul_peak(size: int = 2048, repeats: int = 5) -> float:
    """Best fp32 matmul FLOP/s of this process (the MFU reference on CPU)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(2):
        a @ b
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(3):
            a @ b
        best = max(best, 3 * 2 * size**3 / (time.perf_counter() - start))
    return best


def _median_time(fn, repeats: int, warmup: int) -> float:
    times = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        fn()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_step(preset: str, mask_ratio: float = 0.0, strategy: str = "random", block_size: int = 1, batch: int = 32,
               caption_len: int = 8, repeats: int = 8, warmup: int = 3, peak: float | None = None) -> dict:
    """One training step (EDM loss forward + backward + AdamW) of a preset: time, images/s, FLOP/s, MFU."""
    torch.manual_seed(0)
    model = build_model(preset)
    cfg = model.cfg
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x0 = torch.randn(batch, cfg.in_channels, *cfg.input_size)
    y = torch.randn(batch, caption_len, cfg.caption_dim)

    def step() -> None:
        keep = sample_keep_ids(batch, cfg.base_grid, mask_ratio, strategy, block_size)
        loss = edm_loss(model, x0, y, EDMConfig(), cfg.patch_size, keep_ids=keep).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    seconds = _median_time(step, repeats, warmup)
    flops = flops_per_image(cfg, cfg.base_grid, caption_len, mask_ratio, strategy, block_size).train * batch
    out = {"preset": preset, "mask_ratio": mask_ratio, "strategy": strategy, "block_size": block_size,
           "batch": batch, "tokens": cfg.base_grid[0] * cfg.base_grid[1], "step_s": seconds,
           "images_per_s": batch / seconds, "flops_per_step": flops, "flop_per_s": flops / seconds}
    if peak:
        out["mfu"] = out["flop_per_s"] / peak
    return out


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
    seconds = _median_time(lambda: fn(x).square().mean().backward(), repeats, 2)
    queue.put({"time_s": seconds, "peak_mib": (_rss_kib("VmHWM") - base) / 1024, "saved_mib": saved})


def bench_moe(tokens: int, dim: int = 512, batch: int = 8, repeats: int = 5) -> dict:
    """Forward + backward of one MoE layer (E=8, capacity 2, expert hidden 4D): ours vs one-hot,
    each in a fresh process (peak RSS growth and bytes saved for backward)."""
    ctx = mp.get_context("spawn")
    out = {"tokens": tokens, "dim": dim, "batch": batch}
    for kind in ("gather", "one_hot"):
        queue = ctx.Queue()
        proc = ctx.Process(target=_moe_case, args=(kind, tokens, dim, batch, repeats, queue))
        proc.start()
        out[kind] = queue.get()
        proc.join()
    out["speedup"] = out["one_hot"]["time_s"] / out["gather"]["time_s"]
    out["peak_ratio"] = out["one_hot"]["peak_mib"] / max(out["gather"]["peak_mib"], 1e-9)
    out["saved_ratio"] = out["one_hot"]["saved_mib"] / out["gather"]["saved_mib"]
    return out


def bench_reader(num: int, caption_dim: int, batch: int = 32, batches: int = 60) -> dict:
    """Build + encode ``num`` synthetic samples in a temporary folder and time the reader."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        build_synthetic_dataset(Path(tmp) / "lat", num, 32, 0, "pixel:2", f"offline:{caption_dim}:32", progress=False)
        build_s = time.perf_counter() - start
        rates = {}
        for workers in (0, 2):
            it = iter(make_loader(LatentBatches(Path(tmp) / "lat", batch, caption_dropout=0.1), workers))
            next(it)
            start = time.perf_counter()
            n = sum(len(next(it)["key"]) for _ in range(batches))
            rates[workers] = n / (time.perf_counter() - start)
    return {"samples": num, "build_and_encode_s": build_s, "samples_per_s": rates}


def bench_sampler(preset: str, steps: list[int], images: int = 8) -> dict:
    """Heun sampling images/s by step count, with CFG batched (one 2N pass) and as two N passes."""
    torch.manual_seed(0)
    model = build_model(preset).eval()
    cfg = model.cfg
    edm = EDMConfig()
    y = torch.randn(images, 8, cfg.caption_dim)
    noise = torch.randn(images, cfg.in_channels, *cfg.input_size)
    batched = guided_denoiser(model, y, edm.sigma_data, 5.0, torch.zeros_like(y))

    def two_passes(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = sigma.float().reshape(1).expand(x.shape[0])
        d_c = denoise(model, x.float(), s, y, edm.sigma_data)
        d_u = denoise(model, x.float(), s, torch.zeros_like(y), edm.sigma_data)
        return (d_u + 5.0 * (d_c - d_u)).double()

    out = {"preset": preset, "images": images, "by_steps": {}}
    with torch.no_grad():
        for n in steps:
            sigmas = karras_sigmas(n, edm.sigma_min, edm.sigma_max, edm.rho)
            row = {}
            for name, den in (("cfg_batched", batched), ("cfg_two_passes", two_passes)):
                row[name] = images / _median_time(lambda den=den, sigmas=sigmas: edm_sample(den, noise, sigmas), 2, 1)
            out["by_steps"][n] = row
    return out


def run_all(quick: bool) -> dict:
    """Every benchmark; ``quick`` uses fewer configurations and sizes (a few minutes on 2 cores)."""
    peak = matmul_peak()
    results = {"threads": torch.get_num_threads(), "matmul_peak_flop_per_s": peak, "quick": quick, "steps": []}
    presets = ("nano", "micro")
    for preset in presets:
        for ratio, strategy, block in ((0.0, "random", 1), (0.5, "random", 1), (0.75, "random", 1),
                                       (0.75, "block", 2)):
            if quick and ratio == 0.5:
                continue
            results["steps"].append(bench_step(preset, ratio, strategy, block, peak=peak,
                                               repeats=5 if quick else 10))
    results["masking"] = []
    for preset in presets:
        rows = {(r["mask_ratio"], r["strategy"]): r for r in results["steps"] if r["preset"] == preset}
        base = rows[(0.0, "random")]
        for (ratio, strategy), r in rows.items():
            if ratio > 0:
                results["masking"].append({"preset": preset, "mask_ratio": ratio, "strategy": strategy,
                                           "time_ratio": r["step_s"] / base["step_s"],
                                           "flop_ratio": r["flops_per_step"] / base["flops_per_step"]})
    results["moe"] = [bench_moe(t, repeats=3 if quick else 5) for t in ((64, 256) if quick else (64, 256, 1024))]
    results["reader"] = bench_reader(2000 if quick else 10000, preset_config("micro").caption_dim)
    results["sampler"] = bench_sampler("nano", [10] if quick else [10, 30])
    results["targets"] = targets(results)
    return results


def targets(r: dict) -> list[dict]:
    """The performance targets (issue #7), each with the value measured in this run and whether it is met."""
    steps = {(s["preset"], s["mask_ratio"], s["strategy"]): s for s in r["steps"]}
    micro = steps[("micro", 0.0, "random")]
    consumed = steps[("micro", 0.75, "random")]["images_per_s"]
    out = [{"target": "micro training step at >= 60% of the measured fp32 matmul peak", "value": micro["mfu"],
            "goal": 0.60, "met": micro["mfu"] >= 0.60}]
    for m in r["masking"]:
        if m["strategy"] == "random" and m["mask_ratio"] == 0.75:
            over = m["time_ratio"] / m["flop_ratio"]
            out.append({"target": f"{m['preset']} step time at ratio 0.75 within 15% of the FLOP-predicted",
                        "value": over, "goal": 1.15, "met": over <= 1.15})
    moe = next(m for m in r["moe"] if m["tokens"] == 256)
    out.append({"target": "MoE >= 3x faster than one-hot at T = 256", "value": moe["speedup"], "goal": 3.0,
                "met": moe["speedup"] >= 3.0})
    out.append({"target": "MoE >= 4x less peak memory than one-hot at T = 256", "value": moe["peak_ratio"],
                "goal": 4.0, "met": moe["peak_ratio"] >= 4.0})
    reader = r["reader"]["samples_per_s"][0] / consumed
    out.append({"target": "reader >= 10x what a micro step (ratio 0.75) consumes", "value": reader, "goal": 10.0,
                "met": reader >= 10.0})
    return out


def summary_markdown(r: dict) -> str:
    """A markdown report of :func:`run_all`'s results."""
    lines = [f"# microdit-bench ({'quick' if r['quick'] else 'full'})", "",
             f"Measured fp32 matmul peak: **{r['matmul_peak_flop_per_s'] / 1e9:.0f} GFLOP/s** "
             f"({r['threads']} threads).", "", "## Targets (measured in this run)", "",
             "| target | value | goal | met |", "|---|---|---|---|"]
    lines += [f"| {t['target']} | {t['value']:.2f} | {t['goal']:g} | {'yes' if t['met'] else '**no**'} |"
              for t in r.get("targets", [])]
    lines += ["", "## Training step (batch 32, 64 tokens, fp32)", "",
             "| preset | mask | strategy | step ms | images/s | GFLOP/s | MFU |", "|---|---|---|---|---|---|---|"]
    for s in r["steps"]:
        block = "" if s["block_size"] == 1 else f" b={s['block_size']}"
        lines.append(f"| {s['preset']} | {s['mask_ratio']} | {s['strategy']}{block} | {s['step_s'] * 1000:.0f} | "
                     f"{s['images_per_s']:.0f} | {s['flop_per_s'] / 1e9:.0f} | {s['mfu']:.0%} |")
    lines += ["", "## Masking efficiency (step time and FLOPs relative to ratio 0)", "",
              "| preset | mask | strategy | time ratio | FLOP ratio | time / FLOP-predicted |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {m['preset']} | {m['mask_ratio']} | {m['strategy']} | {m['time_ratio']:.2f} | {m['flop_ratio']:.2f} "
              f"| {m['time_ratio'] / m['flop_ratio']:.2f} |" for m in r["masking"]]
    lines += ["", "## MoE layer: ours (gather/scatter) vs the reference's one-hot (D=512, N=8, E=8, capacity 2)", "",
              "| T | ours ms | one-hot ms | speed-up | ours peak MiB | one-hot peak MiB | saved MiB ours / one-hot |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {m['tokens']} | {m['gather']['time_s'] * 1000:.0f} | {m['one_hot']['time_s'] * 1000:.0f} | "
              f"{m['speedup']:.2f}x | {m['gather']['peak_mib']:.0f} | {m['one_hot']['peak_mib']:.0f} | "
              f"{m['gather']['saved_mib']:.1f} / {m['one_hot']['saved_mib']:.1f} |" for m in r["moe"]]
    rd = r["reader"]
    lines += ["", "## Reader", "", f"{rd['samples']} samples built + encoded in {rd['build_and_encode_s']:.1f} s; "
              + ", ".join(f"{w} workers: {v:.0f} samples/s" for w, v in rd["samples_per_s"].items()), "",
              "## Sampler (Heun, nano, images/s)", "", "| steps | CFG batched | CFG two passes |", "|---|---|---|"]
    lines += [f"| {n} | {v['cfg_batched']:.1f} | {v['cfg_two_passes']:.1f} |"
              for n, v in r["sampler"]["by_steps"].items()]
    return "\n".join(lines) + "\n"
