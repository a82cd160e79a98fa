"""Bad input to GRPO and DPO: one line naming the key (and file), exit 2, no traceback, before
any work: grpo without a task set, a reward param out of range, a task without tests, records
missing `chosen`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, default_params, fake_checkpoint, run_script

from codexlm import params
from codexlm.errors import UserError


def check(tmp_path: Path, params: dict) -> tuple[int, str]:
    """stages/check_params.py, which `make repro` runs before `dvc repro` (the train stage
    parses params the same way first)."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (tmp_path / "corpus").symlink_to(ROOT / "corpus")
    proc = run_script(str(ROOT / "stages" / "check_params.py"), tmp_path)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return proc.returncode, lines[0]


def rl_params(tmp_path: Path, **grpo) -> dict:
    p = default_params()
    base = tmp_path / "base"
    p["model"]["init"] = str(
        base if base.is_dir() else fake_checkpoint(base, max_position_embeddings=128)
    )
    p["train"]["objective"] = "grpo"
    for k in ("tasks", "eval_tasks"):
        p["grpo"][k] = str(ROOT / p["grpo"][k])
    p["grpo"].update(grpo)
    return p


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"tasks": "nowhere.jsonl"}, "grpo.tasks: train.objective grpo needs a .jsonl of tasks"),
        ({"reward": "all"}, "grpo.reward: Input should be 'pass' or 'fraction' (got 'all')"),
        ({"group_size": 1}, "grpo.group_size: Input should be greater than or equal to 2"),
        ({"clip": 1.5}, "grpo.clip: Input should be less than 1"),
        ({"kl_coef": -0.1}, "grpo.kl_coef: Input should be greater than or equal to 0"),
    ],
)
def test_bad_grpo_params_are_one_line(tmp_path: Path, change: dict, expected: str) -> None:
    with pytest.raises(UserError) as e:  # what check_params.py and every stage print
        params.parse(rl_params(tmp_path, **change))
    assert expected in str(e.value) and "\n" not in str(e.value), e.value


def test_a_bad_reward_stops_make_repro_with_exit_2(tmp_path: Path) -> None:
    code, line = check(tmp_path, rl_params(tmp_path, reward="tests"))
    assert code == 2 and line.startswith("error: ") and "grpo.reward:" in line


def test_grpo_on_a_scratch_model_and_dpo_without_pairs(tmp_path: Path) -> None:
    p = rl_params(tmp_path)
    p["model"]["init"] = "scratch"
    with pytest.raises(UserError, match=r"model\.init: train\.objective grpo tunes a model"):
        params.parse(p)
    p = rl_params(tmp_path)
    p["train"]["objective"] = "dpo"
    p["dpo"]["pairs"] = str(tmp_path / "data" / "pairs.jsonl")  # absent in any checkout
    with pytest.raises(UserError) as e:
        params.parse(p)
    line = str(e.value)
    assert "dpo.pairs: train.objective dpo needs" in line and "make pairs" in line


def one_line(code: str) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return proc.returncode, lines[0]


def test_a_task_without_tests_and_a_record_missing_chosen_exit_2(tmp_path: Path) -> None:
    task = json.loads((ROOT / "tasks" / "test.jsonl").read_text().splitlines()[0])
    task["test"] = "def check(candidate):\n    return True\n"
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(json.dumps(task) + "\n")
    code, line = one_line(
        "from codexlm.errors import run_stage; from codexlm.rl.tasks import load_tasks; "
        f"run_stage(lambda: load_tasks({str(tasks)!r}, 'grpo.tasks'))"
    )
    assert code == 2 and line.startswith("error: grpo.tasks: ") and "has no tests" in line
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "def f():", "rejected": "\n    return 0\n"}) + "\n")
    code, line = one_line(
        "from codexlm.errors import run_stage; from codexlm.rl.pairs import read_pairs; "
        f"run_stage(lambda: read_pairs({str(pairs)!r}))"
    )
    assert code == 2 and line.startswith("error: dpo.pairs: ") and ":1: missing chosen" in line
