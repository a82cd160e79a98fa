"""DDP and FSDP on CPU (gloo): 2 processes with half the batch each follow the 1-process run,
on text and on packed instruction data."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT, run, run_script, tiny_params
from safetensors.torch import load_file

from codexlm.checkpoint import files as checkpoint_files
from codexlm.checkpoint import policy as checkpoint_policy
from codexlm.packing import Schedule, load_examples, prepare_split


def history(repo: Path, name: str) -> dict[int, float]:
    with (repo / "reports/train/plots/metrics" / f"{name}.tsv").open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    col = name.rsplit("/", 1)[-1]
    return {int(r["step"]): float(r[col]) for r in rows}


def untrained_copy(built: Path, dst: Path, **train: object) -> Path:
    """The built tiny repo without training outputs, with train params changed."""
    shutil.copytree(
        built, dst, ignore=shutil.ignore_patterns("checkpoints", "reports", "cache", "tmp")
    )
    p = yaml.safe_load((dst / "params.yaml").read_text())
    p["train"].update(train)
    (dst / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    return dst


def two_process_copy(built: Path, dst: Path, strategy: str, **train: object) -> Path:
    """The built tiny repo without training outputs, set to train on two processes."""
    p = yaml.safe_load((built / "params.yaml").read_text())
    assert p["train"]["nproc"] == 1 and p["train"]["grad_accum"] == 1
    # the same global batch (batch_size x grad_accum x nproc), split over two processes
    half = p["train"]["batch_size"] // 2
    return untrained_copy(built, dst, nproc=2, batch_size=half, strategy=strategy, **train)


def assert_same_curves(one: Path, two: Path, rel: float = 1e-4) -> None:
    for name in ("train/loss", "val/loss", "grad_norm"):
        a, b = history(one, name), history(two, name)
        assert a.keys() == b.keys(), name
        for step in a:
            assert b[step] == pytest.approx(a[step], rel=rel, abs=1e-5), (name, step)


def trained_weights(repo: Path) -> dict[str, torch.Tensor]:
    return load_file(repo / "models/trained/model.safetensors")


def train_two(built: Path, dst: Path, strategy: str, **train: object) -> Path:
    """The built tiny repo trained from scratch on two processes (`strategy`)."""
    repo = two_process_copy(built, dst, strategy, **train)
    proc = run(["python", "stages/train_stage.py"], repo)
    assert "starting from step 0" in proc.stdout and f"2 processes, {strategy}" in proc.stdout
    return repo


@pytest.fixture(scope="module")
def one_adamw(built: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built tiny repo trained on one process with AdamW: what DDP and FSDP (where Muon
    is refused) are compared with."""
    one = untrained_copy(built, tmp_path_factory.mktemp("one") / "repo", optimizer="adamw")
    run(["python", "stages/train_stage.py"], one)
    return one


def test_two_processes_match_one_with_muon(built: Path, tmp_path: Path) -> None:
    """The default optimizer under DDP: every rank applies the same Muon update to the
    all-reduced gradient. Newton-Schulz's five iterations amplify the all-reduce's last-bit
    differences into ~1e-4 relative ones: the curves agree to 1e-3."""
    assert yaml.safe_load((built / "params.yaml").read_text())["train"]["optimizer"] == "muon"
    repo = train_two(built, tmp_path / "ddp", "ddp")
    assert_same_curves(built, repo, rel=1e-3)


@pytest.mark.slow  # make test runs DDP once: the default optimizer's test above
def test_two_processes_match_one(built: Path, one_adamw: Path, tmp_path: Path) -> None:
    """AdamW (fp32 throughout): the same curves to 1e-4, and checkpoints that move between
    process counts."""
    repo = train_two(built, tmp_path / "ddp", "ddp", optimizer="adamw")
    assert_same_curves(one_adamw, repo)
    two = trained_weights(repo)

    # resume the 2-process run's step-4 checkpoint with 1 process and the same global batch
    shutil.rmtree(repo / "models/checkpoints/step-00000008")
    shutil.rmtree(repo / "models/trained")
    p = yaml.safe_load((repo / "params.yaml").read_text())
    p["train"].update(nproc=1, batch_size=2 * p["train"]["batch_size"])
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    proc = run(["python", "stages/train_stage.py"], repo)
    assert "(step 4 of 8)" in proc.stdout
    for name, w in trained_weights(repo).items():
        assert torch.allclose(w, two[name], atol=1e-5), name

    # another global batch is another run: its checkpoints are removed, with a message
    p["train"]["batch_size"] //= 2
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    proc = run(["python", "stages/train_stage.py"], repo)
    assert "starting from step 0" in proc.stdout
    assert "(written by other params or data)" in proc.stderr


