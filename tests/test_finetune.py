"""Fine-tuning a local checkpoint, fully or with LoRA, and exporting it merged or as an
adapter. The checkpoints are made here: the pipeline's own tiny llama export, and a gpt2."""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import ROOT, copy_repo, model_args, run, tiny_params
from huggingface_hub import ModelCard
from transformers import AutoModelForCausalLM, AutoTokenizer

pytestmark = pytest.mark.slow


def folder_hash(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f.relative_to(path).as_posix().encode() + f.read_bytes())
    return h.hexdigest()


def val_losses(repo: Path) -> list[tuple[int, float]]:
    with (repo / "reports/train/plots/metrics/val/loss.tsv").open(newline="") as f:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f, delimiter="\t")]


def finetune(tmp: Path, base: Path, corpus: Path, **lora) -> Path:
    p = tiny_params(str(corpus))
    p["model"]["init"] = str(base)
    p["train"].update(steps=12, lr=3e-3, eval_every=6, checkpoint_every=6)
    p["lora"].update(lora)
    if p["lora"]["enabled"]:  # Muon is refused with LoRA (tests/test_params.py)
        p["train"]["optimizer"] = "adamw"
    p["export"]["parity_atol"] = 1e-5
    repo = copy_repo(tmp, p)
    run(["dvc", "repro", "export"], repo)  # codeeval, after export, is not what these test
    return repo


@pytest.fixture(scope="module")
def llama_base(built: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("bases") / "llama"
    shutil.copytree(built / "models/export", base)
    return base


@pytest.fixture(scope="module")
def gpt2_base(built: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small gpt2 (Conv1D layers, learned positions) with the pipeline's tokenizer."""
    from codexlm.model import build_model

    tok = AutoTokenizer.from_pretrained(built / "models/tokenizer")
    model = build_model(
        model_args(arch="gpt2", n_layer=1, n_head=2, d_model=32, context=32),
        len(tok),
        tok.eos_token_id,
        tok.pad_token_id,
        0,
    )
    base = tmp_path_factory.mktemp("bases") / "gpt2"
    model.save_pretrained(base)
    tok.save_pretrained(base)
    return base


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dst = tmp_path_factory.mktemp("ft") / "corpus"
    shutil.copytree(ROOT / "src" / "codexlm", dst, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


@pytest.fixture(scope="module")
def lora_runs(llama_base, gpt2_base, corpus, tmp_path_factory) -> dict[str, tuple[Path, Path, str]]:
    """LoRA fine-tunes of both bases: arch -> (base, repo, base folder hash before)."""
    runs = {}
    for arch, base in (("llama", llama_base), ("gpt2", gpt2_base)):
        before = folder_hash(base)
        repo = finetune(
            tmp_path_factory.mktemp(f"lora-{arch}") / "repo",
            base,
            corpus,
            enabled=True,
            r=4,
            alpha=8,
        )
        runs[arch] = (base, repo, before)
    return runs


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_lora_finetune_and_merged_export(arch, lora_runs) -> None:
    base, repo, before = lora_runs[arch]
    assert folder_hash(base) == before, "fine-tuning changed the base model's files"

    losses = val_losses(repo)
    assert losses[0][0] == 0 and losses[-1][1] < losses[0][1], losses

    trained = repo / "models/trained"
    assert (trained / "adapter_config.json").is_file() and (
        trained / "adapter_model.safetensors"
    ).is_file()
    summary = json.loads((repo / "reports/train/metrics.json").read_text())
    assert summary["params"]["trainable"] < summary["params"]["total"] / 5

    # the merged export is a plain model: no peft needed, same logits as base + adapter
    from peft import PeftModel

    export = repo / "models/export"
    assert not (export / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(export).eval()
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), trained).eval()
    x = torch.randint(0, 250, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (merged(input_ids=x).logits - adapted(input_ids=x).logits).abs().max()
    assert float(diff) < 1e-5
    # a merged fine-tune is a full model: it gets its GGUF, and its card names the base
    assert (export / "codexlm-f16.gguf").is_file()
    card = ModelCard.load(export / "README.md").data
    assert card.base_model == str(base) and card.to_dict()["base_model_relation"] == "finetune"


def test_adapter_export(lora_runs, tmp_path) -> None:
    """export.merge_lora: false exports the adapter; only the export stage reruns."""
    import yaml
    from peft import PeftModel

    base, src, _ = lora_runs["llama"]
    repo = tmp_path / "repo"
    shutil.copytree(src, repo)
    p = yaml.safe_load((repo / "params.yaml").read_text())
    p["export"]["merge_lora"] = False
    p["export"]["gguf"] = "none"  # an adapter has no full weights to write as GGUF
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    out = run(["dvc", "repro", "export"], repo).stdout
    assert "Running stage 'export'" in out and "Running stage 'train'" not in out
    export = repo / "models/export"
    assert (export / "adapter_config.json").is_file()
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), export)
    assert sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) > 0
    card = ModelCard.load(export / "README.md").data
    assert card.base_model == str(base) and card.library_name == "peft"


def test_full_finetune_starts_from_checkpoint(
    built, llama_base, corpus, lora_runs, tmp_path
) -> None:
    """The first val loss of a fine-tune is the base checkpoint's, not a random model's."""
    repo = finetune(tmp_path / "repo", llama_base, corpus, enabled=False)
    pretrained_final = val_losses(built)[-1]
    first = val_losses(repo)[0]
    assert first[0] == 0
    # same val batches, same weights: the same loss
    assert first[1] == pytest.approx(pretrained_final[1], rel=1e-5)
    full = json.loads((repo / "reports/train/metrics.json").read_text())["params"]
    lora_repo = lora_runs["llama"][1]
    lora = json.loads((lora_repo / "reports/train/metrics.json").read_text())["params"]
    # r=4 on a 32-wide model is already 9x fewer; on real widths the gap is 100x and more
    assert lora["trainable"] * 5 < full["trainable"]
    assert lora["optimizer_state_bytes"] * 5 < full["optimizer_state_bytes"]


def test_lora_on_scratch_is_a_param_error(repo: Path) -> None:
    import yaml

    p = yaml.safe_load((repo / "params.yaml").read_text())
    p = copy.deepcopy(p)
    p["lora"]["enabled"] = True
    (repo / "params.yaml").write_text(yaml.safe_dump(p))
    proc = run(["dvc", "repro"], repo, check=False)
    assert proc.returncode != 0
    assert "lora.enabled" in proc.stderr + proc.stdout


def test_changed_base_model_reruns_its_readers(lora_runs, tmp_path) -> None:
    """model.init is a dvc.yaml dependency: new files in the base folder rerun the stages
    that read it (and nothing upstream)."""
    import yaml

    base_src, repo_src, _ = lora_runs["llama"]
    base = tmp_path / "base"
    shutil.copytree(base_src, base)
    repo = tmp_path / "repo"
    shutil.copytree(repo_src, repo, ignore=shutil.ignore_patterns("cache", "tmp"))
    p = yaml.safe_load((repo / "params.yaml").read_text())
    p["model"]["init"] = str(base)
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    # record the copy as what the outputs came from (up to export: codeeval was not run)
    run(["dvc", "commit", "-f", "-q", "--with-deps", "export"], repo)
    assert "up to date" in run(["dvc", "status", "--with-deps", "export"], repo).stdout
    (base / "NOTES.md").write_text("a changed checkpoint\n")
    status = run(["dvc", "status", "--json", "--with-deps", "export"], repo).stdout
    changed = set(json.loads(status))
    assert {"tokenize", "train", "evaluate", "export"} <= changed
    assert "prepare" not in changed
