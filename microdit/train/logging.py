"""Logging of a run: the window a log row sums over, JSONL stats and their plot, and wandb
(lazily imported)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from microdit.files import naming_full_disk, write_figure


class LogWindow:
    """Sums over the steps since the last log row: loss and gradient norm stay on the device (no
    host synchronisation per step), counts of steps, images and FLOPs, and the window's start."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        """Start a new window now."""
        self.loss = torch.zeros((), device=self.device)
        self.grad = torch.zeros((), device=self.device)
        self.steps, self.images, self.flops, self.start = 0, 0, 0.0, time.perf_counter()

    def add(self, loss: torch.Tensor, grad_norm: torch.Tensor, images: int, flops: float) -> None:
        """Count one optimizer step."""
        self.loss += loss
        self.grad += grad_norm
        self.steps, self.images, self.flops = self.steps + 1, self.images + images, self.flops + flops


class StatsFile:
    """Append-only ``stats.jsonl``. A run that starts at ``start_nimg`` (its checkpoint's, or 0
    when it starts afresh, e.g. after a kill before the first checkpoint) first drops the rows
    written past that point and any line cut short by a kill, so a resumed run has each row once."""

    def __init__(self, path: Path, start_nimg: int) -> None:
        self.path = path
        if path.exists():
            kept = []
            for line in path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a kill
                if row["nimg"] <= start_nimg:
                    kept.append(line)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text("".join(r + "\n" for r in kept))
            tmp.replace(path)

    def write(self, row: dict) -> None:
        """Append one row (a full disk: :class:`microdit.files.WriteError`; a row cut short is dropped
        when the run resumes)."""
        with naming_full_disk(self.path, _STOPPED), open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


_STOPPED = "the run stopped: free space and run the same command again (it continues from its last checkpoint)"


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


def training_plot(run_dirs: list[str | Path], path: str | Path) -> Path:
    """Save a PNG of loss, learning rate and gradient norm against images seen, from the
    ``stats.jsonl`` of each run (one line per run; a run without rows is skipped)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    for run in map(Path, run_dirs):
        stats = run / "stats.jsonl"
        rows = [json.loads(line) for line in stats.read_text().splitlines() if line.strip()] if stats.is_file() else []
        for ax, key in zip(axes, ("loss", "lr", "grad_norm"), strict=True):
            points = [(r["nimg"], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and r[key] == r[key]]
            if points:
                ax.plot(*zip(*points, strict=True), label=run.name, linewidth=1)
    for ax, key in zip(axes, ("loss", "lr", "grad_norm"), strict=True):
        ax.set_xlabel("images seen")
        ax.set_title(key, fontsize=9)
        ax.grid(alpha=0.3)
    if len(run_dirs) > 1:
        axes[0].legend(fontsize=6)
    fig.tight_layout()
    write_figure(Path(path), fig)
    plt.close(fig)
    return Path(path)
