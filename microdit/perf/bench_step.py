"""The training-step benchmark: one step of a preset as the trainer runs it, timed eager and
compiled, against the measured matmul peak and the roofline bound."""

from __future__ import annotations

import copy
import statistics

import torch

from microdit.data import DataConfig
from microdit.devices import DeviceModel
from microdit.diffusion import EDMConfig, SamplerConfig
from microdit.masking import MaskConfig
from microdit.models import build_model, preset_config
from microdit.models.config import MicroDiTConfig
from microdit.perf.roofline import step_time, trace_step
from microdit.perf.timing import PeakProbe, count_host_syncs, median_time
from microdit.train.config import StageConfig
from microdit.train.flops import flops_per_image
from microdit.train.guard import NonFiniteGuard
from microdit.train.optim import OptimConfig, build_optimizer
from microdit.train.plan import Stage
from microdit.train.step import AutocastNet, draw_step, train_step

# What each device benchmarks: presets (the last one is judged by the targets), caption length,
# images per step (on CUDA 64, a quarter of the GPU plan's 256 per GPU: the memory an unmasked
# MicroDiT_XL_2 step takes at 256 images has not been measured; each row reports its step memory).
DEVICE_PLAN = {"cpu": {"presets": ("nano", "micro"), "caption_len": 8, "batch": 32},
               "cuda": {"presets": ("MicroDiT_Tiny_2", "MicroDiT_XL_2"), "caption_len": 77, "batch": 64}}


def bench_stage(model: MicroDiTConfig, mask: MaskConfig) -> Stage:
    """A stage of the paper's first-stage settings (StageConfig's defaults: clipping at 0.25,
    EDM at MicroDiT's constants) for the bare network ``model`` with ``mask``."""
    config = StageConfig(mask=mask)
    return Stage(0, "bench", config, model, EDMConfig(), mask, OptimConfig().lr, config.ema, SamplerConfig(),
                 DataConfig())


class StepCase:
    """One training step of a preset as the trainer runs it (:func:`microdit.train.step.train_step`:
    EDM loss with the network under bf16 autocast on CUDA, backward, clipping at 0.25, the
    device-side guard, fused AdamW at the paper's settings), ready to be timed.
    ``checkpointing``: blocks recompute their activations in the backward pass (FLOP/s and MFU
    still count the step's useful FLOPs only). :meth:`variant` gives another mask, checkpointing or
    compile setting on the same weights, optimiser and batch: a GPU holds one copy of each preset
    (four copies of MicroDiT_XL_2 with their AdamW state do not fit an 80 GB H100)."""

    def __init__(self, preset: str, mask: MaskConfig | None = None, batch: int = 32, caption_len: int = 8,
                 device: str = "cpu", compile: bool = False, checkpointing: bool = False) -> None:
        self.device = torch.device(device)
        torch.manual_seed(0)
        self.model = build_model(preset).to(self.device)
        cfg = self.model.cfg
        self.opt = build_optimizer(self.model, OptimConfig())
        self.guard = NonFiniteGuard(self.device)
        self.batch = {"latent": torch.randn(batch, cfg.in_channels, *cfg.input_size, device=self.device),
                      "text": torch.randn(batch, caption_len, cfg.caption_dim, device=self.device),
                      "text_mask": torch.ones(batch, caption_len, dtype=torch.bool, device=self.device)}
        self.info = {"preset": preset, "batch": batch, "caption_len": caption_len,
                     "tokens": cfg.base_grid[0] * cfg.base_grid[1]}
        self._configure(mask, compile, checkpointing)

    def _configure(self, mask: MaskConfig | None, compile: bool, checkpointing: bool) -> None:
        cfg, n = self.model.cfg, self.info["batch"]
        self.mask, self.checkpointing = mask or MaskConfig(ratio=0.0), checkpointing
        self.stage = bench_stage(cfg, self.mask)
        net = torch.compile(self.model) if compile else self.model
        self.loss_net = AutocastNet(net, self.device.type, bf16=self.device.type == "cuda")
        flops = flops_per_image(cfg, cfg.base_grid, self.info["caption_len"], self.mask).train * n
        self.info = {**self.info, "mask_ratio": self.mask.ratio, "strategy": self.mask.strategy,
                     "block_size": self.mask.block_size, "compiled": compile, "checkpointing": checkpointing,
                     "flops_per_step": flops}

    def variant(self, mask: MaskConfig | None = None, compile: bool = False, checkpointing: bool = False) -> StepCase:
        """This case's model, optimiser, guard and batch at another setting (shared, not copied)."""
        other = copy.copy(self)
        other._configure(mask, compile, checkpointing)
        return other

    def __call__(self) -> None:
        n = self.info["batch"]
        self.model.activation_checkpointing = self.checkpointing
        draws = draw_step(n, self.stage, None, self.device)
        train_step(self.loss_net, self.opt, self.guard, [(self.batch, slice(0, n))], draws, self.stage)


