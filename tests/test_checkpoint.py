"""Checkpoint/resume: a crash costs at most the steps since the last checkpoint, and the
resumed run ends bit-identical to the uninterrupted one."""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from codexlm import checkpoint
from codexlm import loss as loss_mod
from codexlm import train as train_mod
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
    return build_model("llama", 1, 2, 32, CONTEXT, VOCAB, 0.1, 0, 1, seed)


def run_train(tmp: Path, tokens, **overrides) -> tuple[torch.nn.Module, dict]:
    model = new_model()
    kw = dict(
        train_tokens=tokens[0],
        val_tokens=tokens[1],
        seed=0,
        context=CONTEXT,
        steps=STEPS,
        batch_size=4,
        grad_accum=2,
        lr=1e-2,
        min_lr=1e-3,
        warmup_steps=2,
        weight_decay=0.1,
        betas=(0.9, 0.95),
        grad_clip=1.0,
        precision="fp32",
        compile=False,
        eval_every=4,
        n_eval_batches=2,
        log_every=1,
        checkpoint_every=2,
        keep_checkpoints=2,
        resume="auto",
        final="last",
        max_bad_steps=3,
        ckpt_dir=tmp / "ckpt",
        run_fingerprint="fp-a",
        log_dir=tmp / "log",
    )
    kw.update(overrides)
    summary = train_mod.train(model, **kw)
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


def test_log_comes_back_from_the_checkpoint(tmp_path, tokens, reference, monkeypatch) -> None:
    """DVC deletes the stage's reports/train before it reruns the stage: the resumed run takes
    the log up to its checkpoint from the checkpoint, and the manifest covers that copy."""
    crash_at(monkeypatch, 5)
    with pytest.raises(Crash):
        run_train(tmp_path, tokens)
    monkeypatch.undo()
    saved = tmp_path / "ckpt/step-00000004" / checkpoint.LOG
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
    real_save = checkpoint.save_file

    def dying_save(tensors, path, *a, **k):
        real_save(tensors, path, *a, **k)
        if "step-00000006" in str(path):
            raise Crash("killed while writing")

    monkeypatch.setattr(checkpoint, "save_file", dying_save)
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
    run_train(tmp_path, tokens, run_fingerprint="fp-b", lr=5e-3)
    out = capsys.readouterr().out
    assert "starting from step 0" in out and "resuming" not in out
    states = [
        json.loads((p / "state.json").read_text()) for p in checkpoint.candidates(tmp_path / "ckpt")
    ]
    assert states and all(s["fingerprint"] == "fp-b" for s in states)


def test_resume_never_clears(tmp_path, tokens, monkeypatch, capsys) -> None:
    crash_at(monkeypatch, 5)
    with pytest.raises(Crash):
        run_train(tmp_path, tokens)
    monkeypatch.undo()
    run_train(tmp_path, tokens, resume="never")
    assert "starting from step 0" in capsys.readouterr().out


def test_keeps_newest_and_best(tmp_path, tokens) -> None:
    run_train(tmp_path, tokens, keep_checkpoints=1)
    names = [p.name for p in checkpoint.candidates(tmp_path / "ckpt")]
    best = checkpoint.best(tmp_path / "ckpt")
    assert names[0] == "step-00000008"
    assert best is not None and best.path.name in names
    assert len(names) == (1 if best.path.name == "step-00000008" else 2)
    for p in checkpoint.candidates(tmp_path / "ckpt"):
        checkpoint.verify(p)  # every kept checkpoint is complete


def test_final_best_uses_best_checkpoint(tmp_path, tokens) -> None:
    model, summary = run_train(tmp_path, tokens, final="best")
    best = checkpoint.best(tmp_path / "ckpt")
    w, _, _ = checkpoint.load(best)
    state = dict(model.named_parameters())
    for k, v in w.items():
        assert torch.equal(state[k].detach(), v)
    assert summary["val_loss"] == best.state["val_loss"]


def test_non_finite_steps_are_skipped_then_fail(tmp_path, tokens, monkeypatch) -> None:
    """A NaN gradient makes no update; max_bad_steps in a row stop the run with a message."""
    real = loss_mod.linear_cross_entropy

    def nan_loss(*args):
        return real(*args) * float("nan")

    monkeypatch.setattr(loss_mod, "linear_cross_entropy", nan_loss)
    model = new_model()
    before = weights(model)
    with pytest.raises(train_mod.NonFiniteError, match="3 consecutive steps"):
        run_train(tmp_path, tokens, max_bad_steps=3, checkpoint_every=100)
    # no checkpoint was written from a non-finite run, weights never updated
    assert checkpoint.candidates(tmp_path / "ckpt") == []
    del before


def test_optimizer_state_loads_weights_only(tmp_path, tokens) -> None:
    run_train(tmp_path, tokens)
    ckpt = checkpoint.candidates(tmp_path / "ckpt")[0]
    state = torch.load(ckpt / "optimizer.pt", weights_only=True)
    assert "state" in state and "param_groups" in state


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
    monkeypatch.delitem(sys.modules, "codexlm.live", raising=False)
    _, summary = run_train(tmp_path, tokens, log_dir=None)
    assert summary["step"] == STEPS
    with pytest.raises(ImportError):
        run_train(tmp_path / "logged", tokens)  # the import is really blocked
