"""The train stage killed for real: SIGKILL at any point costs at most the steps since the
last checkpoint; SIGTERM checkpoints the current step and exits non-zero."""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import VENV_BIN, run
from test_checkpoint import history

STEPS = 24


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def copy_with_steps(built: Path, dst: Path) -> Path:
    shutil.copytree(
        built, dst, ignore=shutil.ignore_patterns("checkpoints", "reports", "cache", "tmp")
    )
    p = yaml.safe_load((dst / "params.yaml").read_text())
    p["train"].update(steps=STEPS, checkpoint_every=4, eval_every=4, log_every=1)
    (dst / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    return dst


def start_train(repo: Path) -> subprocess.Popen:
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.Popen(
        [sys.executable, "stages/train_stage.py"],
        cwd=repo,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"train ended before {path} appeared: {proc.communicate()}"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.01)


def steps_logged(repo: Path) -> list[int]:
    with (repo / "reports/train/plots/metrics/train/loss.tsv").open(newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f, delimiter="\t")]


@pytest.fixture(scope="module")
def reference(built: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = copy_with_steps(built, tmp_path_factory.mktemp("ref") / "repo")
    run(["python", "stages/train_stage.py"], repo)
    return repo


# (a kill in the middle of a checkpoint write is tested in test_checkpoint.py, where the
# write can be stopped at an exact point; here the write of a tiny model is too quick to hit)
@pytest.mark.parametrize("when", ["before-first-checkpoint", "after-checkpoint-8"])
def test_sigkill_then_dvc_repro_resumes_exactly(built, reference, tmp_path, when) -> None:
    repo = copy_with_steps(built, tmp_path / "repo")
    proc = start_train(repo)
    ckpts = repo / "models/checkpoints"
    if when == "before-first-checkpoint":
        wait_for(repo / "reports/train/plots/metrics/train/loss.tsv", proc)
    else:
        wait_for(ckpts / "step-00000008", proc)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "killed while still training, not finished"
    resumable = sorted(p.name for p in ckpts.glob("step-*"))
    out = run(["dvc", "repro", "train"], repo).stdout
    if resumable:
        assert f"resuming from models/checkpoints/{resumable[-1]}" in out
    else:
        assert "starting from step 0" in out
    assert sha(repo / "models/trained/model.safetensors") == sha(
        reference / "models/trained/model.safetensors"
    )
    assert steps_logged(repo) == list(range(1, STEPS + 1))


def test_sigterm_checkpoints_and_exits_nonzero(built, reference, tmp_path) -> None:
    repo = copy_with_steps(built, tmp_path / "repo")
    proc = start_train(repo)
    wait_for(repo / "models/checkpoints/step-00000004", proc)
    proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    _, err = proc.communicate(timeout=120)
    assert time.monotonic() - signalled < 60, "within train.max_stop_seconds (60)"
    assert proc.returncode == 128 + signal.SIGTERM, err
    steps = sorted(int(p.name.split("-")[1]) for p in (repo / "models/checkpoints").glob("step-*"))
    last = steps_logged(repo)[-1]
    assert steps[-1] == last, "the step it stopped at was checkpointed"
    assert (
        f"train: stopped by SIGTERM after step {last}; checkpoint "
        f"models/checkpoints/step-{last:08d} written: a rerun (`dvc repro`) resumes from it"
    ) in err
    out = run(["python", "stages/train_stage.py"], repo).stdout
    assert f"resuming from models/checkpoints/step-{last:08d}" in out
    assert sha(repo / "models/trained/model.safetensors") == sha(
        reference / "models/trained/model.safetensors"
    )
    # the DVCLive history, value for value (wall-clock throughput and system use aside)
    assert history(repo / "reports/train") == history(reference / "reports/train")