def bench_steps(cases: list[StepCase], repeats: int = 8, warmup: int = 3) -> tuple[list[dict], float]:
    """Time ``cases`` round-robin (one step of each per round, after a matmul probe), so that a
    slow phase of a shared machine hits every case and the peak alike; returns per case the
    median step time, images/s, FLOP/s and MFU against the median probe (also returned), the
    first step's time (compiling, if any) and, on CUDA, host synchronisations per step and the
    memory a step allocates above what is resident before it (activations, gradients, temporaries)."""
    device = cases[0].device
    probe = PeakProbe(device)
    first, step_gib = [], []
    for case in cases:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            resident = torch.cuda.memory_allocated(device)
        first.append(median_time(case, 1, 0, device))
        step_gib.append((torch.cuda.max_memory_allocated(device) - resident) / 2**30 if device.type == "cuda" else None)
    for case in cases:
        for _ in range(max(warmup - 1, 0)):
            case()
    times, peaks = [[] for _ in cases], []
    for _ in range(repeats):
        peaks.append(probe())
        for i, case in enumerate(cases):
            times[i].append(median_time(case, 1, 0, device))
    peak = statistics.median(peaks)
    rows = []
    for case, seconds, first_s, gib in zip(cases, map(statistics.median, times), first, step_gib, strict=True):
        flops = case.info["flops_per_step"]
        rows.append({**case.info, "step_s": seconds, "first_step_s": first_s, "step_memory_gib": gib,
                     "images_per_s": case.info["batch"] / seconds, "flop_per_s": flops / seconds,
                     "mfu": flops / seconds / peak, "host_syncs_per_step": count_host_syncs(case, device)})
    return rows, peak


def roofline_check(steps: list[dict], caption_len: int, device: DeviceModel) -> dict:
    """The roofline model (:mod:`microdit.perf.roofline`) with ``device``'s figures against the
    measured step times. On a CPU with its measured figures: how far to trust the model where it
    cannot be checked; on CUDA with the GPU plan's H100 figures: the plan itself, checked."""
    rows = []
    for s in steps:
        mask = MaskConfig(s["mask_ratio"], s["strategy"], s["block_size"])
        ops, views = trace_step(preset_config(s["preset"]), s["batch"], caption_len, mask)
        predicted = step_time(ops, views, device)["seconds"]
        rows.append({"preset": s["preset"], "mask_ratio": s["mask_ratio"], "strategy": s["strategy"],
                     "predicted_s": predicted, "measured_s": s["step_s"], "ratio": predicted / s["step_s"]})
    return {"device": vars(device), "rows": rows}


def _timed_steps(preset: str, ratio: float, batch: int, steps: int, threads: int, start, queue) -> None:
    """A worker of :func:`bench_workers`: ``steps`` training steps at ``threads`` threads, timed
    from a common start (every worker warmed up); puts the elapsed seconds on ``queue``."""
    import time

    torch.set_num_threads(threads)
    case = StepCase(preset, MaskConfig(ratio), batch=batch)
    for _ in range(3):
        case()
    start.wait()  # a barrier: every worker has compiled its kernels and warmed its caches
    begin = time.perf_counter()
    for _ in range(steps):
        case()
    queue.put(time.perf_counter() - begin)


def bench_workers(preset: str = "nano", ratio: float = 0.75, batch: int = 8, steps: int = 40) -> dict:
    """Images/s of a study's training step (batch 8, as protocol cpu_prompt) in one process with
    every thread against the same number of one-thread processes stepping at once (a job's
    ``workers``): each process times ``steps`` steps from a common start; the aggregate is the
    images all of them trained over the longest one's time."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    threads = torch.get_num_threads()
    out = {"preset": preset, "mask_ratio": ratio, "batch": batch, "steps": steps, "threads": threads}
    for name, processes, each in (("one_process", 1, threads), ("workers", threads, 1)):
        start, queue = context.Barrier(processes), context.Queue()
        workers = [context.Process(target=_timed_steps, args=(preset, ratio, batch, steps, each, start, queue))
                   for _ in range(processes)]
        for w in workers:
            w.start()
        seconds = max(queue.get() for _ in workers)
        for w in workers:
            w.join()
        out[name] = {"processes": processes, "threads_each": each, "images_per_s": processes * steps * batch / seconds}
    out["speedup"] = out["workers"]["images_per_s"] / out["one_process"]["images_per_s"]
    return out


def workers_markdown(w: dict) -> list[str]:
    """The report's lines for :func:`bench_workers`' result."""
    return ["", f"## A study's step in one process or in workers ({w['preset']}, ratio {w['mask_ratio']}, "
                f"batch {w['batch']})", "", "| processes x threads | images/s (all processes) |", "|---|---|",
            *(f"| {w[k]['processes']} x {w[k]['threads_each']} | {w[k]['images_per_s']:.0f} |"
              for k in ("one_process", "workers")), "",
            f"Workers ({w['workers']['processes']} one-thread processes, a job's `workers`) train "
            f"{w['speedup']:.2f}x the images per second of one {w['threads']}-thread process."]
