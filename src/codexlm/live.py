"""DVCLive folders that resume without duplicated or missing steps.

dvclive is imported when a folder is opened, not with this module: the throughput bench
imports this module on the GPU image, which has no dvclive, and logs nothing there.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import TYPE_CHECKING

from codexlm.callbacks import Start

if TYPE_CHECKING:
    from dvclive import Live


def truncate_history(log_dir: Path, last_step: int) -> None:
    """Drop rows logged after `last_step` (by a run that crashed after its last checkpoint),
    so the resumed run logs each later step exactly once."""
    metrics = log_dir / "plots" / "metrics"
    if not metrics.is_dir():
        return
    for tsv in metrics.rglob("*.tsv"):
        with tsv.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f, delimiter="\t"))
        if not rows:
            continue
        header, body = rows[0], rows[1:]
        col = header.index("step")
        kept = [r for r in body if r and int(r[col]) <= last_step]
        tmp = tsv.with_name(f".{tsv.name}.tmp")
        with tmp.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, delimiter="\t", lineterminator=os.linesep)
            w.writerows([header, *kept])
        os.replace(tmp, tsv)


def open_live(log_dir: Path, resume_step: int | None) -> Live:
    """A Live for a stage's report folder: fresh when resume_step is None, else continued."""
    from dvclive import Live

    if resume_step is not None:
        truncate_history(log_dir, resume_step)
    # dvc.yaml declares metrics and plots itself; the pipeline, not DVCLive, makes experiments
    return Live(str(log_dir), resume=resume_step is not None, dvcyaml=False, save_dvc_exp=False)


class LiveLogger:
    """The train stage's DVCLive folder, as a training-loop callback (codexlm.callbacks).

    A resumed run continues the folder from the step it resumes at (later rows, logged by a
    run that crashed after its last checkpoint, are dropped first).
    """

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.live: Live | None = None

    def on_start(self, info: Start) -> None:
        self.live = open_live(self.log_dir, info.start if info.resumed else None)
        # what LoRA saves, against full fine-tuning
        self.live.log_metric("params/trainable", info.params_trainable, plot=False)
        self.live.log_metric("params/total", info.params_total, plot=False)
        self.live.log_metric("params/optimizer_state_bytes", info.optimizer_state_bytes, plot=False)

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        assert self.live is not None, "on_start opens the folder"
        self.live.step = step
        for k, v in metrics.items():
            self.live.log_metric(k, v)
        self.live.make_summary()

    def on_validate(self, step: int, loss: float) -> None:
        self.on_log(step, {"val/loss": loss})

    def on_end(self, summary: dict) -> None:
        if self.live is not None:
            self.live.end()
