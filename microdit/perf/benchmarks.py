"""The report of ``microdit-bench``: runs the benchmarks (:mod:`~microdit.perf.bench_step`,
:mod:`~microdit.perf.bench_moe`, :mod:`~microdit.perf.bench_parts`) and judges them against the
project's targets. The measurements: training-step throughput and MFU against the device's
measured matmul peak (eager and torch.compile), attention backends, the MoE layer and its routing
against the reference's one-hot formulation, masking efficiency, the eight CPU cases (nano and micro,
ratio 0 and 0.75, training and sampling) against their kernel-sum bounds and with glibc's allocator
defaults against freed memory kept (:mod:`microdit.host_memory`), reader and sampler throughput.

The training step measured is the trainer's: EDM loss (bf16 autocast on CUDA), backward, gradient
clipping, the device-side non-finite guard and fused AdamW. Numbers belong in reports, never in
tests. Ratios are meaningful only when measured in one run on one machine (a shared CPU can vary
by +-30% between runs).
"""

from __future__ import annotations

import torch

from microdit.devices import H100
from microdit.host_memory import keep_freed_memory
from microdit.masking import MaskConfig
from microdit.models import preset_config
from microdit.perf.bench_bound import bench_bounds, bench_freed_memory, bounds_markdown, freed_memory_markdown
from microdit.perf.bench_moe import bench_moe
from microdit.perf.bench_parts import bench_attention, bench_encode, bench_reader, bench_sampler
from microdit.perf.bench_step import DEVICE_PLAN, StepCase, bench_steps, bench_workers, roofline_check, workers_markdown
from microdit.perf.timing import cpu_device_model

BOUND_ABOVE_STEP = 0.9  # eager / bound below this: the bound is broken in that run (a target not met)
ENCODE_CASES = {  # (autoencoder, text encoder, resolutions encoded in one pass) measured per device
    "cpu": [("pixel:2", "offline:128:32", [32, 64]), ("sdxl-random", "offline:1024:77", [256])],
    "cuda": [("sdxl", "openclip:ViT-H-14-378-quickgelu:dfn5b", [256, 512])],  # the paper's encoders (downloads)
}


def run_all(quick: bool, device: str = "cpu", compile: bool = True, results: dict | None = None) -> dict:
    """Every benchmark on ``device``; ``quick`` uses fewer configurations and sizes (a few minutes
    on 2 cores). ``compile`` adds a torch.compile row for the judged preset. Sections are added to
    ``results`` (returned) as they finish, so that a caller keeps what was measured before a failure."""
    results = {} if results is None else results
    dev = torch.device(device)
    results["host_memory"] = keep_freed_memory(dev)  # the trainer's setting: what follows times the default path
    plan = DEVICE_PLAN[dev.type]
    presets, length, batch = plan["presets"], plan["caption_len"], plan["batch"]
    masks = [MaskConfig(ratio, strategy, block) for ratio, strategy, block in
             ((0.0, "random", 1), (0.5, "random", 1), (0.75, "random", 1), (0.75, "block", 2))
             if not (quick and ratio == 0.5)]
    bases = [StepCase(preset, batch=batch, caption_len=length, device=device) for preset in presets]
    cases = [base.variant(mask) for base in bases for mask in masks]
    cases.append(bases[-1].variant(checkpointing=True))
    steps, peak = bench_steps(cases, repeats=5 if quick else 10)
    del cases, bases
    results.update({"device": device, "threads": torch.get_num_threads(), "matmul_peak_flop_per_s": peak,
                    "peak_dtype": "fp32" if dev.type == "cpu" else "bf16", "quick": quick, "steps": steps})
    model = cpu_device_model() if dev.type == "cpu" else H100
    results["roofline"] = roofline_check([s for s in results["steps"] if not s["checkpointing"]], length, model)
    results["masking"] = []
    for preset in presets:
        rows = {(r["mask_ratio"], r["strategy"]): r for r in results["steps"]
                if r["preset"] == preset and not r["checkpointing"]}
        base = rows[(0.0, "random")]
        for (ratio, strategy), r in rows.items():
            if ratio > 0:
                results["masking"].append({"preset": preset, "mask_ratio": ratio, "strategy": strategy,
                                           "time_ratio": r["step_s"] / base["step_s"],
                                           "flop_ratio": r["flops_per_step"] / base["flops_per_step"]})
    if dev.type == "cpu":  # kernels replayed and timed on the host clock: CPU only
        results["bounds"] = bench_bounds(presets, batch, length, repeats=5 if quick else 9, compile=compile)
        results["freed_memory"] = bench_freed_memory(presets, batch, length, rounds=2 if quick else 4)
        results["workers"] = bench_workers(steps=20 if quick else 60)
    results["attention"] = bench_attention(device)
    sizes = (64, 256) if quick else (64, 128, 256, 512, 1024)
    results["moe"] = [bench_moe(t, repeats=3 if quick else 5, device=device) for t in sizes]
    results["reader"] = bench_reader(2000 if quick else 10000, preset_config(presets[-1]).caption_dim)
    results["sampler"] = bench_sampler(presets[0], [10] if quick else [10, 30], device=device)
    results["encode"] = bench_encode(ENCODE_CASES[dev.type], images=8 if quick else 32, device=device)
    if compile:  # last: inductor leaves compile workers behind that disturb later measurements on a small CPU
        base = StepCase(presets[-1], batch=batch, caption_len=length, device=device)
        pair = [base, base.variant(compile=True)]
        results["compile"] = bench_steps(pair, repeats=5 if quick else 10)[0]
    results["targets"] = targets(results)
    return results


