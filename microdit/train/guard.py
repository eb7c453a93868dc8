"""The non-finite step guard, kept on the device so that a training step never waits for the host.

A step whose loss or gradient norm is NaN/Inf (on any process) is skipped: the fused AdamW kernel
reads the flag (``found_inf``) and leaves parameters, moments and step counts untouched, and the
EMA blends with weight 0. The counters live in device tensors; the host reads them only at sync
points (logging, checkpoints, stage ends, every ``trainer.sync_every_steps`` steps) and stops the
run when a sync point sees ``max_nonfinite`` skipped steps in a row.
"""

from __future__ import annotations

import signal
from collections.abc import Callable

import torch


class NonFiniteError(RuntimeError):
    """Too many non-finite steps in a row."""


class NonFiniteGuard:
    """Device-side counters of skipped steps: in total, in the current run of skips, and the
    longest run seen since the host last read them (a run going on at that read counts in full)."""

    def __init__(self, device: torch.device) -> None:
        self.total = torch.zeros((), device=device)
        self.consecutive = torch.zeros((), device=device)
        self.longest = torch.zeros((), device=device)

    @torch.no_grad()
    def observe(self, loss: torch.Tensor, grad_norm: torch.Tensor,
                reduce_sum: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """The skip flag of this step (0-dim float, 1 where any process saw a non-finite loss or
        gradient norm), counted; ``reduce_sum`` sums a tensor over processes."""
        bad = (~torch.isfinite(loss) | ~torch.isfinite(grad_norm)).float()
        bad = reduce_sum(bad).clamp(max=1)
        self.total += bad
        self.consecutive = (self.consecutive + 1) * bad
        self.longest = torch.maximum(self.longest, self.consecutive)
        return bad

    def read(self) -> dict:
        """Host copies of the counters (one synchronisation); starts a new ``longest`` window."""
        total, consecutive, longest = torch.stack([self.total, self.consecutive, self.longest]).tolist()
        self.longest.copy_(self.consecutive)
        return {"nonfinite_total": int(total), "consecutive": int(consecutive), "longest": int(longest)}

    def state_dict(self) -> dict:
        """Counters for a checkpoint."""
        total, consecutive = torch.stack([self.total, self.consecutive]).tolist()
        return {"nonfinite_total": int(total), "consecutive": int(consecutive)}

    def load_state_dict(self, state: dict) -> None:
        """Restore counters from :meth:`state_dict`."""
        self.total.fill_(state["nonfinite_total"])
        self.consecutive.fill_(state["consecutive"])
        self.longest.fill_(state["consecutive"])


def guarded_step(optimizer: torch.optim.Optimizer, guard: NonFiniteGuard, loss: torch.Tensor,
                 grad_norm: torch.Tensor, reduce_sum: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Count the step in ``guard`` and apply ``optimizer`` (a fused AdamW, possibly wrapped by
    accelerate) unless it is non-finite, deciding on the device; clears the gradients. Returns
    the skip flag (for the EMA)."""
    skip = guard.observe(loss, grad_norm, reduce_sum)
    getattr(optimizer, "optimizer", optimizer).found_inf = skip  # read by the fused kernel
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return skip


# The exit status of a process stopped by Ctrl-C or SIGTERM: a run's after its checkpoint
# (:class:`DeferredSignals`), a command's outside training (:mod:`microdit.cli.stopping`).
STOP_EXITS = (128 + signal.SIGINT, 128 + signal.SIGTERM)


class DeferredSignals:
    """While entered, SIGTERM and SIGINT are recorded (``received``: the signal number) instead of
    ending the process, so that the loop stops at its next sync point with a checkpoint; the
    earlier handlers come back on exit."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> DeferredSignals:
        def handler(signum, frame):
            self.received = signum

        self._previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._previous.items():
            signal.signal(sig, old)

    def stop_if_received(self, say) -> None:
        """A signal that came after the loop's last sync point (the stage-end checkpoint, the grid)
        was recorded, not acted on: the run is complete, so stop now (exit 128 + the signal) instead
        of letting the process go on as if none came (a job's worker would start its next run)."""
        if self.received is not None:
            say("[train] signal received at the run's end: the run is complete; exiting")
            raise SystemExit(128 + self.received)

