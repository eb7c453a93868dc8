"""``microdit-results``: gather every run under the given folders into results.csv and print /
write markdown tables (mean ± std over the runs of a group, e.g. seeds) and plots.

    microdit-results runs --out results.csv
    microdit-results runs --group-by trainer.group,stages.pretrain.mask.ratio,model.overrides.mixer_depth \\
        --metrics eval.synthetic-eval.probe_fd,eval.synthetic-eval.probe_acc_mean,cost.flops --markdown table.md
    microdit-results runs --plot stages.pretrain.mask.ratio:eval.synthetic-eval.probe_fd \
        --plot-group model.overrides.mixer_depth
"""

from __future__ import annotations

import argparse
from pathlib import Path

from microdit.eval.results import collect, markdown_table, plot, write_csv
from microdit.train.logging import training_plot


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``microdit-results``."""
    parser = argparse.ArgumentParser(prog="microdit-results", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("roots", nargs="+", type=Path, help="folders searched for run folders")
    parser.add_argument("--out", type=Path, default=Path("results.csv"), help="CSV of all runs (default: %(default)s)")
    parser.add_argument("--group-by", default="", help="comma-separated config keys, one table line per value "
                        "(default: none, one line)")
    parser.add_argument("--metrics", default="", help="comma-separated columns to aggregate into a table "
                        "(default: none, no table)")
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    parser.add_argument("--plot", action="append", default=[], help="X:Y columns; repeatable; PNG next to --out")
    parser.add_argument("--plot-group", help="one line per value of this column (default: one line)")
    parser.add_argument("--training-plot", action="store_true",
                        help="also plot loss, lr and grad norm against images of every run (PNG next to --out)")
    args = parser.parse_args(argv)
    rows = collect(args.roots)
    if not rows:
        raise SystemExit(f"microdit-results: error: no run folders (with config.yaml) under {args.roots}")
    write_csv(rows, args.out)
    print(f"{len(rows)} runs -> {args.out}")
    if args.metrics:
        table = markdown_table(rows, [k for k in args.group_by.split(",") if k], args.metrics.split(","))
        print(table)
        if args.markdown:
            args.markdown.write_text(table + "\n")
    if args.training_plot:
        curves = training_plot([r["run_dir"] for r in rows], args.out.with_name(args.out.stem + "-training.png"))
        print(f"training curves: {curves}")
    for spec in args.plot:
        x, _, y = spec.partition(":")
        path = args.out.with_name(f"{args.out.stem}-{y.replace('.', '_')}-vs-{x.replace('.', '_')}.png")
        plot(rows, x, y, path, args.plot_group)
        print(f"plot: {path}")


if __name__ == "__main__":
    main()
