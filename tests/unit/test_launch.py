"""Rank, local rank and world size from whichever launcher started the process; accelerate's
mixed-precision request honoured or refused."""

import os

import pytest
import torch

from microdit.launch import ProcessInfo, adopt_launcher_env, launcher_precision, local_device

LAUNCH_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
               "SUBMITIT_EXECUTOR", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_JOB_ID",
               "ACCELERATE_MIXED_PRECISION")


@pytest.fixture
def env(monkeypatch):
    """No launcher variables; os.environ restored afterwards (adopt_launcher_env writes to it)."""
    saved = dict(os.environ)
    for key in LAUNCH_VARS:
        monkeypatch.delenv(key, raising=False)
    yield monkeypatch
    os.environ.clear()
    os.environ.update(saved)


def test_no_launcher_is_one_process(env):
    assert adopt_launcher_env() == ProcessInfo(0, 0, 1)


def test_torchrun_variables_are_kept(env):
    for k, v in {"RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8", "SLURM_NTASKS": "2", "SLURM_PROCID": "0"}.items():
        env.setenv(k, v)
    assert adopt_launcher_env() == ProcessInfo(5, 1, 8)  # SLURM_* do not override torchrun's


def test_srun_tasks_become_ranks(env):
    for k, v in {"SLURM_NTASKS": "16", "SLURM_PROCID": "11", "SLURM_LOCALID": "3", "SLURM_JOB_ID": "777",
                 "MASTER_ADDR": "node-a"}.items():
        env.setenv(k, v)
    assert adopt_launcher_env() == ProcessInfo(11, 3, 16)
    assert os.environ["MASTER_PORT"] == str(20000 + 777)
    env.setattr(torch.cuda, "is_available", lambda: True)  # a node with 4 GPUs
    env.setattr(torch.cuda, "device_count", lambda: 4)
    assert local_device("cuda", ProcessInfo(11, 3, 16)) == torch.device("cuda", 3)
    assert local_device("cuda:0", ProcessInfo(11, 3, 16)) == torch.device("cuda", 0)
    assert local_device("cpu", ProcessInfo(11, 3, 16)) == torch.device("cpu")
    with pytest.raises(ValueError, match=r"would use cuda:3, but torch sees 2 CUDA device\(s\)"):
        env.setattr(torch.cuda, "device_count", lambda: 2)
        local_device("cuda", ProcessInfo(11, 3, 16))


def test_devices_torch_cannot_use_are_one_line_errors(monkeypatch):
    assert local_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"^device 'bogus' is not a torch device: use cpu, cuda or cuda:N$"):
        local_device("bogus")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"^device 'cuda:1': torch sees no CUDA device on this machine"):
        local_device("cuda:1")


def test_srun_without_master_addr_is_refused(env):
    env.setenv("SLURM_NTASKS", "2")
    env.setenv("SLURM_PROCID", "1")
    with pytest.raises(ValueError, match="MASTER_ADDR is not set"):
        adopt_launcher_env()


def test_submitit_local_tasks_become_ranks(env):
    for k, v in {"SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_JOB_ID": "42", "SUBMITIT_LOCAL_NTASKS": "2",
                 "SUBMITIT_LOCAL_GLOBALID": "1", "SUBMITIT_LOCAL_LOCALID": "1", "SUBMITIT_LOCAL_JOB_NUM_NODES": "1",
                 "SUBMITIT_LOCAL_NODEID": "0"}.items():
        env.setenv(k, v)
    assert adopt_launcher_env() == ProcessInfo(1, 1, 2)


def test_accelerate_mixed_precision(env):
    assert launcher_precision("auto") == "auto"
    env.setenv("ACCELERATE_MIXED_PRECISION", "no")
    assert launcher_precision("fp32") == "fp32"
    env.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert launcher_precision("auto") == launcher_precision("bf16") == "bf16"
    with pytest.raises(ValueError, match="contradicts trainer.precision=fp32"):
        launcher_precision("fp32")
    env.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    with pytest.raises(ValueError, match="--mixed_precision fp16 .* not supported"):
        launcher_precision("auto")
