"""DVCLive folders that resume without duplicated or missing steps.

dvclive is imported when a folder is opened, not with this module: the training loop imports
this module, and must run where dvclive is not installed when nothing is logged (the GPU
benchmark image).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import TYPE_CHECKING

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
