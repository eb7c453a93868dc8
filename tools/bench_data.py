"""Reader throughput against the rate a CPU-preset training step consumes samples (issue #3).

    tools/env.sh python tools/bench_data.py [--preset micro] [--num 4000] [--json OUT.json]

Builds the synthetic dataset (32 x 32), encodes it with ``pixel:2`` and ``offline:<caption_dim>:32``
in a temporary folder, then times the reader (0 and 2 workers, batch 32) and one training step of
the preset (via tools/bench_core.py) on the same machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from microdit.data import LatentBatches, encode_dataset, make_loader, synthetic_sample, write_image_dataset
from microdit.data.synthetic import SHAPES
from microdit.encoders import load_autoencoder, load_text_encoder
from microdit.models import preset_config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import bench_step  # noqa: E402


def reader_rate(folder: Path, batch: int, workers: int, batches: int = 100) -> float:
    """Samples per second delivered by the reader (after one warm-up batch)."""
    it = iter(make_loader(LatentBatches(folder, batch, caption_dropout=0.1), workers))
    next(it)
    start = time.perf_counter()
    n = sum(len(next(it)["key"]) for _ in range(batches))
    return n / (time.perf_counter() - start)


def main() -> None:
    """Build, encode, time; print and optionally save the figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="micro")
    parser.add_argument("--num", type=int, default=4000)
    parser.add_argument("--json")
    args = parser.parse_args()
    cfg = preset_config(args.preset)
    with tempfile.TemporaryDirectory() as tmp:
        samples = ((f"{i:08d}", (s := synthetic_sample(0, i)).image, s.caption, s.labels) for i in range(args.num))
        write_image_dataset(Path(tmp) / "img", samples, 32, list(SHAPES), "synthetic", shard_size=1000)
        start = time.perf_counter()
        encode_dataset(Path(tmp) / "img", Path(tmp) / "lat", load_autoencoder("pixel:2"),
                       load_text_encoder(f"offline:{cfg.caption_dim}:32"), progress=False)
        encode_rate = args.num / (time.perf_counter() - start)
        rates = {w: reader_rate(Path(tmp) / "lat", 32, w) for w in (0, 2)}
    step = bench_step(args.preset)
    consume = step["batch"] / step["step_s"]
    result = {"preset": args.preset, "encode_samples_per_s": encode_rate, "reader_samples_per_s": rates,
              "step_s": step["step_s"], "step_samples_per_s": consume,
              "reader_over_step": {w: r / consume for w, r in rates.items()}}
    print(f"encode: {encode_rate:.0f} samples/s (pixel:2 + offline:{cfg.caption_dim}:32)")
    for w, r in rates.items():
        print(f"reader, {w} workers: {r:.0f} samples/s = {r / consume:.1f}x what a {args.preset} step consumes "
              f"({consume:.0f} samples/s, {step['step_s'] * 1000:.0f} ms per batch of 32)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
