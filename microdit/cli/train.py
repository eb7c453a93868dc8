"""``microdit-train``: compose ``conf/`` with Hydra, validate, train.

    microdit-train                                   # CPU defaults: nano on the synthetic dataset
    microdit-train experiment=paper_recipe           # the paper's four stages (protocol=paper)
    microdit-train protocol=ablation trainer.name=naive50 stages.pretrain.mask.ratio=0.5 model.overrides.mixer_depth=0
    microdit-train -m experiment=fig4_mask_ratio_cpu  # a sweep (one run folder per point)
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from microdit.data import DataError
from microdit.train.config import TrainConfig

CONF_DIR = Path(str(resources.files("microdit.conf")))  # the top-level conf/ (installed: microdit/conf)
ConfigStore.instance().store(name="train_schema", node=TrainConfig)


def compose_config(overrides: list[str]) -> TrainConfig:
    """The TrainConfig that ``microdit-train OVERRIDES`` would run (for programs and notebooks)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return OmegaConf.to_object(compose("train", overrides=overrides))


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> None:
    """Entry point: config errors, data errors and non-finite stops end with a one-line message."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from microdit.train.trainer import NonFiniteError, train

    run_cfg = OmegaConf.to_object(cfg)
    job = HydraConfig.get()
    if job.mode == RunMode.MULTIRUN:  # one run folder per sweep point, named after its overrides
        suffix = job.job.override_dirname or str(job.job.num)
        run_cfg.trainer.name = f"{run_cfg.trainer.name}-{suffix}".replace("/", "_").replace(",", "_")
    try:
        summary = train(run_cfg)
    except (ValueError, DataError, NonFiniteError, PermissionError, FileExistsError, FileNotFoundError) as err:
        print(f"microdit-train: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"[train] done: {summary['nimg']} images, final loss {summary['final_loss']:.4f}, "
          f"{summary['images_per_s']:.1f} img/s, MFU {summary['mfu']:.1%}, {summary['dollars']:.4f} $")


if __name__ == "__main__":
    main()
