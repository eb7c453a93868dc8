"""The GPU plan: a composed training config's stages on N GPUs of a device model, from a traced
step (:mod:`microdit.perf.roofline`): expected step time, MFU, hours and dollars, an expectation
and not a measurement (``microdit-bench --gpu-plan experiment=paper_recipe``)."""

from __future__ import annotations

import torch

from microdit.devices import H100, DeviceModel
from microdit.perf.roofline import step_time, trace_step
from microdit.train.config import TrainConfig
from microdit.train.plan import resolve


def gpu_plan(cfg: TrainConfig, device: DeviceModel = H100, gpus: int = 8, caption_len: int = 77) -> dict:
    """Expected step time, MFU and hours of every stage of a composed training config (e.g. the
    paper recipe) on ``gpus`` devices, eager, beside the bound if every elementwise kernel were
    fused away (what torch.compile can at most recover). Stages are resolved and sized as the
    trainer does (:func:`microdit.train.plan.resolve`)."""
    rows = []
    per_device = cfg.trainer.batch_size // gpus
    for stage in resolve(cfg, caption_len, device.peak_flops):
        grid = stage.model.base_grid
        ops, views = trace_step(stage.model, per_device, caption_len, stage.mask, torch.bfloat16)
        est = step_time(ops, views, device)
        flops = stage.flops_per_image * per_device
        rows.append({"stage": stage.name, "tokens": grid[0] * grid[1], "mask_ratio": stage.mask.ratio,
                     "steps": stage.steps, "batch_per_device": per_device, "step_s": est["seconds"],
                     "memory_s": est["memory_s"], "fused_bound_s": est["fused_bound_s"],
                     "mfu": flops / est["seconds"] / device.peak_flops,
                     "mfu_fused_bound": flops / est["fused_bound_s"] / device.peak_flops,
                     "hours": stage.steps * est["seconds"] / 3600,
                     "train_flops": flops * gpus * stage.steps})
    hours = sum(r["hours"] for r in rows)
    return {"device": device.name, "gpus": gpus, "stages": rows, "hours": hours, "gpu_hours": hours * gpus,
            "dollars": hours * gpus * cfg.trainer.price_per_device_hour,
            "mfu": sum(r["train_flops"] for r in rows) / (hours * 3600 * gpus * device.peak_flops)}


def gpu_plan_markdown(plan: dict) -> str:
    """A markdown table of :func:`gpu_plan`."""
    lines = [f"# Expected cost of the recipe on {plan['gpus']} x {plan['device']}", "",
             "| stage | tokens | mask | steps | batch / GPU | step s | MFU (eager) | MFU if fully fused | hours |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['stage']} | {r['tokens']} | {r['mask_ratio']} | {r['steps']} | {r['batch_per_device']} | "
              f"{r['step_s']:.3f} | {r['mfu']:.0%} | {r['mfu_fused_bound']:.0%} | {r['hours']:.1f} |"
              for r in plan["stages"]]
    lines += ["", f"Total: **{plan['hours']:.1f} h** wall ({plan['hours'] / 24:.2f} days), **{plan['gpu_hours']:.0f} "
              f"GPU-hours**, **${plan['dollars']:,.0f}**, MFU {plan['mfu']:.0%} (eager)."]
    return "\n".join(lines) + "\n"
