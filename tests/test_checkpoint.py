"""Checkpoint/resume: a crash costs at most the steps since the last checkpoint, and the
resumed run ends bit-identical to the uninterrupted one."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import model_args, train_args
from safetensors.torch import load_file

from codexlm import loss as loss_mod
from codexlm import train as train_mod
from codexlm.checkpoint import files as checkpoint_files
from codexlm.checkpoint import policy as checkpoint_policy
from codexlm.hashing import file_sha256
from codexlm.live import LiveLogger
from codexlm.model import build_model

VOCAB, CONTEXT, STEPS = 64, 16, 8


@pytest.fixture
def tokens() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    # a learnable sequence: mostly a repeating pattern, some noise
    base = np.tile(np.arange(VOCAB, dtype=np.uint16), 200)
    noise = rng.integers(0, VOCAB, size=base.size).astype(np.uint16)
    data = np.where(rng.random(base.size) < 0.1, noise, base)
    return data[:10_000], data[10_000:]


def new_model(seed: int = 0) -> torch.nn.Module:
    return build_model(
        model_args(n_layer=1, n_head=2, d_model=32, context=CONTEXT, dropout=0.1), VOCAB, 0, 1, seed
    )


TRAIN = dict(
    optimizer="adamw",  # the tests that are about Muon say so
    # one lr and Adam's usual betas, whatever params.yaml's tuning: test_final_best's lr is
    # high enough to overshoot at the end
    embed_lr_scale=1.0,
    beta1=0.9,
    beta2=0.95,
    steps=STEPS,
    batch_size=4,
    grad_accum=2,
    lr=1e-2,
    min_lr=1e-3,
    warmup_steps=2,
    precision="fp32",
    compile=False,
    eval_every=4,
    eval_batches=2,
    log_every=1,
    checkpoint_every=2,
    keep_checkpoints=2,
    max_bad_steps=3,
)


def run_train(
    tmp: Path, tokens, fingerprint: str = "fp-a", log: bool = True, **overrides
) -> tuple[torch.nn.Module, dict]:
    """A real train() run of a tiny llama (dropout on), logged by DVCLive to tmp/log."""
    model = new_model()
    cfg = train_args(**{**TRAIN, **overrides})
    log_dir = tmp / "log" if log else None
    run = train_mod.Run(0, CONTEXT, tmp / "ckpt", fingerprint, log_dir=log_dir)
    callbacks = [LiveLogger(log_dir)] if log_dir else []
    summary = train_mod.train(model, tokens[0], tokens[1], cfg, run, callbacks)
    return model, summary


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def logged_steps(log: Path, name: str) -> list[int]:
    with (log / "plots/metrics" / f"{name}.tsv").open(newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f, delimiter="\t")]


class Crash(Exception):
    pass


def crash_at(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """Simulate the process dying while it draws the batches of `step`."""
    real = train_mod.train_batch

    def flaky(tokens, seed, s, *a, **k):
        if s == step:
            raise Crash(f"killed at step {s}")
        return real(tokens, seed, s, *a, **k)

    monkeypatch.setattr(train_mod, "train_batch", flaky)


@pytest.fixture
def reference(tmp_path: Path, tokens) -> dict:
    model, _ = run_train(tmp_path / "ref", tokens)
    return weights(model)


@pytest.mark.parametrize("crash_step", [1, 5, 7])
def test_resume_is_exact(tmp_path, tokens, reference, monkeypatch, crash_step) -> None:
    crash_at(monkeypatch, crash_step)
    with pytest.raises(Crash):
        run_train(tmp_path, tokens)
    monkeypatch.undo()
    model, summary = run_train(tmp_path, tokens)
    assert_identical(weights(model), reference)
    assert summary["step"] == STEPS
    # every step logged exactly once, though the crashed run logged past its last checkpoint
    assert logged_steps(tmp_path / "log", "train/loss") == list(range(1, STEPS + 1))
    # validation runs at eval_every and at every checkpoint (its loss picks the best one)
    assert logged_steps(tmp_path / "log", "val/loss") == [0, 2, 4, 6, 8]


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_resume_is_exact_with_either_optimizer(tmp_path, tokens, monkeypatch, optimizer) -> None:
    """Muon's momentum buffers and AdamW's moments (the non-matrix half) both come back."""
    ref, _ = run_train(tmp_path / "ref", tokens, optimizer=optimizer)
    other, _ = run_train(
        tmp_path / "other", tokens, optimizer={"adamw": "muon"}.get(optimizer, "adamw")
    )
    assert not all(
        torch.equal(a, b)
        for a, b in zip(weights(ref).values(), weights(other).values(), strict=True)
    )
    crash_at(monkeypatch, 5)  # after the step-4 checkpoint
    with pytest.raises(Crash):
        run_train(tmp_path, tokens, optimizer=optimizer)
    monkeypatch.undo()
    model, _ = run_train(tmp_path, tokens, optimizer=optimizer)
    assert_identical(weights(model), weights(ref))


def test_log_comes_back_from_the_checkpoint(tmp_path, tokens, reference, monkeypatch) -> None:
    """DVC deletes the stage's reports/train before it reruns the stage: the resumed run takes
    the log up to its checkpoint from the checkpoint, and the manifest covers that copy."""
    crash_at(monkeypatch, 5)
    with pytest.raises(Crash):
        run_train(tmp_path, tokens)
    monkeypatch.undo()
    saved = tmp_path / "ckpt/step-00000004" / checkpoint_files.LOG
    assert logged_steps(saved, "train/loss") == [1, 2, 3, 4]
    assert "log/plots/metrics/train/loss.tsv" in json.loads(
        (saved.parent / "manifest.json").read_text()
    )
    shutil.rmtree(tmp_path / "log")  # what `dvc repro` does to the output first
    model, _ = run_train(tmp_path, tokens)
    assert_identical(weights(model), reference)
    assert logged_steps(tmp_path / "log", "train/loss") == list(range(1, STEPS + 1))
    assert logged_steps(tmp_path / "log", "val/loss") == [0, 2, 4, 6, 8]


def test_interrupted_checkpoint_write_is_ignored(tmp_path, tokens, reference, monkeypatch) -> None:
    """A crash in the middle of writing checkpoint 6 leaves a temp folder, never a step-6."""
    real_write = checkpoint_files._write_all

    def dying_write(tmp: Path, contents: dict[str, bytes]) -> None:
        if "step-00000006" in tmp.name:
            real_write(tmp, dict(list(contents.items())[:1]))  # the weights, then killed
            raise Crash("killed while writing")
        real_write(tmp, contents)

    monkeypatch.setattr(checkpoint_files, "_write_all", dying_write)
    with pytest.raises(Crash):
        run_train(tmp_path, tokens)
    monkeypatch.undo()
    names = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert names == [".tmp-step-00000006", "step-00000002", "step-00000004"]
    model, _ = run_train(tmp_path, tokens)
    assert_identical(weights(model), reference)


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupt_checkpoint_falls_back(tmp_path, tokens, reference, monkeypatch, damage) -> None:
    crash_at(monkeypatch, 7)
    with pytest.raises(Crash):
        run_train(tmp_path, tokens)
    monkeypatch.undo()
    newest = tmp_path / "ckpt/step-00000006/model.safetensors"
    data = bytearray(newest.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
        newest.write_bytes(bytes(data))
    else:
        newest.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.warns(UserWarning, match=r"step-00000006/model\.safetensors: sha256 mismatch"):
        model, _ = run_train(tmp_path, tokens)
    assert_identical(weights(model), reference)


def test_other_params_start_fresh(tmp_path, tokens, monkeypatch, capsys) -> None:
    crash_at(monkeypatch, 5)
    with pytest.raises(Crash):
        run_train(tmp_path, tokens)
    monkeypatch.undo()
    run_train(tmp_path, tokens, fingerprint="fp-b", lr=5e-3)
    out, err = capsys.readouterr()
    assert "starting from step 0" in out and "resuming" not in out
    assert "step-00000004 (written by other params or data)" in err
    states = [
        json.loads((p / "state.json").read_text())
        for p in checkpoint_files.complete(tmp_path / "ckpt")
    ]
    assert states and all(s["identity"]["params"] == "fp-b" for s in states)


def test_other_code_starts_fresh(tmp_path, tokens, monkeypatch, capsys) -> None:
    """A finished run of other code is retrained from step 0, not "resumed" at its end."""
    run_train(tmp_path, tokens)
    finished = {p.name for p in checkpoint_files.complete(tmp_path / "ckpt")}
    capsys.readouterr()
    monkeypatch.setattr(train_mod.provenance, "code_digest", lambda: "other code")
    run_train(tmp_path, tokens)
    out, err = capsys.readouterr()
    assert "starting from step 0" in out and "resuming" not in out
    for name in finished:
        assert f"{name} (written by other code)" in err
    monkeypatch.undo()
    monkeypatch.setattr(train_mod.provenance, "package_versions", lambda: {"torch": "0.0"})
    run_train(tmp_path, tokens)
    assert "(written by other code, other packages)" in capsys.readouterr().err


def stop_at(
    monkeypatch: pytest.MonkeyPatch, stop_step: int, nan_steps: frozenset[int] = frozenset()
) -> None:
    """SIGTERM this process during step `stop_step` (0-based); NaN losses in `nan_steps`."""
    real_lr, real_loss = train_mod.lr_at, loss_mod.linear_cross_entropy
    current = {"step": -1}

    def lr_at(step, *a):
        current["step"] = step
        if step == stop_step:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_lr(step, *a)

    def loss(*args):
        out = real_loss(*args)
        return out * float("nan") if current["step"] in nan_steps else out

    monkeypatch.setattr(train_mod, "lr_at", lr_at)
    monkeypatch.setattr(loss_mod, "linear_cross_entropy", loss)


def history(log: Path) -> dict[str, list[list[str]]]:
    """Every logged value but wall-clock ones (throughput, CPU and memory use)."""
    out = {}
    for tsv in sorted((log / "plots/metrics").rglob("*.tsv")):
        name = tsv.relative_to(log).as_posix()
        if "tokens_per_s" in name or "/system/" in name:
            continue
        with tsv.open(newline="") as f:
            out[name] = [[r["step"], r[tsv.stem]] for r in csv.DictReader(f, delimiter="\t")]
    return out


def test_stop_between_log_steps_resumes_the_same_log(tmp_path, tokens) -> None:
    """The sums a log step averages and the non-finite counters are part of a checkpoint:
    a stop at a step that is not a log step loses nothing the log would show."""
    kw = dict(log_every=3, checkpoint_every=4)
    run_train(tmp_path / "ref", tokens, **kw)
    with pytest.MonkeyPatch.context() as mp:
        stop_at(mp, 4)  # done = 5: neither a log step nor a checkpoint step
        with pytest.raises(train_mod.Interrupted):
            run_train(tmp_path / "run", tokens, **kw)
    assert (tmp_path / "run/ckpt/step-00000005").is_dir()
    run_train(tmp_path / "run", tokens, **kw)
    reference = history(tmp_path / "ref/log")
    assert set(reference) >= {"plots/metrics/train/loss.tsv", "plots/metrics/grad_norm.tsv"}
    assert history(tmp_path / "run/log") == reference


def test_a_run_of_bad_steps_is_counted_across_a_stop(tmp_path, tokens) -> None:
    kw = dict(log_every=5, checkpoint_every=100, max_bad_steps=3)
    with pytest.MonkeyPatch.context() as mp:
        stop_at(mp, 3, nan_steps={2, 3})  # two bad steps, then a stop after step 4
        with pytest.raises(train_mod.Interrupted):
            run_train(tmp_path, tokens, **kw)
    with pytest.MonkeyPatch.context() as mp:
        stop_at(mp, -1, nan_steps={4})  # the third in a row, after the restart
        with pytest.raises(train_mod.NonFiniteError, match="3 consecutive steps"):
            run_train(tmp_path, tokens, **kw)


def test_resume_never_removes_the_old_checkpoints(tmp_path, tokens, monkeypatch, capsys) -> None:
    crash_at(monkeypatch, 5)
    with pytest.raises(Crash):
        run_train(tmp_path, tokens)
    old = checkpoint_files.complete(tmp_path / "ckpt")
    assert [p.name for p in old] == ["step-00000004", "step-00000002"]
    crash_at(monkeypatch, 3)  # the fresh run dies before it writes step 4 again
    with pytest.raises(Crash):
        run_train(tmp_path, tokens, resume="never")
    out, err = capsys.readouterr()
    assert "starting from step 0" in out and "resuming" not in out
    for path in old:
        assert f"removed {path} (train.resume: never)" in err
    assert [p.name for p in checkpoint_files.complete(tmp_path / "ckpt")] == ["step-00000002"]


def test_keeps_newest_and_best(tmp_path, tokens) -> None:
    run_train(tmp_path, tokens, keep_checkpoints=1)
    names = [p.name for p in checkpoint_files.complete(tmp_path / "ckpt")]
    best = checkpoint_policy.best(tmp_path / "ckpt")
    assert names[0] == "step-00000008"
    assert best is not None and best.path.name in names
    assert len(names) == (1 if best.path.name == "step-00000008" else 2)
    for p in checkpoint_files.complete(tmp_path / "ckpt"):
        checkpoint_files.verify(p)  # every kept checkpoint is complete


def test_final_best_takes_the_lowest_logged_validation_loss(tmp_path, tokens) -> None:
    # a high constant lr: validation loss goes down, then up again at the last step
    kw = dict(lr=0.05, min_lr=0.05, warmup_steps=1, steps=12, keep_checkpoints=1)
    model, summary = run_train(tmp_path, tokens, final="best", **kw)
    with (tmp_path / "log/plots/metrics/val/loss.tsv").open(newline="") as f:
        logged = {int(r["step"]): float(r["loss"]) for r in csv.DictReader(f, delimiter="\t")}
    at_checkpoints = {
        s: v for s, v in logged.items() if s > 0 and s % TRAIN["checkpoint_every"] == 0
    }
    expected = min(at_checkpoints, key=at_checkpoints.get)
    assert expected != 12, f"this run's best must not be its last step: {logged}"
    best_weights = load_file(tmp_path / f"ckpt/step-{expected:08d}/model.safetensors")
    last_weights = load_file(tmp_path / "ckpt/step-00000012/model.safetensors")
    final = dict(model.named_parameters())
    assert all(torch.equal(final[k].detach(), v) for k, v in best_weights.items())
    assert not all(torch.equal(final[k].detach(), v) for k, v in last_weights.items())
    assert summary["val_loss"] == logged[expected]


class Snapshots:
    """A callback: the weights after every optimizer step."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.after = model, {}

    def on_step_end(self, step: int) -> None:
        self.after[step] = weights(self.model)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_a_non_finite_step_leaves_the_weights_bit_identical(tmp_path, tokens, optimizer) -> None:
    model = new_model()
    snapshots = Snapshots(model)
    cfg = train_args(**{**TRAIN, "log_every": 1, "optimizer": optimizer})
    run = train_mod.Run(seed=0, context=CONTEXT, ckpt_dir=tmp_path / "ckpt", fingerprint="fp")
    with pytest.MonkeyPatch.context() as mp:
        stop_at(mp, -1, nan_steps={4, 5})  # steps 5 and 6 (1-based) have a NaN loss
        summary = train_mod.train(model, tokens[0], tokens[1], cfg, run, [snapshots])
    after = snapshots.after
    assert_identical(after[5], after[4])  # no update from a NaN step...
    assert_identical(after[6], after[4])
    assert not all(torch.equal(after[4][k], after[3][k]) for k in after[4])  # ...but from others
    assert not all(torch.equal(after[7][k], after[6][k]) for k in after[7])
    assert summary["step"] == STEPS


