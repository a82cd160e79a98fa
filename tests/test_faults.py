"""Machine faults: a full disk, exhausted memory, a read-only or vanished folder, a signal.
Each is one line and exit 2 (a signal: 128 + its number), nothing half written is trusted,
and the next run resumes exactly. Real mechanisms where the machine allows them: a small
tmpfs for a full disk, a read-only bind mount (root ignores chmod), RLIMIT_AS in a child for
memory, a real SIGTERM."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import train_args
from test_checkpoint import TRAIN, assert_identical, reference, run_train, tokens, weights

from codexlm import corpus
from codexlm.checkpoint import files as checkpoint_files
from codexlm.checkpoint import policy as checkpoint_policy
from codexlm.errors import MachineFault

ROOT = Path(__file__).resolve().parents[1]
__all__ = ["reference", "tokens"]  # fixtures, imported for pytest


def can_mount() -> bool:
    probe = Path(f"/tmp/codexlm-mount-probe-{os.getpid()}")
    probe.mkdir(exist_ok=True)
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)]).returncode
    if ok == 0:
        subprocess.run(["umount", str(probe)], check=True)
    probe.rmdir()
    return ok == 0


needs_mount = pytest.mark.skipif(
    sys.platform != "linux" or os.geteuid() != 0 or not can_mount(),
    reason="needs root and mount (a tmpfs, a read-only bind mount)",
)


@pytest.fixture
def small_fs(tmp_path: Path):
    """A 2 MiB tmpfs: room for a few tiny checkpoints, then a real ENOSPC."""
    mnt = tmp_path / "ckpt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=True)


class FillAfter:
    """After checkpoint `step`, fill the filesystem to `leave` free bytes (another process
    writing there), so that the next checkpoint does not fit."""

    def __init__(self, root: Path, step: int, leave: int) -> None:
        self.root, self.step, self.leave = root, step, leave

    def on_checkpoint(self, step: int, path: Path, seconds: float) -> None:
        if step == self.step:
            free = shutil.disk_usage(self.root).free
            (self.root / "filler").write_bytes(b"\0" * max(free - self.leave, 0))


@needs_mount
@pytest.mark.parametrize("when", ["mid-write", "before-write"])
def test_full_disk_is_one_line_and_the_rerun_resumes_exactly(
    small_fs, tmp_path, tokens, reference, monkeypatch, when
) -> None:
    root = small_fs
    if when == "mid-write":  # the disk fills under the write: the check before it passes
        monkeypatch.setattr(checkpoint_files, "free_bytes", lambda path: 1 << 40)
    import codexlm.train as train_mod

    real_train = train_mod.train

    def with_filler(model, tr, va, cfg, run, callbacks=()):
        return real_train(model, tr, va, cfg, run, [*callbacks, FillAfter(root, 4, 20_000)])

    monkeypatch.setattr(train_mod, "train", with_filler)
    with pytest.raises(MachineFault) as e:
        run_train(tmp_path, tokens)
    monkeypatch.undo()
    line = str(e.value)
    assert "\n" not in line
    assert f"no space left in {root} for the checkpoint of step 6: it needs " in line
    assert "a rerun resumes from step-00000004" in line
    needed = int(line.split("it needs ")[1].split(" bytes")[0].replace(",", ""))
    assert needed > 20_000  # the real size: a checkpoint of the tiny model
    assert checkpoint_files.interrupted_writes(root) == [], "a failed write is removed"
    (root / "filler").unlink()  # space freed: the rerun resumes from step 4, bit-identical
    model, _ = run_train(tmp_path, tokens)
    assert_identical(weights(model), reference)


@needs_mount
def test_space_is_planned_at_start(small_fs) -> None:
    policy = checkpoint_policy.Policy(small_fs, {}, 2, None, 2, "auto", "last")
    free = shutil.disk_usage(small_fs).free
    assert checkpoint_policy.plan_space(policy, free // 4) is None  # 3 fit
    warning = checkpoint_policy.plan_space(policy, free // 2)
    assert f"{small_fs} has room for 2 checkpoints" in warning
    assert "train.keep_checkpoints + 1 = 3" in warning
    with pytest.raises(MachineFault, match=rf"no space left in {small_fs} for one checkpoint"):
        checkpoint_policy.plan_space(policy, free + 1)


def test_checkpoint_every_takes_steps_or_a_time_interval(tmp_path, tokens, reference) -> None:
    assert train_args(checkpoint_every="30m").checkpoint_every == "30m"
    for bad in [0, "30x", "0s", True]:
        with pytest.raises(ValueError, match=r"train\.checkpoint_every: a number of steps"):
            train_args(checkpoint_every=bad)
    timed = checkpoint_policy.Policy(tmp_path, {}, None, 60.0, 2, "auto", "last")
    assert not checkpoint_policy.scheduled(timed, 3, 8, 59.0)
    assert checkpoint_policy.scheduled(timed, 3, 8, 60.0)
    assert checkpoint_policy.scheduled(timed, 8, 8, 0.0)  # the last step, always
    # a checkpoint after every step by the clock: other checkpoints, the same weights
    model, _ = run_train(tmp_path, tokens, checkpoint_every="0.001s", keep_checkpoints=8)
    assert_identical(weights(model), reference)
    names = [p.name for p in checkpoint_files.complete(tmp_path / "ckpt")]
    assert len(names) == TRAIN["steps"]


def test_corpus_file_deleted_during_prepare(tmp_path: Path) -> None:
    for name in "abc":
        (tmp_path / f"{name}.py").write_text(f"x = {name!r}\n")
    listed = corpus._walk(tmp_path, ["**/*.py"])
    read = corpus._read_files(tmp_path, listed, 1 << 20)
    first = next(read)  # listing is lazy: what is listed next can go before it is read
    gone = "c.py" if first.name == "b.py" else "b.py"
    (tmp_path / gone).unlink()
    with pytest.raises(MachineFault, match=r"\.py: vanished between listing and reading"):
        list(read)


# ---------------------------------------------------------------- through the stage entry

STAGE = """
import sys, time
sys.path.insert(0, {src!r})
from pathlib import Path
from codexlm.atomic import replace_dir, write_text
from codexlm.errors import run_stage

