"""The eight cases a CPU study spends its time in, each against its bounds: nano and micro, mask
ratio 0 and 0.75, a training step and a sampling step, timed eager (today's path) and compiled
side by side, against the kernel-sum bound (:mod:`microdit.perf.kernels`: the step's own kernels
timed alone) and the roofline model (:mod:`microdit.perf.roofline` at this device's measured
figures), with the share of the measured matmul peak.

Sampling never masks. Its "ratio 0.75" case is one denoiser evaluation of the naive-masking arm's
network (no patch-mixer: what the naive arm samples with); its ratio-0 case is the patch-mixer
network, which the unmasked and the deferred arms share. A sampling step is one guided evaluation
(conditional and unconditional halves in one batch of 2 x images), as every Heun stage runs it.
"""

from __future__ import annotations

import dataclasses
import statistics

import torch

from microdit.diffusion import EDMConfig
from microdit.diffusion.samplers import guided_denoiser
from microdit.host_memory import keep_freed_memory
from microdit.masking import MaskConfig
from microdit.models import MicroDiT, preset_config
from microdit.models.config import MicroDiTConfig
from microdit.perf.bench_step import StepCase
from microdit.perf.kernels import in_sequence_time, median_by, replay_time
from microdit.perf.roofline import record_calls, step_time, trace_step
from microdit.perf.timing import PeakProbe, cpu_device_model, fresh_pages, median_time
from microdit.train.flops import flops_per_image

RATIOS = (0.0, 0.75)


def sample_network(preset: str, ratio: float) -> MicroDiTConfig:
    """The network a sampling case evaluates: the preset, without its patch-mixer for the naive arm."""
    cfg = preset_config(preset)
    return dataclasses.replace(cfg, mixer_depth=0) if ratio > 0 else cfg


class SampleCase:
    """One guided denoiser evaluation of ``images`` images (a batch of 2 x images), as the
    sampler calls it at every Heun stage; ``compile`` wraps the network in torch.compile."""

    def __init__(self, preset: str, ratio: float, images: int = 32, caption_len: int = 8, compile: bool = False,
                 model: MicroDiT | None = None) -> None:
        torch.manual_seed(0)
        self.model = model if model is not None else MicroDiT(sample_network(preset, ratio)).eval()
        cfg = self.model.cfg
        y = torch.randn(images, caption_len, cfg.caption_dim)
        net = torch.compile(self.model) if compile else self.model
        self.denoiser = guided_denoiser(net, y, EDMConfig().sigma_data, 2.0, torch.zeros_like(y))
        self.x = torch.randn(images, cfg.in_channels, *cfg.input_size)
        self.sigma = torch.tensor(1.0, dtype=torch.float64)
        self.info = {"preset": preset, "kind": "sample", "mask_ratio": ratio, "batch": images,
                     "caption_len": caption_len, "compiled": compile,
                     "flops_per_step": 2 * images * flops_per_image(cfg, cfg.base_grid, caption_len).forward}

    def variant(self, compile: bool) -> SampleCase:
        return SampleCase(self.info["preset"], self.info["mask_ratio"], self.info["batch"], self.info["caption_len"],
                          compile, self.model)

    def __call__(self) -> None:
        with torch.no_grad():
            self.denoiser(self.x, self.sigma)


def _train_case(preset: str, ratio: float, batch: int, caption_len: int) -> StepCase:
    return StepCase(preset, MaskConfig(ratio), batch=batch, caption_len=caption_len)