def test_max_bad_steps_in_a_row_stop_the_run(tmp_path, tokens) -> None:
    with pytest.MonkeyPatch.context() as mp:
        stop_at(mp, -1, nan_steps={2, 3, 4})
        with pytest.raises(train_mod.NonFiniteError, match="3 consecutive steps"):
            run_train(tmp_path, tokens, max_bad_steps=3, checkpoint_every=100)
    assert checkpoint_files.complete(tmp_path / "ckpt") == []  # nothing written after the NaNs


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_optimizer_state_loads_weights_only(tmp_path, tokens, optimizer) -> None:
    run_train(tmp_path, tokens, optimizer=optimizer)
    ckpt = checkpoint_files.complete(tmp_path / "ckpt")[0]
    state = torch.load(ckpt / "optimizer.pt", weights_only=True)
    parts = [state] if optimizer == "adamw" else [state["muon"], state["adamw"]]
    assert all("state" in p and "param_groups" in p and p["state"] for p in parts)


@pytest.mark.slow  # two compilations
def test_compile_mode_reaches_torch_compile(tmp_path, tokens, monkeypatch) -> None:
    """A non-default train.compile_mode is handed to torch.compile (here on CPU, where CUDA
    graphs are moot) and trains the weights the default mode does. Compiled against
    compiled: inductor draws dropout masks from its own generator, not eager's."""
    seen: list[str | None] = []
    real_compile = torch.compile

    def recording_compile(*args, **kwargs):
        seen.append(kwargs.get("mode"))
        return real_compile(*args, **kwargs)

    monkeypatch.setattr(torch, "compile", recording_compile)
    runs = {}
    try:
        for mode in ("default", "max-autotune-no-cudagraphs"):
            torch._dynamo.reset()
            runs[mode], _ = run_train(tmp_path / mode, tokens, compile=True, compile_mode=mode)
    finally:
        torch._dynamo.reset()
    assert seen == ["default", "max-autotune-no-cudagraphs"]
    a, b = (m.state_dict() for m in runs.values())
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-5), name


