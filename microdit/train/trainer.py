"""The training loop (the only module that imports accelerate).

Runs the configured stages in order (e.g. masked pretraining, then unmasked fine-tuning), counts
progress in images, meters FLOPs and cost, checkpoints atomically (every N images, at the end of
every stage, on SIGTERM/SIGINT) and resumes exactly.

Every random draw of a training step (sigma, noise, token masks) is made for the whole global
batch from a generator seeded by (seed, stage, step), and each process takes its slice; the
reader's order does not depend on the process count either. So a run's losses do not depend on
how many processes share the global batch, and a resumed run repeats the uninterrupted one.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from microdit import run as runs
from microdit.data import LatentBatches, make_loader
from microdit.data.images import save_grid
from microdit.devices import peak_flops
from microdit.files import write_atomic
from microdit.host_memory import keep_freed_memory
from microdit.launch import use_bf16
from microdit.locks import Lock, LockHeld, acquire
from microdit.models import MicroDiT
from microdit.models.microdit import WEIGHTS_KEY
from microdit.nn.attention import check_attention_backend
from microdit.progress import progress
from microdit.run import PromptSampler, check_stage_data
from microdit.train import checkpoint as ckpt
from microdit.train.config import TrainConfig, summarize_changes, validate
from microdit.train.cost import CostMeter
from microdit.train.ema import EMA
from microdit.train.guard import DeferredSignals, NonFiniteError, NonFiniteGuard
from microdit.train.logging import LogWindow, StatsFile, WandbSink, training_plot
from microdit.train.optim import build_optimizer, set_lr
from microdit.train.plan import Stage, budget_flops, check_plan, prepare_synthetic, resolve, stage_at
from microdit.train.schedule import lr_factor
from microdit.train.step import AutocastNet, DistributedOps, draw_step, step_generator, train_step


class Trainer:
    """Builds everything from a validated :class:`TrainConfig` and runs its stages."""

    def __init__(self, cfg: TrainConfig) -> None:
        from accelerate import Accelerator

        t = cfg.trainer
        if t.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("trainer.device=cuda, but torch sees no CUDA device on this machine: use "
                             "trainer.device=auto or cpu, or check the CUDA install (torch.cuda.is_available())")
        use_cpu = t.device == "cpu" or (t.device == "auto" and not torch.cuda.is_available())
        self.acc = Accelerator(cpu=use_cpu, mixed_precision="no")  # autocast is ours: launcher_precision
        self.world, self.rank = self.acc.num_processes, self.acc.process_index
        validate(cfg, self.world)
        self.cfg, self.device = cfg, self.acc.device
        if t.threads:
            torch.set_num_threads(t.threads)
        keep_freed_memory(self.device)  # on CPU each step reuses the last one's pages (microdit.host_memory)
        self.bf16 = use_bf16(t.precision, self.device)
        self.run_dir = Path(t.run_dir) / t.name
        created = not self.run_dir.exists()
        self._lock = None
        try:
            ckpt.check_writable(self.run_dir, self.rank)
            self._lock = self._claim_run_dir()
            self._build(cfg)
        except BaseException:
            self.release()
            if created and self.acc.is_main_process and self.run_dir.is_dir() and not any(self.run_dir.iterdir()):
                self.run_dir.rmdir()  # a refused run leaves no empty folder behind
            raise

    def _build(self, cfg: TrainConfig) -> None:
        t = cfg.trainer
        self.micro = t.batch_size // (self.world * t.grad_accum)
        self.peak_flops = t.peak_flops or peak_flops(self.device.type)
        if cfg.data.prepare == "synthetic":
            if self.acc.is_main_process:
                prepare_synthetic(cfg)
            self.acc.wait_for_everyone()
        caption_len, self.encoders = check_stage_data(resolve(cfg))
        self.stages = resolve(cfg, caption_len, self.peak_flops)
        check_plan(self.stages, t.plan_check, self.acc.print, budget_flops(cfg, self.peak_flops))

        random.seed(t.seed)  # the same on every process, before the model draws its initialisation
        np.random.seed(t.seed % 2**32)
        torch.manual_seed(t.seed)
        self.model = MicroDiT(self.stages[0].model).to(self.device)
        self.model.activation_checkpointing = t.activation_checkpointing
        check_attention_backend(t.attention_backend, self.device, torch.bfloat16 if self.bf16 else torch.float32,
                                self.stages[0].model.head_dim)
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.ema: EMA | None = None
        self.meter = CostMeter(self.peak_flops, self.world, t.price_per_device_hour)
        self.progress = {"stage": 0, "stage_images": 0, "stage_steps": 0, "nimg": 0, "step": 0}
        self.guard = NonFiniteGuard(self.device)
        resume_from = ckpt.resume_path(self.run_dir, t.resume)
        if resume_from is not None or t.init_from:
            self._restore(resume_from or runs.resolve_checkpoint(t.init_from), resuming=resume_from is not None)
        net = torch.compile(self.model, mode=t.compile_mode) if t.compile else self.model
        self.net, self.optimizer = self.acc.prepare(net, self.optimizer)
        self.loss_net = AutocastNet(self.net, self.device.type, self.bf16, t.attention_backend)
        self.ops = DistributedOps(self.acc.backward, lambda: self.acc.no_sync(self.net), self.acc.clip_grad_norm_,
                                     lambda v: self.acc.reduce(v, reduction="sum"))
        self.signals = DeferredSignals()
        self._nonfinite_seen = 0  # skipped steps as of the last sync point
        self._bad_samples = 0  # unreadable samples this stage's reader skipped
        self._last_loss = torch.full((), float("nan"), device=self.device)
        self._grid_sampler: PromptSampler | None = None
        self.resumed_from = resume_from
        self.config_yaml = OmegaConf.to_yaml(OmegaConf.structured(cfg))  # the resolved config, in every checkpoint
        if self.acc.is_main_process:
            self.stats = StatsFile(self.run_dir / "stats.jsonl", self.progress["nimg"])  # 0 when starting afresh
            write_atomic(self.run_dir / "config.yaml", self.config_yaml.encode())
            self._write_run_info()
            self.wandb = WandbSink(t.wandb, self.run_dir, t.name, OmegaConf.to_container(OmegaConf.structured(cfg)))

    def release(self) -> None:
        """Give the run folder back (its lock): the end of :func:`train`, or a failed set-up."""
        if self._lock is not None:
            self._lock.release()

    def _claim_run_dir(self) -> Lock | None:
        """One trainer per run folder: the main process takes ``RUN/.lock`` (:mod:`microdit.locks`) before anything in
        the folder is written, so a second trainer launched on the same run (the same sweep started twice, a job
        submitted twice) stops with one line instead of overwriting the first one's checkpoints and logs; a requeued
        SLURM job or a run whose process was killed takes its stale lock over. Every process learns the outcome."""
        from accelerate.utils import broadcast_object_list

        lock, error = None, None
        if self.acc.is_main_process:
            try:
                lock = acquire(self.run_dir / ".lock", f"run {self.run_dir}", wait=False, log=self.acc.print)
            except LockHeld as err:
                error = str(err)
        error = broadcast_object_list([error])[0]
        if error is not None:
            raise LockHeld(error)
        return lock

    def _restore(self, path: Path, resuming: bool) -> None:
        """Resume this run from checkpoint ``path`` (the whole train state, which must have been
        written with this config), or initialise it from another run's (``trainer.init_from``:
        the weights, and with ``init_mode=full`` the optimizer state and EMA too)."""
        full = resuming or self.cfg.trainer.init_mode == "full"
        changes = runs.saved_config_changes(path, self.cfg) if resuming else []
        if changes:
            raise ValueError(f"checkpoint {path} was written with another config ({summarize_changes(changes)}); "
                             f"continuing it would mix two runs: relaunch with the values of {path / runs.CONFIG}, "
                             f"or start a new run (another trainer.name) with trainer.init_from={path}")
        state, meta = runs.load(path, resuming=resuming)
        if resuming:
            model_cfg = stage_at(self.stages, state["progress"]["stage"]).model
            self.model.set_resolution(model_cfg.input_size, model_cfg.pos_interp_scale)
        ckpt.load_weights(self.model, state["model"], path, "model")
        if full:
            self.optimizer.load_state_dict(state["optimizer"])
            if state.get("ema") is not None:
                self.ema = EMA(self.model)
                ckpt.load_weights(self.ema.model, state["ema"], path, "ema")
        if not resuming:
            self.acc.print(f"[train] initialised from {path} ({self.cfg.trainer.init_mode})")
            return
        self.progress = dict(state["progress"])
        self.guard.load_state_dict(state["guard"])
        self.meter.load_state_dict(state["cost"])
        if (path / f"rng-{self.rank}.pt").is_file():
            ckpt.load_rng(path / f"rng-{self.rank}.pt")
        self.acc.print(f"[train] resumed from {path} at {self.progress['nimg']} images "
                       f"(stage {self.progress['stage']}, {meta['stage_name']})")

    def _write_run_info(self) -> None:
        info = {"device": str(self.device), "processes": self.world, "bf16_autocast": self.bf16,
                "tf32": self.device.type == "cuda", "threads": torch.get_num_threads(), "torch": torch.__version__,
                "peak_flops_per_device": self.meter.peak_flops, "budget_flops": budget_flops(self.cfg, self.peak_flops),
                "stages": [{"name": s.name, "images": s.images, "steps": s.steps, "flops_per_image": s.flops_per_image}
                           for s in self.stages]}
        write_atomic(self.run_dir / "run_info.json", json.dumps(info, indent=2).encode())

    def save_checkpoint(self, export: bool = False, pinned: bool = False) -> Path | None:
        """Write a checkpoint of the full train state (all processes take part); with ``export``
        (stage and run ends) it also holds ``model.safetensors`` + ``config.json``: the EMA
        weights, or the raw ones without an EMA (:meth:`MicroDiT.from_pretrained` loads them); a
        ``pinned`` checkpoint (asked for by a setting) is never removed by the retention."""
        nimg = self.progress["nimg"]
        tmp = runs.checkpoint_root(self.run_dir) / f".tmp-{nimg:012d}"
        if self.acc.is_main_process:
            ckpt.begin(self.run_dir, nimg)
        self.acc.wait_for_everyone()
        ckpt.save_rng(tmp / f"rng-{self.rank}.pt")
        self.acc.wait_for_everyone()
        final = None
        if self.acc.is_main_process:
            state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                     "ema": self.ema.state_dict() if self.ema is not None else None,
                     "progress": dict(self.progress), "guard": self.guard.state_dict(), "cost": self.meter.state_dict()}
            stage = stage_at(self.stages, self.progress["stage"])
            meta = {"nimg": nimg, "step": self.progress["step"], "stage": self.progress["stage"],
                    "stage_name": stage.name, "encoders": self.encoders[stage.index], "time": time.time(),
                    "pinned": pinned}
            if export:
                net, weights = (self.ema.model, "ema") if self.ema is not None else (self.model, "raw")
                try:
                    net.save_pretrained(tmp, meta["encoders"] | {WEIGHTS_KEY: weights})
                except (OSError, RuntimeError) as err:
                    ckpt.abandon(tmp, err)
            final = ckpt.commit(tmp, state, meta, self.cfg.trainer.keep_checkpoints, self.config_yaml)
        self.acc.wait_for_everyone()
        self.meter.restart_clock()
        return final

    def _step(self, it, stage: Stage) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One optimizer step of ``stage``: this process's micro-batches of the global batch."""
        t = self.cfg.trainer
        gen = step_generator(t.seed, stage.index, self.progress["stage_steps"], self.device)
        draws = draw_step(t.batch_size, stage, gen, self.device)

        def micro_batches():
            for a in range(t.grad_accum):  # accumulation step a of rank r is slice a * world + r
                batch = next(it)
                self._bad_samples = batch["bad_samples"]  # skipped so far by this stage's reader
                lo = (a * self.world + self.rank) * self.micro
                yield batch, slice(lo, lo + len(batch["key"]))

        return train_step(self.loss_net, self.optimizer, self.guard, micro_batches(), draws, stage, self.ops)

    def run(self) -> dict:
        """Train every remaining stage; returns the run summary (also written to summary.json). A run
        that already finished is not touched: its summary is returned as it is."""
        t = self.cfg.trainer
        finished = self.run_dir / "summary.json"
        if self.progress["stage"] >= len(self.stages) and finished.is_file():
            self.acc.print(f"[train] {self.run_dir} already finished ({self.progress['nimg']} images); nothing to do")
            return json.loads(finished.read_text())
        self._bar = progress(total=sum(s.images for s in self.stages), desc="train", unit="img",
                             initial=self.progress["nimg"], enabled=t.progress and self.acc.is_main_process)
        if t.save_initial_checkpoint and self.resumed_from is None and self.progress["nimg"] == 0:
            self.save_checkpoint(pinned=True)
        try:
            with self.signals:
                while self.progress["stage"] < len(self.stages):
                    self._run_stage(self.stages[self.progress["stage"]])
        finally:
            self._bar.close()
        return self._finish()

    def _run_stage(self, stage: Stage) -> None:
        """Train ``stage`` from where the progress counters stand to its end, then sample its grid
        and write its stage-end checkpoint (with an export)."""
        t = self.cfg.trainer
        for net in [self.model] + ([self.ema.model] if self.ema is not None else []):
            net.set_resolution(stage.model.input_size, stage.model.pos_interp_scale)
        if stage.ema.decay > 0 and self.ema is None:
            self.ema = EMA(self.model)
        if stage.config.reset_optimizer and self.progress["stage_steps"] == 0:
            self.optimizer.state.clear()  # fresh moments and step counts (resume: saved with the state)
        reader = LatentBatches.from_config(stage.data, self.micro, t.seed + stage.index, self.rank, self.world,
                                           t.grad_accum, self.progress["stage_steps"])
        it = iter(make_loader(reader, stage.data.num_workers, pin_memory=self.device.type == "cuda"))
        self.meter.restart_clock()
        window, lr = LogWindow(self.device), stage.lr
        while self.progress["stage_images"] < stage.images:
            c = stage.config
            lr = stage.lr * lr_factor(self.progress["stage_images"], stage.images, c.warmup_images, c.schedule,
                                      c.min_lr_fraction)
            set_lr(self.optimizer, lr)
            loss, grad_norm, skip = self._step(it, stage)
            if self.ema is not None:
                self.ema.update(self.model, stage.ema.decay if self.progress["stage_images"] >= stage.ema.start_images
                                else 0.0, skip)
            self._advance(stage)
            self._bar.update(t.batch_size)
            window.add(loss, grad_norm, t.batch_size, stage.flops_per_image * t.batch_size)
            self._last_loss = loss
            self._between_steps(stage, lr, window, reader.manifest)
        self._sync_point()
        if window.steps:
            self._log(stage, lr, window)
        self.sample_grid(reader.manifest)  # every stage end has its grid, whatever sample_every_images
        if self._bad_samples:
            self.acc.print(f"[train] stage {stage.name}: {self._bad_samples} unreadable sample(s) skipped "
                           "(data.skip_bad_samples: their batches ran without them)")
        self.progress.update(stage=stage.index + 1, stage_images=0, stage_steps=0)
        self.save_checkpoint(export=True)

    def _between_steps(self, stage: Stage, lr: float, window: LogWindow, manifest) -> None:
        """What is due after a step: a log row, a checkpoint, a sample grid, the host's look at the
        guard and at signals (a signal ends the run after a checkpoint)."""
        t = self.cfg.trainer
        logs, saves = self._crossed(t.log_every_images), self._crossed(t.ckpt_every_images)
        samples = self._crossed(t.sample_every_images)
        if not (logs or saves or samples or self.progress["step"] % t.sync_every_steps == 0):
            return
        signalled = self._sync_point()
        if logs:
            self._log(stage, lr, window)
        if saves:
            self.save_checkpoint()
        if samples:
            self.sample_grid(manifest)
        if signalled:
            path = self.save_checkpoint()
            self.acc.print(f"[train] signal received: checkpoint {path} written at {self.progress['nimg']} images; "
                           "exiting")
            raise SystemExit(128 + (self.signals.received or signal.SIGTERM))

    def _finish(self) -> dict:
        """The run summary, written to summary.json with the training plot; then a signal that came
        after the loop's last sync point stops the process (:meth:`DeferredSignals.stop_if_received`)."""
        summary = {"nimg": self.progress["nimg"], "steps": self.progress["step"],
                   "final_loss": self.acc.reduce(self._last_loss, reduction="mean").item(),
                   "nonfinite_steps": self.guard.state_dict()["nonfinite_total"], **self.meter.totals()}
        if self.acc.is_main_process:
            write_atomic(self.run_dir / "summary.json", json.dumps(summary, indent=2).encode())
            training_plot([self.run_dir], self.run_dir / "training.png")
            self.wandb.finish()
        self.signals.stop_if_received(self.acc.print)
        return summary

    def _sync_point(self) -> bool:
        """The host's look at the device (the only synchronisation of the loop outside logging and
        checkpoints): stop on too many skipped steps in a row; True when a process got a signal."""
        signalled = self.acc.reduce(torch.tensor(float(self.signals.received is not None), device=self.device), "sum")
        guard = self.guard.read()
        self._nonfinite_seen = guard["nonfinite_total"]  # for the log row written after this point
        if guard["longest"] >= self.cfg.trainer.max_nonfinite:
            raise NonFiniteError(f"{guard['longest']} non-finite steps in a row (loss or gradient NaN/Inf) before "
                                 f"{self.progress['nimg']} images; stopping. Last good checkpoint: "
                                 f"{runs.latest(self.run_dir) or 'none'}")
        return bool(signalled.item() > 0)

    def _advance(self, stage: Stage) -> None:
        gb = self.cfg.trainer.batch_size
        self._before = self.progress["nimg"]
        self.progress["stage_images"] += gb
        self.progress["stage_steps"] += 1
        self.progress["nimg"] += gb
        self.progress["step"] += 1
        self.meter.add(gb, stage.flops_per_image * gb)

    def _crossed(self, every: int) -> bool:
        return every > 0 and self.progress["nimg"] // every > self._before // every

    def _log(self, stage: Stage, lr: float, window: LogWindow) -> None:
        seconds = time.perf_counter() - window.start
        loss, grad = torch.stack([self.acc.reduce(window.loss, reduction="mean"), window.grad]).tolist()
        row = {"nimg": self.progress["nimg"], "step": self.progress["step"], "stage": self.progress["stage"],
               "stage_name": stage.name, "loss": loss / window.steps, "lr": lr,
               "grad_norm": grad / window.steps, "images_per_s": window.images / seconds,
               "mfu": self.meter.mfu(window.flops, seconds), "flops": self.meter.flops,
               "device_hours": self.meter.device_hours, "dollars": self.meter.dollars,
               "nonfinite_steps": self._nonfinite_seen, "bad_samples": self._bad_samples}
        if self.acc.is_main_process:
            self.stats.write(row)
            self.wandb.log(row, self.progress["nimg"])
            self._bar.set_postfix(stage=stage.name, loss=f"{row['loss']:.4f}", lr=f"{lr:.2e}", refresh=False)
        window.reset()

    @torch.no_grad()
    def sample_grid(self, manifest) -> Path | None:
        """Sample the fixed prompts (EMA weights if any) and save a PNG grid; image i uses seed
        ``trainer.sample_seed + i``, as ``microdit-sample --seed`` does."""
        if not self.acc.is_main_process:
            self.acc.wait_for_everyone()
            return None
        t = self.cfg.trainer
        if self._grid_sampler is None:  # loaded once per run, on the main process only
            self._grid_sampler = PromptSampler(manifest.text_encoder, manifest.autoencoder, self.device)
        net = (self.ema.model if self.ema is not None else self.model).eval()
        seeds = [t.sample_seed + i for i in range(len(t.sample_prompts))]
        stage = stage_at(self.stages, self.progress["stage"])
        images = self._grid_sampler(net, list(t.sample_prompts), seeds, stage.edm, self.cfg.sampler,
                                    stage.data.use_text_mask)
        path = self.run_dir / "samples" / f"{self.progress['nimg']:012d}.png"
        save_grid(images, path, columns=len(seeds))
        self.wandb.log_image("samples", path, self.progress["nimg"])
        self.model.train()
        self.acc.wait_for_everyone()
        self.meter.restart_clock()
        return path


def train(cfg: TrainConfig) -> dict:
    """Validate, build and run a training run; returns its summary (user errors: run.RUN_ERRORS)."""
    os.environ.setdefault("WANDB_SILENT", "true")
    trainer = Trainer(cfg)
    try:
        return trainer.run()
    finally:
        trainer.release()