def bench_bounds(presets=("nano", "micro"), batch: int = 32, caption_len: int = 8, repeats: int = 7,
                 compile: bool = True) -> dict:
    """Every case eager and (with ``compile``) compiled, timed round-robin between matmul probes,
    with its kernel-sum bound measured in the same rounds, right after the case's steps (so a
    change of the machine's speed moves the step and its bound together: measured minutes apart, a
    bound once came out above its step), and its roofline prediction and in-sequence kernel times
    (measured at the end)."""
    pairs = []
    for preset in presets:
        for ratio in RATIOS:
            train = _train_case(preset, ratio, batch, caption_len)
            pairs.append([train] + ([train.variant(MaskConfig(ratio), compile=True)] if compile else []))
            sample = SampleCase(preset, ratio, batch, caption_len)
            pairs.append([sample] + ([sample.variant(compile=True)] if compile else []))
    probe = PeakProbe()
    first = [[median_time(case, 1, 0) for case in pair] for pair in pairs]  # compiling, if any
    calls = [record_calls(pair[0]) for pair in pairs]
    times, bounds, peaks = [[[] for _ in pair] for pair in pairs], [[] for _ in pairs], []
    for _ in range(repeats):
        peaks.append(probe())
        for pair, slot, recorded, replays in zip(pairs, times, calls, bounds, strict=True):
            for case, bucket in zip(pair, slot, strict=True):
                bucket.append(median_time(case, 1, 0))
            with torch.no_grad():
                replays.append(replay_time(recorded, repeats=BOUND_REPEATS))
    peak = statistics.median(peaks)
    device = cpu_device_model()
    rows = []
    for pair, slot, firsts, replays in zip(pairs, times, first, bounds, strict=True):
        base = pair[0]
        info = {**base.info, "kind": base.info.get("kind", "train")}
        cfg = base.model.cfg
        sample = info["kind"] == "sample"
        bound = median_by(replays, lambda b: b["seconds"])  # the round of the median bound
        in_place = in_sequence_time(base)
        slowed = {name: s - bound["by_name"].get(name, 0.0) for name, s in in_place["by_name"].items()}
        row = {"preset": info["preset"], "kind": info["kind"], "mask_ratio": info["mask_ratio"], "batch": batch,
               "flops_per_step": info["flops_per_step"], "bound_s": bound["seconds"],
               "in_sequence_s": in_place["seconds"], "fresh_pages": fresh_pages(base),
               "bound_top": sorted(bound["by_name"].items(), key=lambda kv: -kv[1])[:4],
               "slowed_top": sorted(slowed.items(), key=lambda kv: -kv[1])[:3],
               "eager_s": statistics.median(slot[0])}
        if not sample:
            ops, views = trace_step(cfg, batch, caption_len, MaskConfig(info["mask_ratio"]))
            row["roofline_s"] = step_time(ops, views, device)["seconds"]
        if len(pair) > 1:
            row["compiled_s"], row["compile_first_s"] = statistics.median(slot[1]), firsts[1]
        rows.append(row)
    return {"matmul_peak_flop_per_s": peak, "threads": torch.get_num_threads(), "rows": rows,
            "device": vars(device)}


BOUND_REPEATS = 3  # each distinct kernel's time alone in one round: the median of 3 after a warm-up call


def _fresh_process_case(kind: str, preset: str, ratio: float, batch: int, caption_len: int, keep: bool,
                        threads: int, queue) -> None:
    """A process of :func:`bench_freed_memory`: one case from a fresh process, with glibc's
    defaults or (``keep``) the trainer's setting; puts (median step s, page faults per step, setting)."""
    torch.set_num_threads(threads)
    setting = keep_freed_memory() if keep else "glibc's defaults"  # a fresh process has glibc's defaults
    case = _train_case(preset, ratio, batch, caption_len) if kind == "train" else SampleCase(preset, ratio, batch,
                                                                                             caption_len)
    case(), case()  # warm-up
    faults = fresh_pages(case)
    queue.put((median_time(case, 5, 0), faults, setting))