@pytest.mark.slow
def test_fsdp_matches_one_process_and_resumes(built: Path, one_adamw: Path, tmp_path: Path) -> None:
    """FSDP shards weights, gradients and AdamW state over the two ranks: the same curves
    as one process, a trained model saved unsharded, and checkpoints that resume. (Muon,
    which needs whole matrices, is refused under FSDP: AdamW here, on both sides.)"""
    repo = train_two(built, tmp_path / "fsdp", "fsdp", optimizer="adamw")
    assert_same_curves(one_adamw, repo)
    ours, single = trained_weights(repo), trained_weights(one_adamw)
    assert ours.keys() == single.keys()
    for name, w in single.items():
        assert torch.allclose(ours[name], w, atol=1e-5), name

    # lose the last checkpoint and the model: the rerun resumes from step 4 (sharded load of
    # full weights and optimizer state) and ends where the uninterrupted run ended
    ckpts = repo / "models/checkpoints"
    assert sorted(p.name for p in ckpts.glob("step-*")) == ["step-00000004", "step-00000008"]
    shutil.rmtree(ckpts / "step-00000008")
    shutil.rmtree(repo / "models/trained")
    proc = run(["python", "stages/train_stage.py"], repo)
    assert "resuming from" in proc.stdout and "(step 4 of 8)" in proc.stdout
    for name, w in trained_weights(repo).items():
        assert torch.allclose(w, ours[name], atol=1e-6), name

    # train.final: best (another run: it starts over) loads the best checkpoint on every
    # rank, and rank 0 saves exactly its weights
    p = yaml.safe_load((repo / "params.yaml").read_text())
    p["train"]["final"] = "best"
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    proc = run(["python", "stages/train_stage.py"], repo)
    assert "final weights from" in proc.stdout
    best = checkpoint_policy.best(ckpts)
    weights, _, _ = checkpoint_files.read(best)
    saved = trained_weights(repo)
    for name, w in weights.items():
        assert torch.equal(saved[name], w), name


def repeat_conversations(n: int) -> list[dict]:
    """Requests to say `wI` k times, answered with k copies (1 to 9 words): the ranks' rows
    hold very different numbers of targets, so a per-rank mean would differ from Σ/Σ."""
    out = []
    for i in range(n):
        k = 1 + (i * 5) % 9
        msgs = [
            {"role": "user", "content": f"Say `w{i}` {k} times."},
            {"role": "assistant", "content": " ".join([f"w{i}"] * k)},
        ]
        if i % 3 == 0:
            msgs.insert(0, {"role": "system", "content": "Answer with the words only."})
        out.append({"messages": msgs})
    return out


def stage(cwd: Path, name: str) -> str:
    proc = run_script(f"stages/{name}_stage.py", cwd)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def sft_tokens(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the stage scripts, tiny SFT params (packing, loss on the answers,
    AdamW) and the tokenized conversations: prepare and tokenize only."""
    cwd = tmp_path_factory.mktemp("sft") / "repo"
    shutil.copytree(ROOT / "stages", cwd / "stages")
    shutil.copy(ROOT / "versions.yaml", cwd)
    shutil.copy(ROOT / "scratch", cwd)
    source = cwd / "chat.jsonl"
    source.write_text("".join(json.dumps(c) + "\n" for c in repeat_conversations(48)))
    p = tiny_params(str(source))
    p["data"].update(format="messages", near_dup_threshold=1.0)
    p["model"]["context"] = 128  # two or three examples a row
    p["train"].update(optimizer="adamw", lr=3e-3, steps=6, eval_every=3, checkpoint_every=3)
    assert p["train"]["packing"] and p["train"]["loss_on"] == "answers"
    assert p["train"]["nproc"] == 1 and p["train"]["grad_accum"] == 1
    (cwd / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    stage(cwd, "prepare")
    stage(cwd, "tokenize")
    assert json.loads((cwd / "data/tokens/meta.json").read_text())["format"] == "examples"
    # the rows the run draws hold several examples each: the block-diagonal mask is in play
    split = prepare_split(load_examples(cwd / "data/tokens", "train"), 128, "answers", 1)
    assert max(map(len, Schedule(split, p["seed"], True).rows(0, 24))) >= 3
    return cwd


def test_two_processes_match_one_on_packed_instruction_data(
    sft_tokens: Path, tmp_path: Path
) -> None:
    """Packed rows of whole examples under DDP: each rank takes its share of the step's rows
    and divides its NLL by the targets of the whole step over every rank (counted on the
    host), so the all-reduced mean gradient is the one-process Σ NLL / Σ targets. AdamW in
    fp32: the curves to 1e-4 and the final weights to 1e-5, as for text."""
    one = untrained_copy(sft_tokens, tmp_path / "one")
    out = stage(one, "train")
    assert "starting from step 0" in out and "processes" not in out
    two = two_process_copy(sft_tokens, tmp_path / "two", "ddp")
    out = stage(two, "train")
    assert "starting from step 0" in out and "2 processes, ddp" in out
    assert_same_curves(one, two)
    a, b = trained_weights(one), trained_weights(two)
    assert a.keys() == b.keys()
    for name, w in a.items():
        assert torch.allclose(b[name], w, atol=1e-5), name