def targets(r: dict) -> list[dict]:
    """The performance targets, each with the value measured in this run, whether it is
    met, and for the MoE layer the bound the FLOPs allow."""
    steps = {(s["preset"], s["mask_ratio"], s["strategy"]): s for s in r["steps"] if not s.get("checkpointing")}
    judged = max(steps, key=lambda key: steps[key]["flops_per_step"])[0]  # the largest preset
    dense = steps[(judged, 0.0, "random")]
    consumed = steps[(judged, 0.75, "random")]["images_per_s"]
    cpu = r.get("device", "cpu") == "cpu"
    goal = 0.60 if cpu else 0.19  # CUDA: at least the paper's run
    out = [{"target": f"{judged} training step at >= {goal:.0%} of the measured {r.get('peak_dtype', 'fp32')} "
                      "matmul peak", "value": dense["mfu"], "goal": goal, "met": dense["mfu"] >= goal}]
    for m in r["masking"]:
        if m["strategy"] == "random" and m["mask_ratio"] == 0.75:
            over = m["time_ratio"] / m["flop_ratio"]
            out.append({"target": f"{m['preset']} step time at ratio 0.75 within 15% of the FLOP-predicted",
                        "value": over, "goal": 1.15, "met": abs(over - 1) <= 0.15,
                        "note": "time ratio / FLOP ratio, goal within 0.85-1.15"})
    moe = next(m for m in r["moe"] if m["tokens"] == 256)
    bound = f"bound from FLOPs: {moe['speedup_bound']:.2f}x" if "speedup_bound" in moe else ""
    for b in r.get("bounds", {}).get("rows", []):
        over = b["eager_s"] / b["bound_s"]
        broken = over < BOUND_ABOVE_STEP  # kernels alone slower than the whole step: the machine changed speed
        out.append({"target": f"{b['preset']} {b['kind']} step at ratio {b['mask_ratio']} within 15% of its "
                              "kernel-sum bound", "value": over, "goal": 1.15, "met": BOUND_ABOVE_STEP <= over <= 1.15,
                    "note": ("the bound measured above the step (not a lower bound in this run: the machine's speed "
                             "changed between the two; measure again); " if broken else "")
                    + f"eager time / bound; its kernels timed in place: {b['in_sequence_s'] / b['bound_s']:.2f} x the "
                      "bound"})
    out.append({"target": "MoE >= 3x faster than one-hot at T = 256", "value": moe["layer"]["speedup"], "goal": 3.0,
                "met": moe["layer"]["speedup"] >= 3.0, "note": bound})
    out.append({"target": "MoE >= 4x less peak memory than one-hot at T = 256", "value": moe["layer"]["peak_ratio"],
                "goal": 4.0, "met": moe["layer"]["peak_ratio"] >= 4.0})
    reader = r["reader"]["samples_per_s"][0] / consumed
    out.append({"target": f"reader >= 10x what a {judged} step (ratio 0.75) consumes", "value": reader,
                "goal": 10.0, "met": reader >= 10.0})
    return out


def _mode(step: dict) -> str:
    return ("compiled" if step.get("compiled") else "eager") + (" + checkpointing" if step.get("checkpointing") else "")


