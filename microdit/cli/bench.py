"""``microdit-bench``: training-step throughput and MFU (eager and compiled), the eight CPU cases
against their kernel-sum bounds, attention backends,
MoE vs one-hot, masking efficiency, reader and sampler throughput; writes ``bench.json`` and
``bench.md``.

    microdit-bench --quick --out bench/              # this machine's CPU (nano, micro)
    microdit-bench --device cuda --out bench-h100/   # a GPU (MicroDiT_Tiny_2, MicroDiT_XL_2, bf16)
    microdit-bench --gpu-plan experiment=paper_recipe --out plan/   # expected cost on 8 x H100 (no GPU needed)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from microdit.cli.options import file_or_folder
from microdit.cli.stopping import stopped_in_one_line
from microdit.experiment import compose_config
from microdit.files import WriteError, unwritable, write_atomic
from microdit.perf.benchmarks import run_all, summary_markdown
from microdit.perf.gpu_plan import gpu_plan, gpu_plan_markdown
from microdit.train.config import validate


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``microdit-bench``."""
    parser = argparse.ArgumentParser(prog="microdit-bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer configurations (a few minutes on 2 cores)")
    parser.add_argument("--out", type=file_or_folder, default=Path("bench"), help="output folder (default: "
                        "%(default)s); one that holds an earlier measurement is refused")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="device to measure (default: %(default)s)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile row (compiling takes ~1 min)")
    parser.add_argument("--gpu-plan", nargs="*", metavar="OVERRIDE",
                        help="instead of measuring: the roofline estimate of a training config's stages on 8 x H100 "
                             "(Hydra overrides, e.g. experiment=paper_recipe)")
    args = parser.parse_args(argv)
    if problem := unwritable(args.out):  # before the minutes of measuring
        parser.error(f"--out {args.out} {problem}")
    name = "bench" if args.gpu_plan is None else "gpu_plan"
    outputs = [f"{name}.json", f"{name}.md"] + (["bench.partial.json"] if name == "bench" else [])
    if held := [f for f in outputs if (args.out / f).exists()]:  # an earlier measurement is never replaced
        parser.error(f"--out {args.out} already holds {', '.join(held)}: choose another folder or delete them")
    if args.gpu_plan is not None:
        try:
            cfg = compose_config(args.gpu_plan)
            validate(cfg, world_size=8)
        except ValueError as err:
            parser.error(f"--gpu-plan {' '.join(args.gpu_plan)}: {' '.join(str(err).split())}")
    elif args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible to torch")
    args.out.mkdir(parents=True, exist_ok=True)  # once the arguments are known good: a refused command leaves none
    if args.gpu_plan is not None:
        results = gpu_plan(cfg)
        report = gpu_plan_markdown(results)
    else:
        results = {}
        with stopped_in_one_line("microdit-bench: stopped"):
            try:
                run_all(args.quick, args.device, compile=not args.no_compile, results=results)
            except BaseException:  # keep what was measured (a GPU's minutes are dear), then fail or stop as before
                partial = args.out / "bench.partial.json"
                partial.write_text(json.dumps(results, indent=2))
                print(f"microdit-bench: the sections measured before it ended are in {partial}", file=sys.stderr)
                raise
        report = summary_markdown(results)
    print(report)  # first: a disk that refuses the files does not take the measurement with it
    try:
        for file, text in ((f"{name}.json", json.dumps(results, indent=2)), (f"{name}.md", report)):
            write_atomic(args.out / file, text.encode())
    except WriteError as err:
        raise SystemExit(f"microdit-bench: error: {err} (the report is printed above)") from None


if __name__ == "__main__":
    main()