def main():
    what, out = sys.argv[1], Path(sys.argv[2])
    if what == "write":
        write_text(out / "x.txt", "x" * int(sys.argv[3]))
    else:  # "slow": a stage replacing its output folder, stopped halfway
        with replace_dir(out) as tmp:
            (tmp / "part").write_text("half")
            time.sleep(60)

run_stage(main)
"""


def stage(tmp_path: Path, *args: str) -> subprocess.Popen:
    script = tmp_path / "stage.py"
    script.write_text(STAGE.format(src=str(ROOT / "src")))
    env = {k: v for k, v in os.environ.items() if k != "DVC_STAGE"}
    return subprocess.Popen(
        [sys.executable, str(script), *args], stderr=subprocess.PIPE, text=True, env=env
    )


def one_line(proc: subprocess.Popen) -> str:
    _, err = proc.communicate(timeout=60)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@needs_mount
def test_full_disk_in_any_stage_is_one_line(small_fs, tmp_path) -> None:
    proc = stage(tmp_path, "write", str(small_fs), str(4 << 20))
    line = one_line(proc)
    assert proc.returncode == 2
    assert line.startswith(f"error: stage: no space left on the device writing {small_fs}/x.txt (")
    assert "bytes free there); free space on that filesystem and rerun" in line


@needs_mount
def test_read_only_folder_is_one_line_and_outputs_stay(tmp_path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "x.txt").write_text("earlier")
    subprocess.run(["mount", "--bind", str(data), str(data)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(data)], check=True)
        proc = stage(tmp_path, "write", str(data), "10")
        line = one_line(proc)
    finally:
        subprocess.run(["umount", str(data)], check=True)
    assert proc.returncode == 2
    assert line == (
        f"error: stage: read-only file system: {data / '.x.txt.tmp'}; make it writable "
        "(or run where it is) and rerun"
    )
    assert (data / "x.txt").read_text() == "earlier"


def test_sigterm_stops_a_stage_cleanly(tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "old").write_text("previous output")
    proc = stage(tmp_path, "slow", str(out))
    deadline = time.monotonic() + 30
    while not (tmp_path / ".out.tmp" / "part").exists():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    line = one_line(proc)
    assert proc.returncode == 128 + signal.SIGTERM
    assert line.startswith("stage: stopped by SIGTERM; outputs are replaced only when complete")
    assert not (tmp_path / ".out.tmp").exists(), "the half-written folder is removed"
    assert (out / "old").read_text() == "previous output"


# ---------------------------------------------------------------- in a child: memory, time

CHILD = """
import resource, sys
sys.path[:0] = [{src!r}, {tests!r}]
from pathlib import Path
import numpy as np, psutil, torch
from codexlm.errors import MachineFault, run_stage
from codexlm.evaluate import forward
from test_checkpoint import new_model, run_train

