"""Which process this is, whichever launcher started it.

torch.distributed and accelerate read ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT``. ``torchrun`` and ``accelerate launch`` export them. SLURM does not: a job started
by ``hydra/launcher=submitit_slurm`` with ``tasks_per_node=8`` (or ``srun``) has 8 processes
that each see only ``SLURM_PROCID`` / ``SLURM_LOCALID`` / ``SLURM_NTASKS``, and without the step
below each would train alone on ``cuda:0``. :func:`adopt_launcher_env` fills the torch variables
in from the launcher that started the process:

- already set (torchrun, accelerate launch): kept as they are;
- submitit (``submitit_slurm`` or ``submitit_local``): from submitit's job environment (rank,
  local rank, task count, first host as master, a port derived from the job id);
- plain ``srun`` with ``SLURM_NTASKS`` > 1: from ``SLURM_*``, with ``MASTER_ADDR`` taken from the
  environment (set it to the first host of the allocation) and ``MASTER_PORT`` from the job id.

Each process then uses device ``cuda:LOCAL_RANK`` (:func:`local_device`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

TORCH_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class ProcessInfo:
    """This process's global rank, rank on its node, and the number of processes."""

    rank: int
    local_rank: int
    world_size: int

    @classmethod
    def from_env(cls) -> ProcessInfo:
        """From the torch variables (1 process when they are absent)."""
        env = os.environ
        try:
            return cls(int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0)), int(env.get("WORLD_SIZE", 1)))
        except ValueError:
            raise ValueError("RANK, LOCAL_RANK and WORLD_SIZE must be integers, got "
                             f"{[env.get(k) for k in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE')]}") from None


def adopt_launcher_env() -> ProcessInfo:
    """Export the torch variables from submitit or SLURM when no torch launcher did (see module)."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return ProcessInfo.from_env()
    if env.get("SUBMITIT_EXECUTOR") in ("slurm", "local"):
        from submitit.helpers import TorchDistributedEnvironment

        dist = TorchDistributedEnvironment()
        values = {"RANK": dist.rank, "LOCAL_RANK": dist.local_rank, "WORLD_SIZE": dist.world_size,
                  "LOCAL_WORLD_SIZE": dist.local_world_size, "MASTER_ADDR": dist.master_addr,
                  "MASTER_PORT": dist.master_port}
    elif int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        if "MASTER_ADDR" not in env:
            raise ValueError("SLURM started several tasks (SLURM_NTASKS="
                             f"{env['SLURM_NTASKS']}) but MASTER_ADDR is not set: export MASTER_ADDR=$(scontrol show "
                             "hostnames $SLURM_JOB_NODELIST | head -n 1) before srun, or launch with "
                             "hydra/launcher=submitit_slurm")
        values = {"RANK": env["SLURM_PROCID"], "LOCAL_RANK": env.get("SLURM_LOCALID", 0),
                  "WORLD_SIZE": env["SLURM_NTASKS"], "MASTER_ADDR": env["MASTER_ADDR"],
                  "MASTER_PORT": env.get("MASTER_PORT", 20000 + int(env.get("SLURM_JOB_ID", 0)) % 40000)}
    else:
        return ProcessInfo.from_env()
    for key, value in values.items():
        env.setdefault(key, str(value))
    return ProcessInfo.from_env()


def local_device(requested: str, info: ProcessInfo | None = None) -> torch.device:
    """The device of this process: ``cuda`` means ``cuda:LOCAL_RANK`` (one GPU per process on a
    node; ``info`` None: one process); anything else is used as given. ValueError (one line) for a
    string torch does not read as a device, or a CUDA device this machine does not have."""
    try:
        device = torch.device(requested)
    except (RuntimeError, ValueError):
        raise ValueError(f"device {requested!r} is not a torch device: use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {requested!r}: torch sees no CUDA device on this machine "
                             "(torch.cuda.is_available() is False); use cpu")
        index = (info.local_rank if info else 0) if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise ValueError(f"device {requested!r}: this process would use cuda:{index}, but torch sees "
                             f"{torch.cuda.device_count()} CUDA device(s)")
        device = torch.device("cuda", index)
    return device


def launcher_precision(precision: str) -> str:
    """``trainer.precision`` reconciled with ``accelerate launch --mixed_precision`` (exported as
    ``ACCELERATE_MIXED_PRECISION``): ``bf16`` is honoured (bf16 autocast), ``no`` (accelerate's
    default) leaves ``precision`` as it is, ``fp16`` / ``fp8`` are refused: microdit trains in bf16
    autocast or fp32 and keeps no fp16 loss scaler. A conflict with an explicit ``precision`` is
    refused too, never resolved silently."""
    asked = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    if asked == "no":
        return precision
    if asked != "bf16":
        raise ValueError(f"accelerate --mixed_precision {asked} (ACCELERATE_MIXED_PRECISION) is not supported: "
                         "microdit trains with bf16 autocast or in fp32; use --mixed_precision bf16 or no, or "
                         "trainer.precision=bf16|fp32")
    if precision == "fp32":
        raise ValueError("accelerate --mixed_precision bf16 contradicts trainer.precision=fp32: drop one of them")
    return "bf16"


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether the network runs under bf16 autocast: ``trainer.precision`` reconciled with the
    launcher (:func:`launcher_precision`), ``auto`` meaning bf16 on CUDA and fp32 elsewhere. On
    CUDA, TF32 matmuls are enabled for what stays in fp32 (set here, from the config, never at
    import time)."""
    precision = launcher_precision(precision)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")

