"""``microdit-eval``: measure a run, or build reference statistics.

    microdit-eval run runs/my-run --dataset held-out --num-samples 300   # synthetic data: its held-out split
    microdit-eval run runs/my-run --dataset data/cc-eval --metrics fid,clip_fid,clip_score,probe --device cuda
    microdit-eval stats data/cc-eval-images --metrics fid,clip_fid   # cache reference statistics
    microdit-eval coco runs/xl-final --coco data/coco2014 --device cuda   # COCO-30K FID and CLIP score (Table 3)
    torchrun --nproc_per_node 8 -m microdit.cli.eval run ...   # generation split over the processes
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from microdit.cli.options import add_sampler_options, file_or_folder, positive_int, sampler_overrides
from microdit.cli.stopping import stopped_in_one_line
from microdit.data import DataError, load_manifest
from microdit.eval import coco
from microdit.eval.evaluate import EvalSettings, evaluate
from microdit.eval.features import CLIP_FID_MODEL, CLIP_SCORE_MODEL
from microdit.eval.metrics import EXTRACTORS, METRICS, check_names, reference_stats, stats_metrics
from microdit.files import WriteError
from microdit.host_memory import keep_freed_memory
from microdit.launch import adopt_launcher_env, local_device
from microdit.run import HELD_OUT, HELD_OUT_SAMPLES, CheckpointError, held_out_split


def _generation_options(p: argparse.ArgumentParser, device: str) -> None:
    """The options of an evaluation that generates: sampler, noise seed, batch, weights, the feature
    networks, device."""
    add_sampler_options(p)
    p.add_argument("--seed", type=int, default=0, help="sample i uses seed + i (default: %(default)s)")
    p.add_argument("--batch-size", type=positive_int, default=64,
                   help="samples per generation batch (default: %(default)s)")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights, not the EMA")
    p.add_argument("--clip-fid-model", default=CLIP_FID_MODEL,
                   help="open_clip model of clip_fid (default: %(default)s)")
    p.add_argument("--clip-score-model", default=CLIP_SCORE_MODEL,
                   help="open_clip model of clip_score (default: %(default)s)")
    p.add_argument("--inception-weights", help="local InceptionV3 weights (default: torch-fidelity downloads them)")
    p.add_argument("--device", default=device, help="device (default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``microdit-eval`` (sub-commands ``run``, ``coco`` and ``stats``)."""
    parser = argparse.ArgumentParser(prog="microdit-eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    p = sub.add_parser("run", help="generate samples and compute metrics into the run's metrics.json")
    p.add_argument("run", type=file_or_folder, help="run folder (latest checkpoint) or checkpoint folder")
    p.add_argument("--dataset", required=True,
                   help=f"evaluation latent dataset (held-out split); '{HELD_OUT}': the held-out split of the run's "
                        f"synthetic training data (FOLDER-eval, {HELD_OUT_SAMPLES} images drawn with the next seed, "
                        "built where missing: what the CPU jobs evaluate on; a folder of that name: ./held-out)")
    p.add_argument("--name", help="name of this evaluation (default: the dataset folder's name)")
    p.add_argument("--probe-dataset", type=file_or_folder, help="dataset the probe is trained on (default: the run's "
                   "data)")
    p.add_argument("--probe-steps", type=positive_int, default=EvalSettings.probe_steps,
                   help="training steps of the probe (cached per dataset and length; probe metrics compare only "
                        "under one probe: microdit-cpu-ablation uses its job's probe_steps; default: %(default)s)")
    p.add_argument("--num-samples", type=positive_int, default=1000,
                   help="samples to generate (the first N prompts of the dataset; default: %(default)s)")
    p.add_argument("--metrics", default="probe",
                   help=f"comma-separated, from {','.join(METRICS)} (default: %(default)s)")
    p.add_argument("--prompt-seed", type=int, default=0,
                   help="the order the evaluation set's prompts are drawn in (default: %(default)s)")
    _generation_options(p, device)
    p = sub.add_parser("coco", help="COCO-30K: FID and CLIP score on 30k COCO 2014 validation captions, as the "
                       "paper's Table 3 (microdit.eval.coco)")
    p.add_argument("run", type=file_or_folder, help="run folder (latest checkpoint), checkpoint folder or converted "
                   "checkpoint")
    p.add_argument("--coco", type=file_or_folder, required=True, help="prepared COCO 2014 validation images "
                   "(microdit-data prepare coco2014 DIR)")
    p.add_argument("--captions", type=positive_int, default=coco.CAPTIONS,
                   help="captions drawn, one per image (default: %(default)s)")
    p.add_argument("--coco-seed", type=int, default=coco.SEED, help="seed of that draw (default: %(default)s)")
    p.add_argument("--resolution", type=positive_int, help="pixels (default: the model's own resolution)")
    p.add_argument("--name", default="coco30k", help="name of this evaluation (default: %(default)s)")
    p.add_argument("--metrics", default="fid,clip_score", help="comma-separated (default: %(default)s)")
    _generation_options(p, device)
    p = sub.add_parser("stats", help="cache reference feature statistics of a dataset")
    p.add_argument("dataset", type=file_or_folder, help="image or latent dataset folder")
    p.add_argument("--metrics", required=True, help=f"comma-separated, from {','.join(stats_metrics())}")
    p.add_argument("--num-samples", type=positive_int, default=50000,
                   help="images to use at most (default: %(default)s)")
    p.add_argument("--clip-fid-model", default=CLIP_FID_MODEL,
                   help="open_clip model of clip_fid (default: %(default)s)")
    p.add_argument("--inception-weights", help="local InceptionV3 weights (default: torch-fidelity downloads them)")
    p.add_argument("--device", default=device, help="device (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``microdit-eval``."""
    args = build_parser().parse_args(argv)
    with stopped_in_one_line("microdit-eval: stopped; the samples generated and statistics computed so far are "
                             "cached: run the same command again to continue"):
        entry = _evaluate(args)
    if entry is not None:
        print(json.dumps(entry["metrics"], indent=2))
        if "probe_fd" in entry["metrics"] and "probe_fd_real" not in entry["metrics"]:
            print(f"microdit-eval: no real-vs-real floor (probe_fd_real, probe_kid_real) to read probe_fd against: "
                  f"{entry['eval_dataset']} holds fewer than 2 x {entry['num_samples']} images (the prompts' and as "
                  "many others); evaluate fewer samples (--num-samples) to measure it", file=sys.stderr)


def _evaluate(args: argparse.Namespace) -> dict | None:
    """Run ``microdit-eval``'s command (None: ``stats``, which prints its own lines)."""
    try:
        metrics = check_names([m for m in args.metrics.split(",") if m],
                              stats_metrics() if args.command == "stats" else list(METRICS), "--metrics: ")
        if args.command == "stats":
            load_manifest(args.dataset)  # a dataset that is not one is named before any weights are fetched
            device = local_device(args.device)
            for metric in metrics:
                extractor = EXTRACTORS[METRICS[metric].features](args, device)
                stats = reference_stats(args.dataset, extractor, args.num_samples, device)
                print(f"{args.dataset}: {extractor.name} statistics of {stats.count} images cached")
            return None
        settings = EvalSettings(num_samples=getattr(args, "num_samples", coco.CAPTIONS),
                                sampler_overrides=sampler_overrides(args), seed=args.seed,
                                prompt_seed=getattr(args, "prompt_seed", 0), batch_size=args.batch_size,
                                use_ema=not args.no_ema, metrics=metrics, clip_fid_model=args.clip_fid_model,
                                clip_score_model=args.clip_score_model, inception_weights=args.inception_weights,
                                probe_steps=getattr(args, "probe_steps", EvalSettings.probe_steps))
        info = adopt_launcher_env()  # torchrun, accelerate, submitit or srun: rank r generates chunks r, r + world, ...
        device = local_device(args.device, info)
        keep_freed_memory(device)  # on CPU each batch reuses the last one's pages (microdit.host_memory)
        if args.command == "coco":
            entry = coco.evaluate_coco(args.run, args.coco, settings, args.captions, args.coco_seed, args.resolution,
                                       args.name, device, info.rank, info.world_size)
        else:
            dataset = held_out_split(args.run) if args.dataset == HELD_OUT else Path(args.dataset)
            entry = evaluate(args.run, dataset, settings, args.name, args.probe_dataset, device, info.rank,
                             info.world_size)
    except (DataError, ValueError, FileNotFoundError, PermissionError, CheckpointError, WriteError) as err:
        raise SystemExit(f"microdit-eval: error: {err}") from None
    return entry


if __name__ == "__main__":
    main()
