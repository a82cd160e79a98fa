"""DVCLive folders that resume without duplicated or missing steps."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

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


def restore(saved: Path, log_dir: Path) -> None:
    """Replace log_dir by the copy of the log a checkpoint saved. DVC deletes the stage's
    report folder before it reruns the stage (the folder is a cached output, which the
    run-cache needs), so the history up to the checkpoint comes from the checkpoint."""
    tmp = log_dir.with_name(f".{log_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(saved, tmp)
    shutil.rmtree(log_dir, ignore_errors=True)
    os.replace(tmp, log_dir)


def open_live(log_dir: Path, resume_step: int | None, saved: Path | None = None) -> Live:
    """A Live for a stage's report folder: fresh when resume_step is None, else continued
    from `saved` (the log a checkpoint holds) when given, or from what log_dir holds."""
    if resume_step is not None:
        if saved is not None and saved.is_dir():
            restore(saved, log_dir)
        truncate_history(log_dir, resume_step)
    # dvc.yaml declares metrics and plots itself; the pipeline, not DVCLive, makes experiments
    return Live(str(log_dir), resume=resume_step is not None, dvcyaml=False, save_dvc_exp=False)