def test_trains_without_dvclive_when_nothing_is_logged(tmp_path, tokens, monkeypatch) -> None:
    """GPU images may lack dvclive: with no log folder train() must not need it."""
    monkeypatch.setitem(sys.modules, "dvclive", None)
    _, summary = run_train(tmp_path, tokens, log=False)
    assert summary["step"] == STEPS
    with pytest.raises(ImportError):
        run_train(tmp_path / "logged", tokens)  # the import is really blocked


def test_verify_rejects_an_incomplete_manifest_and_an_unreadable_state(tmp_path) -> None:
    path = checkpoint_files.write(tmp_path, 2, {"w": torch.ones(1)}, {}, {"identity": {}})
    checkpoint_files.verify(path)
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text("{}")
    with pytest.raises(checkpoint_files.CheckpointError, match="not every file it needs"):
        checkpoint_files.verify(path)
    (path / "manifest.json").write_text(json.dumps(manifest))
    (path / "state.json").write_text("{not json")
    manifest["state.json"] = file_sha256(path / "state.json")
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(checkpoint_files.CheckpointError, match=r"state\.json: unreadable"):
        checkpoint_files.verify(path)
    # unreadable: skipped as corrupt by the run, not removed as another run's
    assert (
        checkpoint_policy.remove_stale(tmp_path, {"params": "p", "code": "c", "packages": "k"})
        == []
    )
    with pytest.warns(UserWarning, match=r"state\.json: unreadable"):
        assert checkpoint_policy.find_resumable(tmp_path) is None
