"""``microdit-cpu-ablation``: the main CPU job, the paper's masking question at laptop scale.

The experiments listed in ``conf/main_job.yaml`` (four runs of the ``nano`` preset on the
synthetic captioned dataset, all at the **same compute budget** of protocol ``cpu_ablation``: no
masking, naive masking at 0.75 with no patch-mixer, deferred masking at 0.75, and deferred masking
followed by unmasked fine-tuning) are trained in order and evaluated with the offline probe
metrics on a held-out split (``probe_fd`` lower is better, ``probe_acc`` higher is better; neither
is FID), then a table is printed and written with a plot. Runs that finished earlier are not
trained again; an interrupted one resumes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from microdit.cli.train import CONF_DIR, compose_config
from microdit.data.encode import build_synthetic_dataset
from microdit.eval import EvalSettings, evaluate
from microdit.eval.probe import dataset_probe
from microdit.eval.results import bar_plot, collect, markdown_table, write_csv
from microdit.train.trainer import prepare_synthetic, train

MAIN_JOB = CONF_DIR / "main_job.yaml"


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``microdit-cpu-ablation``."""
    job = yaml.safe_load(MAIN_JOB.read_text())
    parser = argparse.ArgumentParser(prog="microdit-cpu-ablation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/cpu"), help="where the runs and results land")
    parser.add_argument("--data", type=Path, default=Path("data/synthetic"), help="training dataset folder")
    parser.add_argument("--budget-flops", type=float, help="override the shared compute budget of cpu_ablation")
    parser.add_argument("--num-samples", type=int, default=job["eval_samples"], help="generated samples per run")
    parser.add_argument("--probe-steps", type=int, default=job["probe_steps"], help="training steps of the probe")
    parser.add_argument("--override", action="append", default=[],
                        help="extra Hydra override for every run (e.g. sampler.steps=20)")
    args = parser.parse_args(argv)
    overrides = [f"trainer.run_dir={args.out}", f"data.folders=[{args.data}]", *args.override]
    if args.budget_flops:
        overrides.append(f"trainer.budget_flops={args.budget_flops}")
    configs = [compose_config([f"experiment={e}", *overrides]) for e in job["experiments"]]
    first = configs[0]
    print(f"[ablation] data: {args.data} (+ a held-out split), probe, then {len(configs)} runs at "
          f"{first.trainer.budget_flops:.3g} training FLOPs each", file=sys.stderr)
    prepare_synthetic(first)
    eval_set = args.data.with_name(args.data.name + "-eval")
    build_synthetic_dataset(eval_set, job["held_out_samples"], first.data.prepare_size, first.trainer.seed + 1,
                            first.encoder.autoencoder, first.encoder.text_encoder)
    dataset_probe(args.data, steps=args.probe_steps)
    settings = EvalSettings(num_samples=args.num_samples, batch_size=100, probe_steps=args.probe_steps)
    for i, cfg in enumerate(configs, 1):
        run = Path(cfg.trainer.run_dir) / cfg.trainer.name
        print(f"[ablation] run {i}/{len(configs)}: {cfg.trainer.name}", file=sys.stderr)
        if not (run / "summary.json").is_file():
            train(cfg)
        evaluate(run, eval_set, settings, name="heldout")
    order = [cfg.trainer.name for cfg in configs]
    rows = [r for r in collect([args.out]) if r["trainer.name"] in order]
    rows.sort(key=lambda r: order.index(r["trainer.name"]))
    metrics = [f"eval.heldout.{c}" for c in job["columns"]] + ["cost.images", "cost.flops", "cost.seconds"]
    table = markdown_table(rows, ["trainer.name"], metrics, sort=False)
    write_csv(rows, args.out / "results.csv")
    (args.out / "results.md").write_text(table + "\n")
    bar_plot(rows, "trainer.name", ["eval.heldout.probe_fd", "eval.heldout.probe_acc_mean"], args.out / "results.png")
    print(table)
    print(f"\n[ablation] results: {args.out / 'results.csv'}, {args.out / 'results.md'}, "
          f"plot {args.out / 'results.png'}")


if __name__ == "__main__":
    main()