def main():
    tmp = Path(sys.argv[1])
    data = np.tile(np.arange(64, dtype=np.uint16), 400)
    model = new_model()
    vms = psutil.Process().memory_info().vms  # what torch and the tiny model take already
    resource.setrlimit(resource.RLIMIT_AS, (vms + (400 << 20), resource.RLIM_INFINITY))
    try:  # evaluate's line, then train's through the stage entry
        x = torch.zeros((100_000, 16), dtype=torch.long)
        forward(model, x, 100_000, 16, torch.device("cpu"))
    except MachineFault as e:
        print(f"evaluate said: {{e}}", file=sys.stderr)
    run_train(tmp, (data[:20000], data[20000:]), log=False, batch_size=200_000)

run_stage(main)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS")
def test_out_of_memory_in_evaluate_and_train_names_the_sizes_and_the_param(tmp_path) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(src=str(ROOT / "src"), tests=str(ROOT / "tests")))
    env = {k: v for k, v in os.environ.items() if k != "DVC_STAGE"}
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        capture_output=True,
        text=True,
        env={**env, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    err = proc.stderr
    assert proc.returncode == 2 and "Traceback" not in err, err
    said = [line for line in err.splitlines() if line.startswith("evaluate said: ")]
    assert len(said) == 1, err
    line = said[0].removeprefix("evaluate said: ")
    assert line.startswith("evaluate: out of CPU memory scoring evaluate.batch_size ")
    assert "100000 x model.context 16 tokens (vocab 64" in line
    assert line.endswith("lower evaluate.batch_size")
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: train: out of CPU memory in step 1: micro-batch of ")
    assert "train.batch_size 200000 x model.context 16 tokens, vocab 64" in last
    assert "lower train.batch_size and raise train.grad_accum" in last


def test_stop_is_bounded_by_max_stop_seconds(tmp_path, monkeypatch, capsys) -> None:
    """A signal during a step that outlasts train.max_stop_seconds: the watchdog exits."""
    import codexlm.train as train_mod

    exits: list[int] = []
    monkeypatch.setattr(train_mod.os, "_exit", exits.append)  # the real one ends pytest
    stop = train_mod.StopFlag(0.2, tmp_path / "ckpt")
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 10
        while not exits and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.restore()
    assert exits == [128 + signal.SIGTERM]
    assert stop.signum == signal.SIGTERM
    assert (
        "train: stopped by SIGTERM without a checkpoint of the current step: it did not "
        "finish within train.max_stop_seconds = 0.2; no checkpoint to resume from"
    ) in capsys.readouterr().err


def test_leftovers_of_a_failed_write_are_removed_and_said(tmp_path) -> None:
    identity = {"params": "p", "code": "c", "packages": "k"}
    path = checkpoint_files.write(tmp_path, 2, {"w": torch.ones(1)}, {}, {"identity": identity})
    (tmp_path / ".tmp-step-00000004").mkdir()  # a write that a crash or a full disk stopped
    removed = checkpoint_policy.remove_stale(tmp_path, identity)
    assert removed == [
        f"removed {tmp_path / '.tmp-step-00000004'} (a write that did not finish: a crash "
        "or a full disk)"
    ]
    assert checkpoint_policy.find_resumable(tmp_path).path == path
