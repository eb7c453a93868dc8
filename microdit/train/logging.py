"""Logging sinks of a run: JSONL stats, wandb (lazily imported) and the progress bar."""

from __future__ import annotations

import json
from pathlib import Path

from tqdm import tqdm


class StatsFile:
    """Append-only ``stats.jsonl``; on resume, rows past the checkpoint are dropped first."""

    def __init__(self, path: Path, resume_nimg: int | None) -> None:
        self.path = path
        if resume_nimg is not None and path.exists():
            rows = [line for line in path.read_text().splitlines() if line.strip()]
            kept = [r for r in rows if json.loads(r)["nimg"] <= resume_nimg]
            path.write_text("".join(r + "\n" for r in kept))

    def write(self, row: dict) -> None:
        """Append one row."""
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


class WandbSink:
    """wandb run (offline unless configured online); a no-op when disabled."""

    def __init__(self, mode: str, run_dir: Path, name: str, config: dict) -> None:
        self.run = None
        if mode != "disabled":
            import wandb

            self.run = wandb.init(project="microdit", name=name, dir=str(run_dir), mode=mode, config=config,
                                  resume="allow", id=name.replace("/", "-"))

    def log(self, row: dict, step: int) -> None:
        """Log scalars."""
        if self.run is not None:
            self.run.log(row, step=step)

    def log_image(self, key: str, path: Path, step: int) -> None:
        """Log a saved PNG."""
        if self.run is not None:
            import wandb

            self.run.log({key: wandb.Image(str(path))}, step=step)

    def finish(self) -> None:
        """Close the run."""
        if self.run is not None:
            self.run.finish()


def progress_bar(total: int, initial: int, enabled: bool) -> tqdm:
    """A progress bar in images with ETA."""
    return tqdm(total=total, initial=initial, unit="img", unit_scale=True, dynamic_ncols=True, disable=not enabled,
                desc="train")
