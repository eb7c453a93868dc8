"""``microdit-plan``: what a run or a sweep will cost, before it is launched. Per run and in total:
each stage's images, steps and training FLOPs (ours and the paper's accounting), GPU-hours and
dollars at a stated MFU and price (:mod:`microdit.perf.cost_plan`). Nothing is trained.

    microdit-plan experiment=paper_recipe
    microdit-plan -m experiment=fig6_naive,fig6_maskdit,fig6_deferred --mfu 0.3 --price 2.5
    microdit-plan --json -m experiment=fig4_mask_ratio > fig4-plan.json

The overrides and sweeps are microdit-train's: ``-m`` crosses the command line's sweeps with each
experiment's own ``hydra.sweeper.params``, and every point is composed and validated. (Hydra's
launcher applies an experiment's own sweep only when the experiment is not itself swept: to run
the points planned for ``-m experiment=a,b``, launch ``-m experiment=a`` and ``-m experiment=b``.)
"""

from __future__ import annotations

import argparse
import json

from microdit.cli.options import positive_float, positive_int
from microdit.experiment import sweep_points
from microdit.perf.cost_plan import PAPER_MFU, PRICE, cost_plan, cost_plan_markdown


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``microdit-plan``."""
    parser = argparse.ArgumentParser(prog="microdit-plan", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print the plan as JSON instead of a table")
    parser.add_argument("--mfu", type=positive_float, default=PAPER_MFU,
                        help="model FLOPs utilisation the GPU-hours assume (default: %(default)s, the paper's)")
    parser.add_argument("--price", type=positive_float, default=PRICE,
                        help="dollars per GPU-hour (default: %(default)s, the paper's)")
    parser.add_argument("--caption-len", type=positive_int,
                        help="caption tokens per image (default: the run's text encoder's)")
    parser.add_argument("-m", "--multirun", action="store_true", help="plan every point of the sweep")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="microdit-train overrides")
    args = parser.parse_intermixed_args(argv)  # KEY=VALUE arguments before and after options
    if args.mfu > 1:
        parser.error(f"argument --mfu: expected a fraction in (0, 1], got {args.mfu}")
    try:
        points = sweep_points(args.overrides) if args.multirun else [args.overrides]
        plan = cost_plan(points, args.mfu, args.price, caption_len=args.caption_len)
    except ValueError as err:
        raise SystemExit(f"microdit-plan: error: {' '.join(str(err).split())}") from None
    print(json.dumps(plan, indent=2) if args.json else cost_plan_markdown(plan))


if __name__ == "__main__":
    main()
