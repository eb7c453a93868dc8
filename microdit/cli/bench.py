"""``microdit-bench``: training-step throughput and MFU, MoE vs one-hot, masking efficiency, reader
and sampler throughput; writes ``bench.json`` and ``bench.md``.

    microdit-bench --quick --out bench/
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from microdit.benchmarks import run_all, summary_markdown


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``microdit-bench``."""
    parser = argparse.ArgumentParser(prog="microdit-bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer configurations (a few minutes on 2 cores)")
    parser.add_argument("--out", type=Path, default=Path("bench"))
    args = parser.parse_args(argv)
    results = run_all(args.quick)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(results, indent=2))
    report = summary_markdown(results)
    (args.out / "bench.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
