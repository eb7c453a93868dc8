"""``microdit-cpu-ablation``: the main CPU job — the paper's masking question at laptop scale.

Four runs of the ``nano`` preset on the synthetic captioned dataset, all at the **same compute
budget** (``conf/experiment/cpu_masking_*.yaml``): no masking, naive masking at 0.75 (no
patch-mixer), deferred masking at 0.75, and deferred masking followed by unmasked fine-tuning.
Each is evaluated with the offline probe metrics on a held-out split (``probe_fd`` lower is better,
``probe_acc`` higher is better; neither is FID), then a table is printed and written with a plot.
Runs that finished earlier are not trained again; an interrupted one resumes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from microdit.cli.train import compose_config
from microdit.data.encode import build_synthetic_dataset
from microdit.eval import EvalSettings, evaluate
from microdit.eval.probe import dataset_probe
from microdit.eval.results import bar_plot, collect, markdown_table, write_csv
from microdit.train.trainer import prepare_synthetic, train

EXPERIMENTS = ("cpu_masking_none", "cpu_masking_naive75", "cpu_masking_deferred75", "cpu_masking_deferred75_ft")
COLUMNS = ("probe_fd", "probe_acc_mean", "probe_acc.colour", "probe_acc.position", "probe_acc.shape",
           "probe_acc.count")


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``microdit-cpu-ablation``."""
    parser = argparse.ArgumentParser(prog="microdit-cpu-ablation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/cpu"), help="where the runs and results land")
    parser.add_argument("--data", type=Path, default=Path("data/synthetic"))
    parser.add_argument("--budget-flops", type=float, help="override the shared compute budget of cpu_base")
    parser.add_argument("--eval-samples", type=int, default=300)
    parser.add_argument("--eval-steps", type=int, default=12)
    parser.add_argument("--cfg-scale", type=float, default=2.0)
    parser.add_argument("--probe-steps", type=int, default=1000)
    parser.add_argument("--override", action="append", default=[], help="extra Hydra override for every run")
    args = parser.parse_args(argv)
    overrides = [f"trainer.run_dir={args.out}", f"data.folders=[{args.data}]", *args.override]
    if args.budget_flops:
        overrides.append(f"trainer.budget_flops={args.budget_flops}")
    configs = [compose_config([f"experiment={e}", *overrides]) for e in EXPERIMENTS]
    first = configs[0]
    print(f"[ablation] data: {args.data} (+ a held-out split), probe, then {len(configs)} runs at "
          f"{first.trainer.budget_flops:.3g} training FLOPs each", file=sys.stderr)
    prepare_synthetic(first)
    eval_set = args.data.with_name(args.data.name + "-eval")
    build_synthetic_dataset(eval_set, 1000, first.data.prepare_size, first.trainer.seed + 1,
                            first.encoder.autoencoder, first.encoder.text_encoder)
    dataset_probe(args.data, steps=args.probe_steps)
    settings = EvalSettings(num_samples=args.eval_samples, steps=args.eval_steps, cfg_scale=args.cfg_scale,
                            batch_size=100, probe_steps=args.probe_steps)
    for i, cfg in enumerate(configs, 1):
        run = Path(cfg.trainer.run_dir) / cfg.trainer.name
        print(f"[ablation] run {i}/{len(configs)}: {cfg.trainer.name}", file=sys.stderr)
        if not (run / "summary.json").is_file():
            train(cfg)
        evaluate(run, eval_set, settings, name="heldout")
    names = {cfg.trainer.name for cfg in configs}
    rows = [r for r in collect([args.out]) if r["trainer.name"] in names]
    rows.sort(key=lambda r: [cfg.trainer.name for cfg in configs].index(r["trainer.name"]))
    metrics = [f"eval.heldout.{c}" for c in COLUMNS] + ["cost.images", "cost.flops", "cost.seconds"]
    table = markdown_table(rows, ["trainer.name"], metrics, sort=False)
    write_csv(rows, args.out / "results.csv")
    (args.out / "results.md").write_text(table + "\n")
    bar_plot(rows, "trainer.name", ["eval.heldout.probe_fd", "eval.heldout.probe_acc_mean"], args.out / "results.png")
    print(table)
    print(f"\n[ablation] results: {args.out / 'results.csv'}, {args.out / 'results.md'}, "
          f"plot {args.out / 'results.png'}")


if __name__ == "__main__":
    main()
