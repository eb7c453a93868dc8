"""``microdit-train``: compose ``conf/`` with Hydra, validate, train.

    microdit-train                                   # CPU defaults: nano on the synthetic dataset
    microdit-train experiment=paper_recipe           # the paper's four stages (protocol=paper)
    microdit-train protocol=ablation trainer.name=naive50 stages.pretrain.mask.ratio=0.5 model.overrides.mixer_depth=0
    microdit-train -m experiment=fig4_mask_ratio_cpu  # a sweep (one run folder per point)
"""

from __future__ import annotations

import hashlib
import sys
from importlib import resources
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from microdit.data import DataError
from microdit.train.config import TrainConfig, to_train_config, validate

CONF_DIR = Path(str(resources.files("microdit.conf")))  # the top-level conf/ (installed: microdit/conf)
ConfigStore.instance().store(name="train_schema", node=TrainConfig)


def compose_config(overrides: list[str]) -> TrainConfig:
    """The TrainConfig that ``microdit-train OVERRIDES`` would run (for programs and notebooks)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return to_train_config(compose("train", overrides=overrides))


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> None:
    """Entry point: config errors, data errors and non-finite stops end with a one-line message."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from microdit.launch import adopt_launcher_env
    from microdit.locks import LockHeld
    from microdit.run import CheckpointError
    from microdit.train.trainer import NonFiniteError, train

    try:
        run_cfg = to_train_config(cfg)
    except ValueError as err:
        print(f"microdit-train: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    job = HydraConfig.get()
    if job.mode == RunMode.MULTIRUN:  # one run folder per sweep point, named after its overrides
        suffix = (job.job.override_dirname or str(job.job.num)).replace("/", "_").replace(",", "_")
        if len(suffix) > 120:  # a folder name has at most 255 bytes: keep the start, tell points apart by a hash
            suffix = f"{suffix[:100]}-{hashlib.sha1(suffix.encode()).hexdigest()[:10]}"
        run_cfg.trainer.name = f"{run_cfg.trainer.name}-{suffix}"
    try:
        adopt_launcher_env()  # one process per task under submitit / srun (microdit.launch)
        summary = train(run_cfg)
    except (ValueError, DataError, NonFiniteError, CheckpointError, LockHeld, PermissionError, FileExistsError,
            FileNotFoundError) as err:
        print(f"microdit-train: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"[train] done: {summary['nimg']} images, final loss {summary['final_loss']:.4f}, "
          f"{summary['images_per_s']:.1f} img/s, MFU {summary['mfu']:.1%}, {summary['dollars']:.4f} $")


def sweep_points(overrides: list[str]) -> list[list[str]]:
    """The override list of every run that ``microdit-train -m OVERRIDES`` launches: the command
    line's sweeps (``a=1,2``) crossed with the ``hydra.sweeper.params`` of the config each command
    line point composes (an experiment's own sweep), the command line winning on a shared key,
    as Hydra's basic sweeper does. Lets ``cli`` validate every point before any job starts."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    points = []
    for point in BasicSweeper.split_arguments(parser.parse_overrides(overrides), None)[0]:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            params = compose("train", overrides=point, return_hydra_config=True).hydra.sweeper.get("params") or {}
        swept = [f"{key}={value}" for key, value in params.items()] + point
        points += BasicSweeper.split_arguments(parser.parse_overrides(swept), None)[0]
    return points


def _missing_launcher_plugin(overrides: list[str]) -> str | None:
    """The ``hydra/launcher=submitit_*`` value among ``overrides`` when its plugin (the ``slurm``
    extra) cannot be imported, else None (Hydra itself would only list the launchers it has)."""
    for override in overrides:
        key, _, value = override.partition("=")
        if key.lstrip("+~") == "hydra/launcher" and value.startswith("submitit"):
            try:
                import hydra_plugins.hydra_submitit_launcher  # noqa: F401
            except ImportError:
                return value
    return None


def cli() -> None:
    """Console entry point. The config of a single run, or of every point of a ``-m`` sweep, is
    composed and validated first, so a bad override, an unknown experiment or a bad value ends in
    one line (exit code 2) before any job starts or is submitted, also under ``--cfg job`` (where
    Hydra prints the config and exits without a run)."""
    from hydra._internal.utils import get_args_parser
    from hydra.errors import HydraException

    args, _ = get_args_parser().parse_known_args(sys.argv[1:])
    launcher = _missing_launcher_plugin(args.overrides)
    if launcher:
        print(f"microdit-train: error: hydra/launcher={launcher} needs the hydra-submitit-launcher plugin, "
              "which is not installed: pip install 'microdit[slurm]'", file=sys.stderr)
        raise SystemExit(2)
    custom = args.config_path or args.config_name or args.config_dir or args.experimental_rerun  # Hydra checks those
    if not (args.help or args.hydra_help or args.info or args.shell_completion or custom):
        where = ""
        try:
            points = sweep_points(args.overrides) if args.multirun else [args.overrides]
            for point in points:
                where = f" (sweep point {' '.join(point)})" if args.multirun else ""
                validate(compose_config(point))
        except (ValueError, HydraException) as err:
            print(f"microdit-train: error{where}: {' '.join(str(err).split())}", file=sys.stderr)
            raise SystemExit(2) from None
    main()


if __name__ == "__main__":
    cli()
