"""DDP on CPU (gloo): 2 processes with half the batch each follow the 1-process run."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import run

pytestmark = pytest.mark.slow


def history(repo: Path, name: str) -> dict[int, float]:
    with (repo / "reports/train/plots/metrics" / f"{name}.tsv").open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    col = name.rsplit("/", 1)[-1]
    return {int(r["step"]): float(r[col]) for r in rows}


def test_two_processes_match_one(built: Path, tmp_path: Path) -> None:
    repo = tmp_path / "ddp"
    shutil.copytree(
        built, repo, ignore=shutil.ignore_patterns("checkpoints", "reports", "cache", "tmp")
    )
    p = yaml.safe_load((repo / "params.yaml").read_text())
    assert p["train"]["nproc"] == 1 and p["train"]["grad_accum"] == 1
    # the same global batch (batch_size x grad_accum x nproc), split over two processes
    p["train"].update(nproc=2, batch_size=p["train"]["batch_size"] // 2)
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    proc = run(["python", "stages/train.py"], repo)
    assert "starting from step 0" in proc.stdout

    for name in ("train/loss", "val/loss", "grad_norm"):
        one, two = history(built, name), history(repo, name)
        assert one.keys() == two.keys(), name
        for step in one:
            assert two[step] == pytest.approx(one[step], rel=1e-4, abs=1e-5), (name, step)
