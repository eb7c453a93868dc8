"""``microdit-eval``: measure a run, or build reference statistics.

    microdit-eval run runs/my-run --dataset data/synthetic-eval --num 1000 --metrics probe
    microdit-eval run runs/my-run --dataset data/cc-eval --metrics fid,clip_fid,clip_score,probe --device cuda
    microdit-eval stats data/cc-eval-images --metric fid      # cache FID reference statistics
    torchrun --nproc_per_node 8 -m microdit.cli.eval run ...   # generation split across processes
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from microdit.cli.sampler_options import add_sampler_options, sampler_overrides
from microdit.data import DataError
from microdit.eval.evaluate import METRICS, EvalSettings, evaluate, reference_stats
from microdit.eval.features import CLIP_FID_MODEL, CLIP_SCORE_MODEL, ClipModel, InceptionFeatures


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``microdit-eval``."""
    parser = argparse.ArgumentParser(prog="microdit-eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    p = sub.add_parser("run", help="generate samples and compute metrics into the run's metrics.json")
    p.add_argument("run", type=Path, help="run folder (latest checkpoint) or checkpoint folder")
    p.add_argument("--dataset", type=Path, required=True, help="evaluation latent dataset (held-out split)")
    p.add_argument("--name", help="name of this evaluation (default: the dataset folder's name)")
    p.add_argument("--probe-dataset", type=Path, help="dataset the probe is trained on (default: the run's data)")
    p.add_argument("--num", type=int, default=1000)
    p.add_argument("--metrics", default="probe", help=f"comma-separated from {','.join(METRICS)}")
    add_sampler_options(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--no-ema", action="store_true")
    p.add_argument("--clip-fid-model", default=CLIP_FID_MODEL)
    p.add_argument("--clip-score-model", default=CLIP_SCORE_MODEL)
    p.add_argument("--inception-weights", help="local InceptionV3 weights (default: torch-fidelity downloads them)")
    p.add_argument("--device", default=device)
    p = sub.add_parser("stats", help="cache reference feature statistics of a dataset")
    p.add_argument("dataset", type=Path)
    p.add_argument("--metric", choices=("fid", "clip_fid"), required=True)
    p.add_argument("--num", type=int, default=50000)
    p.add_argument("--clip-fid-model", default=CLIP_FID_MODEL)
    p.add_argument("--inception-weights")
    p.add_argument("--device", default=device)
    args = parser.parse_args(argv)
    try:
        if args.command == "stats":
            extractor = (InceptionFeatures(args.inception_weights, args.device) if args.metric == "fid"
                         else ClipModel(args.clip_fid_model, args.device))
            stats = reference_stats(args.dataset, extractor, args.num, args.device)
            print(f"{args.dataset}: {extractor.name} statistics of {stats.count} images cached")
            return
        settings = EvalSettings(num_samples=args.num, sampler_overrides=sampler_overrides(args), seed=args.seed,
                                batch_size=args.batch_size, use_ema=not args.no_ema,
                                metrics=[m for m in args.metrics.split(",") if m], clip_fid_model=args.clip_fid_model,
                                clip_score_model=args.clip_score_model, inception_weights=args.inception_weights)
        rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        entry = evaluate(args.run, args.dataset, settings, args.name, args.probe_dataset, args.device, rank, world)
    except (DataError, ValueError, FileNotFoundError) as err:
        raise SystemExit(f"microdit-eval: error: {err}") from None
    if entry is not None:
        print(json.dumps(entry["metrics"], indent=2))


if __name__ == "__main__":
    main()
