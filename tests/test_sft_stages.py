"""The instruction-tuning path through the stage scripts themselves: prepare reads
conversations, tokenize writes the template and the masks, train trains on whole examples,
evaluate reports answer loss, exact match and stop rate, export ships the template. Each
stage runs as `python stages/<stage>_stage.py` in its own (forked) process, as dvc runs it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch  # noqa: F401  (imported here so that the forked stages do not import it again)
import yaml
from conftest import ROOT, run_script, tiny_params
from transformers import AutoTokenizer

import codexlm.export.hf
import codexlm.train  # noqa: F401

NAMES = [f"helper_{i}" for i in range(40)]


def conversations() -> list[dict]:
    """A copying rule: `Call \\`name\\`.` -> `name()`; some with a system message, some with
    two turns (both answers trained)."""
    out = []
    for i, name in enumerate(NAMES):
        msgs = [{"role": "user", "content": f"Call `{name}`."}]
        if i % 3 == 0:
            msgs.insert(0, {"role": "system", "content": "Answer with code only."})
        msgs.append({"role": "assistant", "content": f"{name}()"})
        if i % 4 == 0:
            msgs += [
                {"role": "user", "content": f"Call `{name}` twice."},
                {"role": "assistant", "content": f"{name}()\n{name}()"},
            ]
        out.append({"messages": msgs})
    return out


@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("sft")
    shutil.copytree(ROOT / "stages", cwd / "stages")
    shutil.copy(ROOT / "versions.yaml", cwd)
    shutil.copy(ROOT / "scratch", cwd)
    source = cwd / "chat.jsonl"
    source.write_text("".join(json.dumps(c) + "\n" for c in conversations()))
    p = tiny_params(str(source))
    p["data"].update(format="messages", near_dup_threshold=1.0)
    p["model"]["context"] = 48
    p["train"].update(optimizer="adamw", lr=3e-3, steps=6, eval_every=3, checkpoint_every=3)
    p["evaluate"].update(max_examples=4, max_new_tokens=6)
    p["export"]["gguf"] = "f16"
    (cwd / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    return cwd


def stage(cwd: Path, name: str) -> str:
    proc = run_script(f"stages/{name}_stage.py", cwd)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return proc.stdout


def test_conversations_run_through_every_stage(sft_dir: Path) -> None:
    stage(sft_dir, "prepare")
    stats = json.loads((sft_dir / "data/prepared/stats.json").read_text())
    assert stats["format"] == "messages"

    out = stage(sft_dir, "tokenize")
    assert "examples" in out
    meta = json.loads((sft_dir / "data/tokens/meta.json").read_text())
    assert meta["format"] == "examples" and meta["added_ids"]  # ChatML's tokens, added
    assert sum(meta["examples"].values()) == len(NAMES)
    for split in ("train", "val", "test"):
        for ext in (".bin", ".mask.bin", ".index.npy"):
            assert (sft_dir / "data/tokens" / f"{split}{ext}").is_file()

    stage(sft_dir, "train")
    summary = json.loads((sft_dir / "reports/train/metrics.json").read_text())
    assert summary["step"] == 6

    stage(sft_dir, "evaluate")
    metrics = json.loads((sft_dir / "reports/evaluate/metrics.json").read_text())
    test = metrics["test"]
    assert test["answer_loss"] > 0 and 0 <= test["exact_match"] <= 1
    assert 0 <= test["stop_rate"] <= 1 and test["answers"] > 0
    assert "| prompt |" in (sft_dir / "reports/evaluate/samples.md").read_text()

    stage(sft_dir, "export")
    export = sft_dir / "models/export"
    tok = AutoTokenizer.from_pretrained(export)
    messages = [{"role": "user", "content": "Call `helper_3`."}]
    rendered = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert rendered.endswith("<|im_start|>assistant\n")
    eos = json.loads((export / "generation_config.json").read_text())["eos_token_id"]
    assert tok.convert_tokens_to_ids("<|im_end|>") in (eos if isinstance(eos, list) else [eos])
    assert list(export.glob("*.gguf"))


def test_a_malformed_record_stops_prepare_with_one_line(tmp_path: Path, sft_dir: Path) -> None:
    cwd = tmp_path / "bad"
    shutil.copytree(sft_dir, cwd, ignore=shutil.ignore_patterns("data", "models", "reports"))
    records = conversations()
    records[5]["messages"][0] = {"role": "robot", "content": "hi"}
    (cwd / "chat.jsonl").write_text("".join(json.dumps(c) + "\n" for c in records))
    p = yaml.safe_load((cwd / "params.yaml").read_text())
    p["data"]["source"] = str(cwd / "chat.jsonl")
    (cwd / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    proc = run_script("stages/prepare_stage.py", cwd)
    # the progress bar's line, then the error's
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "chat.jsonl: record 6" in lines[0] and "'robot'" in lines[0]
    assert not (cwd / "data/prepared").exists()  # nothing half-written, not even a folder
