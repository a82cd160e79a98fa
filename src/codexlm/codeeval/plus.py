"""Stronger tests generated here (EvalPlus's method, not its data): `humaneval+`.

For each problem whose test reduces to cases (codeeval/cases.py), new inputs are derived from
the test's own inputs by type-aware mutation (an int moved by one, doubled or negated; a string
reversed, cut or repeated; a list reversed, shortened, sorted, an element mutated; ...), and
their expected values are the canonical solution's, run in the sandbox twice (an input where
the two runs differ, the solution raises or returns no plain value is dropped: the problem is
not a pure function of it). The problem keeps its base asserts and gains one
`assert candidate(...) == expected` per new input (`abs(... - expected) < 1e-6` for floats).

    python -m codexlm.codeeval.plus OUT.jsonl [--per-problem 20]
    python -m codexlm.codeeval samples.jsonl --problems OUT.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from codexlm.codeeval import sandbox
from codexlm.codeeval.cases import Cases, plain, reduce
from codexlm.codeeval.problems import Problem, load_problems
from codexlm.codeeval.scoring import Judge, judge_one, run_calls, write_jsonl
from codexlm.errors import UserError


def mutate(value: Any, rng: random.Random, depth: int = 0) -> Any:
    """One type-aware mutation of a plain value (the same type back)."""
    t = type(value)
    if t is bool:
        return not value
    if t is int:
        return rng.choice([value + 1, value - 1, value * 2, -value, 0, value + rng.randint(2, 9)])
    if t is float:
        return rng.choice([value + 0.5, value * 1.5, -value, round(value, 1), value + 1.0])
    if t is str:
        if not value:
            return rng.choice(["a", " ", "ab"])
        i = rng.randrange(len(value))
        return rng.choice(
            [value[::-1], value[:i] + value[i + 1 :], value + value[i], value * 2, value.swapcase(),
             value[:i]]
        )  # fmt: skip
    if t in (list, tuple):
        items = list(value)
        if items and depth < 3 and rng.random() < 0.5:
            i = rng.randrange(len(items))
            items[i] = mutate(items[i], rng, depth + 1)
        elif items:
            i = rng.randrange(len(items))
            items = rng.choice(
                [items[::-1], items[:i] + items[i + 1 :], [*items, items[i]], _sorted(items),
                 items + items]
            )  # fmt: skip
        return t(items)
    if t is dict and value:
        key = rng.choice(list(value))
        return {k: (mutate(v, rng, depth + 1) if k == key else v) for k, v in value.items()}
    return value


def _sorted(items: list) -> list:
    try:
        return sorted(items)
    except TypeError:
        return items[::-1]


def new_inputs(cases: Cases, n: int, seed: str) -> list[tuple[tuple, dict]]:
    """Up to n distinct argument tuples, each one base input with one argument mutated."""
    rng = random.Random(seed)
    seen = {repr(c) for c in cases.calls}
    out: list[tuple[tuple, dict]] = []
    for _ in range(n * 10):
        if len(out) >= n or not cases.calls:
            break
        args, kwargs = rng.choice(cases.calls)
        if not args:
            break  # nothing to mutate
        args = list(args)
        i = rng.randrange(len(args))
        args[i] = mutate(args[i], rng)
        call = (tuple(args), dict(kwargs))
        if repr(call) not in seen and plain(call[0]) and _small(call[0]):
            seen.add(repr(call))
            out.append(call)
    return out


def _small(value: Any) -> bool:
    return len(repr(value)) < 2000


def _literal(value: Any) -> str | None:
    """A source literal that evaluates back to the value (None where there is none)."""
    text = repr(value)
    if "nan" in text or "inf" in text or "range(" in text:
        return None
    return text


def strengthen(j: Judge, problem: Problem, per_problem: int) -> Problem | None:
    """The problem with extra asserts, or None (its test does not reduce, or no input kept)."""
    cases = j.cases.get(problem.task_id)
    if cases is None or not problem.canonical_solution:
        return None
    calls = new_inputs(cases, per_problem, problem.task_id)
    if not calls:
        return None
    first = run_calls(j, problem, problem.canonical_solution, calls)
    second = run_calls(j, problem, problem.canonical_solution, calls)
    lines = []
    for (args, kwargs), a, b in zip(calls, first, second, strict=True):
        if isinstance(a, BaseException) or isinstance(b, BaseException) or repr(a) != repr(b):
            continue  # raised, not plain, or not a function of its input alone
        if not plain(a) or kwargs:
            continue
        expected, arguments = _literal(a), ", ".join(_literal(x) or "?" for x in args)
        if expected is None or "?" in arguments:
            continue
        call = f"candidate({arguments})"
        if type(a) is float:
            lines.append(f"    assert abs({call} - {expected}) < 1e-06")
        else:
            lines.append(f"    assert {call} == {expected}")
    if not lines:
        return None
    test = problem.test.rstrip("\n") + "\n" + "\n".join(lines) + "\n"
    if reduce(test) is None:
        return None
    return replace(problem, task_id=problem.task_id, test=test)


def build(
    problems: Sequence[Problem],
    sb: sandbox.Sandbox,
    limits: sandbox.Limits,
    per_problem: int,
    workers: int = 2,
) -> list[Problem]:
    """Every problem, strengthened where it can be (the others as they are)."""
    j = Judge({p.task_id: p for p in problems}, {p.task_id: reduce(p.test) for p in problems},
              sb, limits)  # fmt: skip

    def one(p: Problem) -> Problem:
        strong = strengthen(j, p, per_problem)
        if strong is not None:
            check = judge_one(
                Judge({p.task_id: strong}, {p.task_id: reduce(strong.test)}, sb, limits),
                p.task_id, 0, p.canonical_solution,
            )  # fmt: skip
            strong = strong if check.passed else None  # the canonical solution must pass
        return strong or p

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(one, problems))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m codexlm.codeeval.plus", description=__doc__)
    ap.add_argument("out", type=Path, help="the .jsonl problem file to write")
    ap.add_argument("--problems", default="humaneval")
    ap.add_argument("--per-problem", type=int, default=20, help="new inputs tried per problem")
    a = ap.parse_args(argv)
    try:
        limits = sandbox.Limits()
        sb = sandbox.probe(limits)
        sandbox.require(sb, "full")
        base = load_problems(a.problems)
        problems = build(base, sb, limits, a.per_problem)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_jsonl(a.out, (asdict(p) for p in problems))
    added = sum(p.test != b.test for p, b in zip(problems, base, strict=True))
    asserts = sum(p.test.count("\n    assert") - b.test.count("\n    assert")
                  for p, b in zip(problems, base, strict=True))  # fmt: skip
    print(json.dumps({"problems": len(problems), "strengthened": added, "asserts_added": asserts}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
