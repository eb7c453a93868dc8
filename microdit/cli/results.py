"""``microdit-results``: gather every run under the given folders into results.csv and print /
write markdown tables (mean ± 95% confidence interval over the runs of a group, e.g. seeds) and plots.

    microdit-results runs --out results.csv
    microdit-results runs --group-by trainer.group,stages.pretrain.mask.ratio   # every quality column
    microdit-results runs --group-by trainer.group,stages.pretrain.mask.ratio,model.overrides.mixer_depth \\
        --metrics eval.synthetic-eval.probe_fd,eval.synthetic-eval.probe_acc_mean,cost.flops --markdown table.md
    microdit-results runs --plot stages.pretrain.mask.ratio:eval.synthetic-eval.probe_fd \\
        --plot-group model.overrides.mixer_depth
"""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

from microdit.cli.options import file_or_folder
from microdit.eval.metrics import quality_columns
from microdit.eval.results import collect, contrast_table, markdown_table, plot, write_csv
from microdit.files import WriteError, not_a_folder, write_atomic
from microdit.train.logging import training_plot

# How what microdit-results writes begins (the CSV's header, the table's first row): it replaces its
# own earlier output (a results.csv gathered again), never a file of anything else.
OWN_START = {"--out": "run,run_dir,", "--markdown": "| "}


def _foreign(path: Path, start: str) -> bool:
    """Whether ``path`` is a file that does not begin as microdit-results' own output does."""
    try:
        with open(path, encoding="utf-8") as f:
            return not f.readline().startswith(start)
    except (OSError, UnicodeDecodeError):
        return True


def check_options(args: argparse.Namespace, rows: list[dict]) -> None:
    """Every column an option names exists in some run (ValueError naming the option and the
    closest columns), and every output is a file path that holds nothing but this command's own
    earlier output, before anything is written."""
    columns = {key for row in rows for key in row}
    for spec in args.plot:
        x, colon, y = spec.partition(":")
        if not (colon and x and y):
            raise ValueError(f"--plot {spec!r}: expected X:Y, two columns (e.g. cost.flops:eval.heldout.probe_fd)")
    named = [("--group-by", k) for k in args.group_by.split(",") if k]
    named += [("--metrics", k) for k in args.metrics.split(",") if k]
    named += [("--plot", k) for spec in args.plot for k in spec.split(":", 1)]
    named += [("--plot-group", args.plot_group)] if args.plot_group else []
    for option, key in named:
        if key not in columns:
            close = difflib.get_close_matches(key, sorted(columns), n=3, cutoff=0.5)
            hint = f"closest: {', '.join(close)}" if close else "no close match; the CSV's header lists every column"
            raise ValueError(f"{option}: no run has the column {key!r} ({hint})")
    for option, path in (("--out", args.out), ("--markdown", args.markdown)):
        if path is None:
            continue
        if path.is_dir():
            raise ValueError(f"{option} {path} is a folder; expected a file path")
        if not path.parent.is_dir():
            raise ValueError(f"{option} {path}: folder {path.parent} {not_a_folder(path.parent)}")
        if path.is_file() and _foreign(path, OWN_START[option]):
            raise ValueError(f"{option} {path} exists and is not an output of microdit-results (its first line "
                             f"does not start with {OWN_START[option]!r}): choose another path or delete it")
    dependent = (("--markdown", args.markdown, "--metrics"), ("--contrasts", args.contrasts, "--metrics"),
                 ("--margin", args.margin, "--contrasts"))
    for option, given, needs in dependent:
        if given and not getattr(args, needs[2:]):
            raise ValueError(f"{option} needs {needs} (it would be ignored)")


def results_table(args: argparse.Namespace, rows: list[dict]) -> str | None:
    """The markdown table of ``--metrics`` (with the ``--contrasts``), or None without --metrics."""
    if not args.metrics:
        return None
    group_by, metrics = [k for k in args.group_by.split(",") if k], args.metrics.split(",")
    table = markdown_table(rows, group_by, metrics, pairs=not args.contrasts)
    if args.contrasts:
        try:
            margins = {k: float(v) for k, _, v in (m.partition("=") for m in args.margin)}
            table += "\n\n" + contrast_table(rows, args.contrasts, metrics, margins, arm=group_by[0],
                                              stage=group_by[1] if len(group_by) > 1 else "after")
        except (ValueError, IndexError):
            raise ValueError("--contrasts needs --group-by ARM[,STAGE] and 'A vs B' values of ARM; --margin needs "
                             "METRIC=NUMBER") from None
    return table


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``microdit-results``."""
    parser = argparse.ArgumentParser(prog="microdit-results", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("roots", nargs="+", type=file_or_folder, help="folders searched for run folders")
    parser.add_argument("--out", type=file_or_folder, default=Path("results.csv"),
                        help="CSV of all runs (default: %(default)s); it replaces an earlier output of this command, "
                             "never another file")
    parser.add_argument("--group-by", default="", help="comma-separated config keys, one table line per value "
                        "(default: none, one line)")
    parser.add_argument("--metrics", default="", help="comma-separated columns to aggregate into a table "
                        "(default: none, no table; with --group-by, the runs' quality columns: FID and CLIP score "
                        "where measured, else the probe's)")
    parser.add_argument("--contrasts", action="append", default=[], metavar="'A vs B'",
                        help="a planned contrast between two values of the first --group-by key (repeatable): "
                             "the table then reports these only, paired by seed, instead of every pair")
    parser.add_argument("--margin", action="append", default=[], metavar="METRIC=M",
                        help="equivalence margin of a --metrics column for the contrasts' TOST (repeatable)")
    parser.add_argument("--markdown", type=file_or_folder, help="also write the table here")
    parser.add_argument("--plot", action="append", default=[], help="X:Y columns; repeatable; PNG next to --out")
    parser.add_argument("--plot-group", help="one line per value of this column (default: one line)")
    parser.add_argument("--training-plot", action="store_true",
                        help="also plot loss, lr and grad norm against images of every run (PNG next to --out)")
    args = parser.parse_intermixed_args(argv)  # folders before and after options
    rows = collect(args.roots)
    if not rows:
        roots = ", ".join(f"{r}" + ("" if r.is_dir() else f" ({not_a_folder(r)})") for r in args.roots)
        raise SystemExit(f"microdit-results: error: no run folders (with config.yaml) under {roots}")
    if args.group_by and not args.metrics:
        args.metrics = ",".join(quality_columns(rows))
        if not args.metrics:
            print("microdit-results: no run is evaluated yet (microdit-eval run RUN --dataset ...): no table; "
                  "--metrics names the columns to aggregate", file=sys.stderr)
    try:
        check_options(args, rows)
        table = results_table(args, rows)  # before anything is written: its errors are the options'
    except ValueError as err:
        raise SystemExit(f"microdit-results: error: {err}") from None
    writes = [("--out", args.out, lambda: write_csv(rows, args.out))]
    if args.markdown:
        writes.append(("--markdown", args.markdown, lambda: write_atomic(args.markdown, (table + "\n").encode())))
    for option, path, write in writes:
        try:
            write()
        except WriteError as err:  # a full disk: it names the file
            raise SystemExit(f"microdit-results: error: {option} {err}") from None
        except OSError as err:
            raise SystemExit(f"microdit-results: error: {option} {path} cannot be written: {err.strerror}") from None
    print(f"{len(rows)} runs -> {args.out}")
    if table:
        print(table)
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
