"""A cost plan before a launch (``microdit-plan``): per run of a config or of a whole ``-m`` sweep,
each stage's images, steps and training FLOPs, in our accounting (what this code executes) and in
the paper's (which also counts the reference's one-hot MoE einsums, as its Table 2 and Fig 6
axis do), and the GPU-hours and dollars at a stated MFU and price. Nothing is trained.

GPU-hours are our FLOPs / (device peak x MFU) / 3600: the MFU is an assumption the plan states
(default: the paper's ≈ 19% on H100, bf16 peak 989 TFLOP/s), not a measurement; ``microdit-bench``
measures it. Stage lengths follow each run's own accounting (``trainer.flops_accounting``), as
its budget does. Plan problems (an EMA that never starts, a warm-up longer than its stage) are
listed with the run.
"""

from __future__ import annotations

import dataclasses

from microdit.devices import H100
from microdit.encoders import caption_length
from microdit.experiment import compose_config
from microdit.train.config import validate
from microdit.train.plan import plan_problems, resolve

PAPER_MFU = 0.19  # the paper's utilisation on 8 x H100 (its Table 2: 3.45e20 FLOPs in 2.6 days)
PRICE = 3.75  # dollars per GPU-hour, the paper's


def run_plan(overrides: list[str], mfu: float = PAPER_MFU, price: float = PRICE, peak: float = H100.peak_flops,
             caption_len: int | None = None) -> dict:
    """The plan of the run ``microdit-train OVERRIDES`` would start (validated first)."""
    cfg = compose_config(overrides)
    validate(cfg)
    length = caption_len or caption_length(cfg.encoder.text_encoder)
    stages = resolve(cfg, length, peak)
    other = "paper" if cfg.trainer.flops_accounting == "ours" else "ours"
    counted = {other: resolve(dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer,
                                                                                   flops_accounting=other)),
                              length, peak)}
    counted[cfg.trainer.flops_accounting] = stages
    rows = []
    for i, stage in enumerate(stages):
        per_image = {k: v[i].flops_per_image for k, v in counted.items()}  # same network, mask, captions
        rows.append({"name": stage.name, "images": stage.images, "steps": stage.steps,
                     "flops": stage.images * per_image["ours"], "flops_paper": stage.images * per_image["paper"]})
    flops = sum(r["flops"] for r in rows)
    hours = flops / (peak * mfu) / 3600
    return {"overrides": list(overrides), "caption_len": length, "stages": rows, "flops": flops,
            "flops_paper": sum(r["flops_paper"] for r in rows), "gpu_hours": hours, "cost": hours * price,
            "problems": plan_problems(stages)}


def cost_plan(points: list[list[str]], mfu: float = PAPER_MFU, price: float = PRICE, peak: float = H100.peak_flops,
              caption_len: int | None = None) -> dict:
    """The plans of every run (``points``: each run's override list) and their total."""
    runs = []
    for point in points:
        try:
            runs.append(run_plan(point, mfu, price, peak, caption_len))
        except ValueError as err:
            raise ValueError(f"sweep point {' '.join(point)}: {err}" if len(points) > 1 else str(err)) from None
    total = {key: sum(r[key] for r in runs) for key in ("flops", "flops_paper", "gpu_hours", "cost")}
    return {"mfu": mfu, "price": price, "peak_flops": peak, "runs": runs, "total": {"runs": len(runs), **total}}


def cost_plan_markdown(plan: dict) -> str:
    """A table a line per run (stages joined), then the total and the assumptions."""
    lines = ["| run | stages (images / steps) | FLOPs (ours) | FLOPs (paper) | GPU-hours | $ |",
             "|---|---|---|---|---|---|"]
    for run in plan["runs"]:
        stages = ", ".join(f"{s['name']} {s['images']:,} / {s['steps']:,}" for s in run["stages"])
        name = " ".join(run["overrides"]) or "(defaults)"
        lines.append(f"| {name} | {stages} | {run['flops']:.3g} | {run['flops_paper']:.3g} | "
                     f"{run['gpu_hours']:,.1f} | {run['cost']:,.0f} |")
        lines += [f"|  | **plan problem**: {p} |  |  |  |  |" for p in run["problems"]]
    t = plan["total"]
    lines.append(f"| **total ({t['runs']} runs)** |  | {t['flops']:.3g} | {t['flops_paper']:.3g} | "
                 f"{t['gpu_hours']:,.1f} | {t['cost']:,.0f} |")
    lines.append(f"\nGPU-hours at MFU {plan['mfu']:.0%} of {plan['peak_flops'] / 1e12:.0f} TFLOP/s per GPU (our "
                 f"FLOPs), ${plan['price']:.2f} per GPU-hour; nothing was trained.")
    return "\n".join(lines)