def summary_markdown(r: dict) -> str:
    """A markdown report of :func:`run_all`'s results."""
    lines = [f"# microdit-bench ({'quick' if r['quick'] else 'full'}, {r.get('device', 'cpu')})", "",
             f"Measured {r.get('peak_dtype', 'fp32')} matmul peak: **{r['matmul_peak_flop_per_s'] / 1e9:.0f} "
             f"GFLOP/s** ({r['threads']} threads).", "", "## Targets (measured in this run)", "",
             "| target | value | goal | met | note |", "|---|---|---|---|---|"]
    lines += [f"| {t['target']} | {t['value']:.2f} | {t['goal']:g} | {'yes' if t['met'] else '**no**'} | "
              f"{t.get('note', '')} |" for t in r.get("targets", [])]
    lines += ["", "## Training step (trainer's step: loss, backward, clipping, guard, fused AdamW)", "",
              "| preset | mask | strategy | mode | batch | step ms | images/s | GFLOP/s | MFU | first step s "
              "| host syncs | step memory GiB |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in r["steps"] + r.get("compile", []):
        block = "" if s["block_size"] == 1 else f" b={s['block_size']}"
        syncs = "n/a" if s.get("host_syncs_per_step") is None else s["host_syncs_per_step"]
        gib = "n/a" if s.get("step_memory_gib") is None else f"{s['step_memory_gib']:.1f}"
        lines.append(f"| {s['preset']} | {s['mask_ratio']} | {s['strategy']}{block} | "
                     f"{_mode(s)} | {s['batch']} | {s['step_s'] * 1000:.0f} | "
                     f"{s['images_per_s']:.0f} | {s['flop_per_s'] / 1e9:.0f} | {s['mfu']:.0%} | "
                     f"{s.get('first_step_s', 0):.1f} | {syncs} | {gib} |")
    if "compile" in r:
        eager, compiled = r["compile"]
        lines += ["", f"The last two rows ran side by side: torch.compile {eager['step_s'] / compiled['step_s']:.2f}x "
                      f"eager after {compiled['first_step_s']:.0f} s of compiling (the first step)."]
    lines += ["", "## Masking efficiency (step time and FLOPs relative to ratio 0)", "",
              "| preset | mask | strategy | time ratio | FLOP ratio | time / FLOP-predicted |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {m['preset']} | {m['mask_ratio']} | {m['strategy']} | {m['time_ratio']:.2f} | {m['flop_ratio']:.2f} "
              f"| {m['time_ratio'] / m['flop_ratio']:.2f} |" for m in r["masking"]]
    if "roofline" in r:
        lines += ["", f"## Roofline model vs measurement ({r['roofline']['device']['name']})", "",
                  "| preset | mask | strategy | predicted ms | measured ms | predicted / measured |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {x['preset']} | {x['mask_ratio']} | {x['strategy']} | {x['predicted_s'] * 1000:.0f} | "
                  f"{x['measured_s'] * 1000:.0f} | {x['ratio']:.2f} |" for x in r["roofline"]["rows"]]
    if "attention" in r:
        a = r["attention"]
        lines += ["", f"## Attention backends (self + cross, fwd + bwd, {a['shape']})", "",
                  "| backend | ms |", "|---|---|"]
        lines += [f"| {name} | {'unavailable' if ms is None else f'{ms:.2f}'} |" for name, ms in a["ms"].items()]
    lines += ["", "## MoE: ours (gather/scatter) vs the reference's one-hot (N=8, E=8, capacity 2, hidden 4D)", "",
              "| T | D | part | ours ms | one-hot ms | speed-up | ours peak MiB | one-hot peak MiB | "
              "saved MiB ours / one-hot | layer bound |", "|---|---|---|---|---|---|---|---|---|---|"]
    for m in r["moe"]:
        for part in ("layer", "routing"):
            if part in m:
                p = m[part]
                lines.append(f"| {m['tokens']} | {m['dim']} | {part} | {p['gather']['time_s'] * 1000:.1f} | "
                             f"{p['one_hot']['time_s'] * 1000:.1f} | {p['speedup']:.2f}x | "
                             f"{p['gather']['peak_mib']:.0f} | {p['one_hot']['peak_mib']:.0f} | "
                             f"{p['gather']['saved_mib']:.1f} / {p['one_hot']['saved_mib']:.1f} | "
                             f"{m['speedup_bound']:.2f}x |")
    if "bounds" in r:
        lines += bounds_markdown(r["bounds"])
    if "freed_memory" in r:
        lines += freed_memory_markdown(r["freed_memory"])
    if "workers" in r:
        lines += workers_markdown(r["workers"])
    lines += _parts_markdown(r)
    return "\n".join(lines) + "\n"


def _parts_markdown(r: dict) -> list[str]:
    """The report's lines for the reader, the sampler and encoding."""
    lines = []
    rd = r["reader"]
    lines += ["", "## Reader", "", f"{rd['samples']} samples built + encoded in {rd['build_and_encode_s']:.1f} s; "
              + ", ".join(f"{w} workers: {v:.0f} samples/s" for w, v in rd["samples_per_s"].items()), "",
              f"## Sampler (Heun, {r['sampler']['preset']}, images/s)", "", "| steps | CFG batched | CFG two passes |",
              "|---|---|---|"]
    lines += [f"| {n} | {v['cfg_batched']:.1f} | {v['cfg_two_passes']:.1f} |"
              for n, v in r["sampler"]["by_steps"].items()]
    if "encode" in r:
        lines += ["", "## Encode (microdit-data encode on one device; N ranks: N x this)", "",
                  "| autoencoder | text encoder | resolutions (one pass) | images | images/s |",
                  "|---|---|---|---|---|"]
        lines += [f"| {e['autoencoder']} | {e['text_encoder']} | {', '.join(map(str, e['resolutions']))} | "
                  f"{e['images']} | {e['images_per_s']:.1f} |" for e in r["encode"]]
    return lines
