"""The built-in task set (tasks/, written by `make tasks`): the committed files are the
generator's output for its seed; the splits share no prompt; no task shares a 13-gram with
HumanEval; every canonical solution passes the judge and known-bad programs get the rewards
they should; a task set without tests is refused in one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from codexlm.codeeval import cases, decontam, sandbox, scoring
from codexlm.errors import MachineFault, UserError
from codexlm.rl import rewards as rw
from codexlm.rl import tasks

TOOL = ROOT / "tools" / "tasks.py"
LIMITS = sandbox.Limits(timeout_s=2.0, memory_mb=512)


def committed(split: str) -> list[tasks.Problem]:
    return tasks.load_tasks(str(ROOT / "tasks" / f"{split}.jsonl"), "tasks")


def test_committed_files_are_the_generators_output(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(TOOL), "--out", str(tmp_path)], check=True, cwd=ROOT)
    for split in ("train", "test", "val", "pairs"):
        assert (tmp_path / f"{split}.jsonl").read_bytes() == (
            ROOT / "tasks" / f"{split}.jsonl"
        ).read_bytes(), f"tasks/{split}.jsonl is stale: run make tasks"


def test_splits_are_held_out_and_clean() -> None:
    train, test, val = committed("train"), committed("test"), committed("val")
    assert len(train) == 600 and len(test) == 120 and len(val) == 120
    prompts = [{t.prompt for t in split} for split in (train, test, val)]
    assert not prompts[0] & prompts[1] and not prompts[0] & prompts[2]
    assert not prompts[1] & prompts[2]  # tuning on val says nothing about test's answers
    for t in train + test + val:
        assert not decontam.contaminated(t.prompt + "\n" + t.canonical_solution, "humaneval")
        # every test reduces to cases: the judge compares values, "fraction" counts asserts
        assert cases.reduce(t.test) is not None, t.task_id
        assert tasks.asserts_of(t.test) == tasks.N_CASES
    families = {t.canonical_solution.split("return ")[1][:3] for t in test}
    assert len(families) >= 8  # the test split holds every kind of task, not a few


@pytest.fixture(scope="module")
def judge() -> scoring.Judge:
    sb = sandbox.probe(LIMITS)
    sandbox.require(sb, "full")
    per_family = {}
    for t in committed("test") + committed("train"):
        per_family.setdefault((t.task_id.split("/")[1], t.entry_point.split("_")[0]), t)
    return scoring.make_judge(list(per_family.values()), sb, LIMITS, workers=2)


def test_rewards_of_known_good_and_known_bad_programs(judge: scoring.Judge) -> None:
    ids = list(judge.problems)
    good = [(i, judge.problems[i].canonical_solution) for i in ids]
    r, results = rw.rewards(judge, good, "pass")
    assert r == [1.0] * len(ids), [x.detail for x in results if not x.passed]
    assert rw.rewards(judge, good, "fraction")[0] == [1.0] * len(ids)
    first = ids[0]
    bad = {
        "syntax": "\n    return (\n",
        "raises": "\n    raise ValueError('no')\n",
        "loops": "\n    while True:\n        pass\n",
        "exits": "\n    import os\n    os._exit(0)\n",
        "none": "\n    return None\n",
    }
    r, results = rw.rewards(judge, [(first, c) for c in bad.values()], "fraction")
    assert r == [0.0] * len(bad), [x.status for x in results]
    assert {x.status for x in results} >= {"syntax_error", "timeout"}


def test_fraction_counts_the_asserts_that_held(judge: scoring.Judge) -> None:
    p = next(p for p in judge.problems.values() if p.entry_point.startswith(("clamp", "clip")))
    lo = p.canonical_solution.split("max(")[1].split(",")[1].split(")")[0].strip()
    # clamping only from below: right on the asserts whose expected value is not the top
    completion = f"\n    return max({p.prompt.split('(')[1].split(':')[0]}, {lo})\n"
    (res,) = scoring.judge(judge, [(p.task_id, completion)])
    assert res.judged == "cases" and res.cases_total == tasks.N_CASES
    assert rw.reward_of(res, "fraction") == res.cases_passed / tasks.N_CASES
    assert rw.reward_of(res, "pass") == float(res.cases_passed == tasks.N_CASES)


def test_a_sandbox_error_stops_training_instead_of_rewarding_zero() -> None:
    fault = scoring.Result("t", 0, "sandbox_error", False, 0.0, "bwrap: setting up uid map")
    with pytest.raises(MachineFault, match="sandbox failed to start for t"):
        rw.reward_of(fault, "pass")


def test_a_task_without_tests_is_one_line(tmp_path: Path) -> None:
    rec = json.loads((ROOT / "tasks" / "test.jsonl").read_text().splitlines()[0])
    rec["test"] = "def check(candidate):\n    pass\n"
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps(rec) + "\n")
    with pytest.raises(
        UserError, match=r"^grpo.tasks: .*mine.jsonl: task 'codexlm/test/0' has no tests"
    ):
        tasks.load_tasks(str(path), "grpo.tasks")
    del rec["test"]
    path.write_text(json.dumps(rec) + "\n")
    with pytest.raises(UserError, match=r"^grpo.tasks: .*needs string fields test"):
        tasks.load_tasks(str(path), "grpo.tasks")
    with pytest.raises(UserError, match="is not a file of tasks"):
        tasks.load_tasks(str(tmp_path / "none.jsonl"), "grpo.tasks")


def test_builtin_pairs_prefer_a_passing_solution_to_a_failing_one(judge) -> None:
    rows = [json.loads(x) for x in (ROOT / "tasks" / "pairs.jsonl").read_text().splitlines()]
    assert len(rows) == 600 and all(r["chosen"] != r["rejected"] for r in rows)
    ours = [r for r in rows if r["task_id"] in judge.problems]
    assert len(ours) >= 8
    chosen, _ = rw.rewards(judge, [(r["task_id"], r["chosen"]) for r in ours], "pass")
    rejected, _ = rw.rewards(judge, [(r["task_id"], r["rejected"]) for r in ours], "pass")
    assert chosen == [1.0] * len(ours) and rejected == [0.0] * len(ours)
