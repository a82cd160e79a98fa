"""GRPO and DPO through the train stage script itself, as `dvc exp run` runs it: a tiny model
trained on the task set's text, then `train.objective: grpo` and `dpo` from it, each logging
the metrics docs/rl.md lists to reports/train and writing models/trained. Slow: four stage
runs (`make test-slow`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch  # noqa: F401  (imported here so that the forked stages do not import it again)
import yaml
from conftest import ROOT, run_script, tiny_params

import codexlm.rl.loop
import codexlm.train  # noqa: F401

pytestmark = pytest.mark.slow


def stage(cwd: Path, name: str) -> str:
    proc = run_script(f"stages/{name}_stage.py", cwd)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return proc.stdout


def write(cwd: Path, p: dict) -> None:
    (cwd / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))


def test_grpo_and_dpo_run_as_the_train_stage(tmp_path: Path) -> None:
    for name in ("stages", "tasks"):
        shutil.copytree(ROOT / name, tmp_path / name)
    for name in ("versions.yaml", "scratch"):
        shutil.copy(ROOT / name, tmp_path)
    tasks = [json.loads(x) for x in (ROOT / "tasks" / "train.jsonl").read_text().splitlines()]
    source = tmp_path / "text.jsonl"
    source.write_text("".join(json.dumps({"text": t["prompt"] + t["canonical_solution"]}) + "\n"
                              for t in tasks))  # fmt: skip
    p = tiny_params(str(source))
    p["data"].update(near_dup_threshold=1.0, min_chars=16)
    p["model"].update(context=128, d_model=32, n_layer=1)
    p["train"].update(optimizer="adamw", lr=1e-2, steps=30, eval_every=30, checkpoint_every=30)
    write(tmp_path, p)
    for name in ("prepare", "tokenize", "train"):
        stage(tmp_path, name)
    shutil.copytree(tmp_path / "models" / "trained", tmp_path / "models" / "sft")

    p["model"]["init"] = "models/sft"
    p["train"].update(objective="grpo", steps=2, log_every=1, checkpoint_every=1, lr=1e-3)
    p["grpo"].update(group_size=2, prompts_per_step=2, max_new_tokens=16, eval_every=1,
                     eval_limit=4, reward="fraction")  # fmt: skip
    p["codeeval"].update(max_new_tokens=16, sandbox="full")
    write(tmp_path, p)
    out = stage(tmp_path, "train")
    assert "held-out pass@1" in out
    metrics = tmp_path / "reports" / "train" / "plots" / "metrics"
    for name in ("reward/mean", "completion/length", "groups/skipped", "kl", "eval/pass@1"):
        rows = (metrics / f"{name}.tsv").read_text().splitlines()
        assert rows[0].startswith("step") and len(rows) >= 3, name  # header, steps 1 and 2
    assert (tmp_path / "models" / "trained" / "model.safetensors").is_file()

    p["train"].update(objective="dpo", batch_size=4)
    write(tmp_path, p)
    stage(tmp_path, "train")
    for name in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert (metrics / f"{name}.tsv").is_file(), name
