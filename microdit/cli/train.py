"""``microdit-train``: compose ``conf/`` with Hydra, validate, train.

    microdit-train                                   # CPU defaults: nano on the synthetic dataset
    microdit-train experiment=paper_recipe           # the paper's four stages (protocol=paper)
    microdit-train protocol=ablation trainer.name=naive50 stages.pretrain.mask.ratio=0.5 model.overrides.mixer_depth=0
    microdit-train -m experiment=fig4_mask_ratio_cpu  # a sweep (one run folder per point)
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys

import hydra
from omegaconf import DictConfig

from microdit.cli.stopping import stopped_in_one_line
from microdit.experiment import CONF_DIR, compose_config, sweep_points, validate_run
from microdit.train.config import to_train_config


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> None:
    """Entry point: config errors, data errors and non-finite stops end with a one-line message."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from microdit.launch import adopt_launcher_env
    from microdit.run import RUN_ERRORS
    from microdit.train.trainer import train

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
        process = adopt_launcher_env()  # one process per task under submitit / srun (microdit.launch)
        summary = train(run_cfg)
    except RUN_ERRORS as err:
        print(f"microdit-train: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    if process.rank == 0:  # the run's summary.json; each other rank timed its own share of the run
        print(f"[train] done: {summary['nimg']} images, final loss {summary['final_loss']:.4f}, "
              f"{summary['images_per_s']:.1f} img/s, MFU {summary['mfu']:.1%}, {summary['dollars']:.4f} $")


def hydra_arguments(argv: list[str]) -> argparse.Namespace:
    """The flags of Hydra's own command line that decide whether ``cli`` validates first (the
    same flags and short forms as Hydra's; everything else is an override)."""
    parser = argparse.ArgumentParser(add_help=False)
    for flags in (("--help", "-h"), ("--hydra-help",), ("--resolve",), ("--run", "-r"), ("--multirun", "-m"),
                  ("--shell-completion", "-sc"), ("--version",)):
        parser.add_argument(*flags, action="store_true")
    for flags in (("--cfg", "-c"), ("--package", "-p"), ("--config-path", "-cp"), ("--config-name", "-cn"),
                  ("--config-dir", "-cd"), ("--experimental-rerun",)):
        parser.add_argument(*flags)
    parser.add_argument("--info", "-i", nargs="?", const="all")
    parser.add_argument("overrides", nargs="*")
    args, _ = parser.parse_known_args(argv)
    return args


def _launcher_problem(overrides: list[str]) -> str | None:
    """Why the ``hydra/launcher=submitit_*`` among ``overrides`` cannot start here (None: it can, or
    there is none): its plugin (the ``slurm`` extra) cannot be imported (Hydra itself would only list
    the launchers it has), or ``submitit_slurm`` on a machine without SLURM's ``srun`` (submitit's own
    test; it would end in a traceback after the sweep was composed)."""
    for override in overrides:
        key, _, value = override.partition("=")
        if key.lstrip("+~") == "hydra/launcher" and value.startswith("submitit"):
            try:
                import hydra_plugins.hydra_submitit_launcher  # noqa: F401
            except ImportError:
                return (f"hydra/launcher={value} needs the hydra-submitit-launcher plugin, which is not "
                        "installed: pip install 'microdit[slurm]'")
            if value == "submitit_slurm" and shutil.which("srun") is None:
                return ("hydra/launcher=submitit_slurm submits to SLURM, but this machine has no srun on its PATH: "
                        "run the command on the cluster's login node, or use hydra/launcher=submitit_local "
                        "(tasks on this machine) or torchrun")
    return None


def cli() -> None:
    """Console entry point. The config of a single run, or of every point of a ``-m`` sweep, is
    composed and validated first, so a bad override, an unknown experiment or a bad value ends in
    one line (exit code 2) before any job starts or is submitted, also under ``--cfg job`` (where
    Hydra prints the config and exits without a run). A stop (Ctrl-C, SIGTERM) ends in one line too
    (:mod:`microdit.cli.stopping`)."""
    with stopped_in_one_line("microdit-train: stopped; the run's checkpoints and the data built so far are kept: run "
                             "the same command again to continue"):
        _check_command_line(sys.argv[1:])
        main()


def _check_command_line(argv: list[str]) -> None:
    """Compose and validate what ``argv`` asks Hydra to run (SystemExit(2) with one line if it cannot)."""
    args = hydra_arguments(argv)
    problem = _launcher_problem(args.overrides)
    if problem:
        print(f"microdit-train: error: {problem}", file=sys.stderr)
        raise SystemExit(2)
    custom = args.config_path or args.config_name or args.config_dir or args.experimental_rerun  # Hydra checks those
    if not (args.help or args.hydra_help or args.info or args.shell_completion or args.version or custom):
        where = ""
        try:
            points = sweep_points(args.overrides) if args.multirun else [args.overrides]
            for point in points:
                where = f" (sweep point {' '.join(point)})" if args.multirun else ""
                validate_run(compose_config(point))
        except ValueError as err:
            print(f"microdit-train: error{where}: {' '.join(str(err).split())}", file=sys.stderr)
            raise SystemExit(2) from None


if __name__ == "__main__":
    cli()
