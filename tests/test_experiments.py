"""Experiments: `dvc exp run -S` in any float spelling, queued sweeps, comparisons."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from conftest import run


def logged_lr(repo: Path, step: int) -> float:
    with (repo / "reports/train/plots/metrics/lr.tsv").open(newline="") as f:
        rows = {int(r["step"]): float(r["lr"]) for r in csv.DictReader(f, delimiter="\t")}
    return rows[step]


@pytest.fixture(scope="module")
def exp_repo(tmp_path_factory: pytest.TempPathFactory, built: Path) -> Path:
    """A copy of the tiny pipeline's finished run (its cache included), committed."""
    repo = tmp_path_factory.mktemp("exp") / "repo"
    shutil.copytree(built, repo, symlinks=True)
    assert "up to date" in run(["dvc", "status"], repo).stdout
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "baseline"], repo)
    return repo


@pytest.mark.parametrize(("spelling", "seed"), [("3e-4", 11), ("0.0003", 12), ("3.0e-4", 13)])
def test_lr_spellings_train_with_the_same_lr(exp_repo: Path, spelling: str, seed: int) -> None:
    # back to the baseline (lr 3e-3); a distinct seed per spelling, or DVC's run-cache would
    # restore the first run's outputs for the equal value instead of training
    run(["git", "checkout", "--", "."], exp_repo)
    run(["dvc", "checkout", "-q"], exp_repo)
    proc = run(
        ["dvc", "exp", "run", "train", "-S", f"train.lr={spelling}", "-S", f"seed={seed}"], exp_repo
    )
    assert "Running stage 'train'" in proc.stdout
    # a train param never reruns the data stages
    assert "Running stage 'prepare'" not in proc.stdout
    assert "Running stage 'tokenize'" not in proc.stdout
    # warmup_steps=2, log_every=2: the lr logged at step 2 is the peak lr
    assert logged_lr(exp_repo, 2) == pytest.approx(0.0003, rel=1e-12)


def test_queued_sweep_and_comparison(exp_repo: Path) -> None:
    run(["git", "checkout", "--", "."], exp_repo)
    for lr in ("1e-3", "1e-2"):  # up to evaluate, whose metrics are compared
        run(["dvc", "exp", "run", "--queue", "evaluate", "-S", f"train.lr={lr}"], exp_repo)
    run(["dvc", "exp", "run", "--run-all"], exp_repo, timeout=600)
    shown = json.loads(run(["dvc", "exp", "show", "--json"], exp_repo).stdout)
    found = {}
    for commit in shown:
        for exp in commit.get("experiments") or []:
            for rev in exp.get("revs", []):
                data = rev.get("data") or {}
                lr = data.get("params", {}).get("params.yaml", {}).get("data", {})["train"]["lr"]
                metrics = data["metrics"]["reports/evaluate/metrics.json"]["data"]
                found[lr] = (rev.get("name") or rev["rev"], metrics)
    assert {0.001, 0.01} <= set(found), found
    (a, ma), (b, mb) = found[0.001], found[0.01]
    assert ma["test"]["bits_per_byte"] != mb["test"]["bits_per_byte"]
    diff = run(["dvc", "metrics", "diff", a, b], exp_repo).stdout
    assert "test.bits_per_byte" in diff and "test.loss" in diff
