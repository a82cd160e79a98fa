"""The built-in instruction dataset: conversations derived from the default corpus, offline
and deterministic (the same archive gives the same file, byte for byte).

Two tasks, each named by its system message (evaluate reports exact match per task):
- `body`: for a function with a docstring, the user gives its signature and docstring and
  the assistant answers with its body (a hard task: the figure to watch is the answer loss);
- `call`: the user names a function and the assistant answers with a call to it without
  arguments, `name()` (a fixed-format rule a small model learns: greedy exact match).

`python tools/instruct.py [ARCHIVE] [OUT]` (`make instruct`) writes data/instruct.jsonl, a
`data.format: messages` source (docs/sft.md). A dataset builder, not a stage: its output is
an input (`data.source`) the pipeline reads like any other.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from codexlm.atomic import write_text  # noqa: E402
from codexlm.corpus import SNAPSHOT, archive_files  # noqa: E402
from codexlm.errors import run_stage  # noqa: E402

OUT = Path("data/instruct.jsonl")
BODY = "body: write the body of the Python function."
CALL = "call: answer with a call to the named Python function, without arguments."
# short functions only: the rendered example must fit the default model.context (128 tokens)
MAX_BODY_CHARS, MAX_BODY_LINES, MAX_HEADER_CHARS = 160, 6, 200
MAX_PER_TASK = 5000  # the corpus has ~2,400 short bodies and ~4,500 names: all of both


def _functions(source: str) -> Iterator[tuple[str, str, str]]:
    """(name, signature and docstring, body) of each function with a docstring, in order."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):  # a file of another Python version: skipped
        return
    lines = source.splitlines()
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) or len(node.body) < 2:
            continue
        doc = node.body[0]
        if not (
            isinstance(doc, ast.Expr) and isinstance(getattr(doc, "value", None), ast.Constant)
        ):
            continue
        if not isinstance(doc.value.value, str) or node.decorator_list:
            continue
        header = textwrap.dedent("\n".join(lines[node.lineno - 1 : doc.end_lineno]))
        body = textwrap.dedent("\n".join(lines[doc.end_lineno : node.end_lineno]))
        yield node.name, header, body


def examples(archive: Path) -> Iterator[dict]:
    """The dataset's records (`messages`), in archive order: bodies first, then calls."""
    bodies, calls, names = [], [], set()
    for _, data in archive_files(archive, ["**/*.py"]):
        for name, header, body in _functions(data.decode("utf-8", "replace")):
            short = len(body) <= MAX_BODY_CHARS and body.count("\n") < MAX_BODY_LINES
            if short and len(header) <= MAX_HEADER_CHARS and len(bodies) < MAX_PER_TASK:
                bodies.append((header, body))
            if name not in names and len(calls) < MAX_PER_TASK:
                names.add(name)
                calls.append(name)
    for header, body in bodies:
        yield _chat(BODY, header, body)
    for name in calls:
        yield _chat(CALL, f"Call `{name}`.", f"{name}()")


def _chat(system: str, user: str, answer: str) -> dict:
    return {
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": user},
            {"role": "assistant", "content": answer},
        ]
    }


def write(archive: Path, out: Path) -> int:
    rows = [json.dumps(r, ensure_ascii=False, sort_keys=True) for r in examples(archive)]
    write_text(out, "\n".join(rows) + "\n")
    return len(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("archive", nargs="?", default=SNAPSHOT, type=Path)
    ap.add_argument("out", nargs="?", default=OUT, type=Path)
    a = ap.parse_args()
    print(f"instruct: {write(a.archive, a.out)} conversations in {a.out}")


if __name__ == "__main__":
    run_stage(main)
