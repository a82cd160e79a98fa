"""Hooks into the training loop: what it reports, and to whom (DVCLive, a progress bar, a
benchmark's timer), without the loop knowing any of them.

A callback is any object with some of these methods; the loop calls the ones it has:

    on_start(info: Start)                          after restoring, before the first step
    on_step_end(step: int)                         after every optimizer step (nothing read
                                                   from the device: no host sync)
    on_log(step: int, metrics: dict[str, float])   every train.log_every steps
    on_validate(step: int, loss: float)            after each validation
    on_checkpoint(step: int, path: Path | None, seconds: float)   after each checkpoint write
    on_end(summary: dict)                          after the final weights are in place
    on_close()                                     always, last (also when training failed)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm


@dataclass(frozen=True)
class Start:
    steps: int  # the run's total
    start: int  # the step it starts from (> 0 when resumed)
    resumed: bool
    params_trainable: int
    params_total: int
    optimizer_state_bytes: int


def emit(callbacks: Iterable[Any], hook: str, *args: Any) -> None:
    for cb in callbacks:
        method = getattr(cb, hook, None)
        if method is not None:
            method(*args)


class ProgressBar:
    """tqdm over optimizer steps, with the last logged loss and throughput."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None

    def on_start(self, info: Start) -> None:
        self.bar = tqdm(total=info.steps, initial=info.start, desc="train", unit="step")

    def on_step_end(self, step: int) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        if self.bar is not None and "train/loss" in metrics:  # not a log of evaluations only
            self.bar.set_postfix(
                loss=f"{metrics['train/loss']:.3f}", tok_s=f"{metrics['tokens_per_s']:.0f}"
            )

    def on_close(self) -> None:
        if self.bar is not None:
            self.bar.close()