def bench_freed_memory(presets=("nano", "micro"), batch: int = 32, caption_len: int = 8, rounds: int = 2,
                       kinds=("train", "sample")) -> dict:
    """Each of the eight cases (``kinds`` of ``presets`` at each ratio) in fresh processes with
    glibc's allocator defaults (today's eager path before :mod:`microdit.host_memory`) and with freed
    memory kept (the default now), alternating which goes first each round; median step time and
    page faults per step of each."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    cases = [(kind, preset, ratio) for preset in presets for ratio in RATIOS for kind in kinds]
    runs: dict = {case: {False: [], True: []} for case in cases}
    settings = set()
    for r in range(rounds):
        for case in cases:
            for keep in (False, True) if r % 2 == 0 else (True, False):
                queue = context.Queue()
                child = context.Process(target=_fresh_process_case,
                                        args=(*case, batch, caption_len, keep, torch.get_num_threads(), queue))
                child.start()
                child.join()  # its result is three numbers: in the queue's pipe before it exits
                if child.exitcode != 0:
                    raise RuntimeError(f"the {case} process with{'' if keep else 'out'} freed memory kept exited "
                                       f"with code {child.exitcode} (its error is printed above)")
                seconds, faults, setting = queue.get()
                runs[case][keep].append((seconds, faults))
                if keep:
                    settings.add(setting)
    rows = []
    for (kind, preset, ratio), arms in runs.items():
        row = {"preset": preset, "kind": kind, "mask_ratio": ratio}
        for keep, name in ((False, "default"), (True, "kept")):
            row[f"{name}_s"] = statistics.median(s for s, _ in arms[keep])
            faults = [f for _, f in arms[keep] if f is not None]
            row[f"{name}_faults"] = statistics.median(faults) if faults else None
        rows.append(row)
    return {"rounds": rounds, "batch": batch, "settings": sorted(settings), "rows": rows}


def freed_memory_markdown(f: dict) -> list[str]:
    """The report's lines for :func:`bench_freed_memory`."""
    def faults(value):
        return "n/a" if value is None else f"{value:.0f}"

    lines = ["", f"## Freed memory kept or given back (the eight cases, each in fresh processes, median of "
                 f"{f['rounds']} rounds)", "",
             "glibc's defaults (today's eager path before microdit.host_memory) against the trainer's CPU setting, "
             f"freed memory kept in the process (here: {', '.join(f['settings'])}).", "",
             "| preset | step | mask | glibc defaults ms | kept ms | kept / defaults | page faults defaults | "
             "page faults kept |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['preset']} | {r['kind']} | {r['mask_ratio']} | {r['default_s'] * 1000:.1f} | "
              f"{r['kept_s'] * 1000:.1f} | {r['kept_s'] / r['default_s']:.2f} | {faults(r['default_faults'])} | "
              f"{faults(r['kept_faults'])} |" for r in f["rows"]]
    return lines


def bounds_markdown(b: dict) -> list[str]:
    """The report's lines for :func:`bench_bounds`."""
    peak = b["matmul_peak_flop_per_s"]
    lines = ["", f"## The eight CPU cases against their bounds ({b['threads']} threads, matmul peak "
                 f"{peak / 1e9:.0f} GFLOP/s)", "",
             "Bound: the step's own kernels timed alone (the kernel-sum bound), in the same rounds as the step; "
             "in sequence: the same kernels timed where they run in the real step; roofline: the model at this "
             "CPU's figures (training steps only). "
             "Eager / bound is how far the eager step is from its kernels; eager minus in-sequence is Python and "
             "autograd around the kernels, in-sequence minus bound what running in sequence costs the kernels "
             "(caches, fresh pages: the page faults per step).", "",
             "| preset | step | mask | eager ms | compiled ms | in sequence ms | bound ms | eager / bound | "
             "in sequence / bound | page faults | roofline ms | eager % of peak | largest kernels in the bound | "
             "most slowed in sequence (ms over alone) |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in b["rows"]:
        compiled = f"{r['compiled_s'] * 1000:.1f}" if "compiled_s" in r else "–"
        roofline = f"{r['roofline_s'] * 1000:.1f}" if "roofline_s" in r else "–"
        faults = "n/a" if r.get("fresh_pages") is None else f"{r['fresh_pages']:.0f}"
        top = ", ".join(f"{name} {s * 1000:.1f}" for name, s in r["bound_top"])
        slowed = ", ".join(f"{name} {s * 1000:+.1f}" for name, s in r["slowed_top"])
        bound = r["bound_s"]
        lines.append(f"| {r['preset']} | {r['kind']} | {r['mask_ratio']} | {r['eager_s'] * 1000:.1f} | {compiled} | "
                     f"{r['in_sequence_s'] * 1000:.1f} | {bound * 1000:.1f} | {r['eager_s'] / bound:.2f} | "
                     f"{r['in_sequence_s'] / bound:.2f} | {faults} | {roofline} | "
                     f"{r['flops_per_step'] / r['eager_s'] / peak:.0%} | {top} | {slowed} |")
    return lines
