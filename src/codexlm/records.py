"""Instruction records -> examples (the prepare stage, `data.format` prompt_completion | messages).

A record of a .jsonl/.csv/.parquet source is checked and turned into one canonical example:
a conversation (`messages`, each a `{role, content}` object, roles system/user/assistant/tool,
other keys such as `tool_calls` passed through to the chat template) and `train_from`, the
first message whose assistant turns are trained. `messages` records train every assistant
turn (train_from 0); a prompt-completion record trains its completion's: a string prompt and
completion become one user and one assistant turn, a prompt and completion that are lists of
messages are joined (train_from = the prompt's length).

The example is stored as canonical JSON text (sorted keys) in the prepared split's `text`
column, so that exact dedup, near-duplicate grouping and the content-hash split treat it as
they treat a document. A malformed record stops the stage: one line naming the file, the
record number (1-based: the line of a .jsonl, the row of a table) and the problem, exit 2.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from codexlm.errors import UserError

ROLES = ("system", "user", "assistant", "tool")
FORMATS = ("prompt_completion", "messages")
# the columns each format reads from a table (a .jsonl record's keys)
COLUMNS = {"prompt_completion": ("prompt", "completion"), "messages": ("messages",)}


def _messages(value: object, where: str, field: str) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise UserError(f"{where}: {field} is a {type(value).__name__}, not a list of messages")
    out = []
    for i, m in enumerate(value, 1):
        at = f"{where}: {field} message {i}"
        if not isinstance(m, dict):
            raise UserError(f"{at} is a {type(m).__name__}, not an object with role and content")
        if "role" not in m:
            raise UserError(f"{at} has no role")
        if m["role"] not in ROLES:
            raise UserError(f"{at} has unknown role {m['role']!r} (roles: {', '.join(ROLES)})")
        if "content" not in m:
            raise UserError(f"{at} ({m['role']}) has no content")
        if not isinstance(m["content"], str):
            raise UserError(
                f"{at} ({m['role']}): content is a {type(m['content']).__name__}, not a string"
            )
        out.append(dict(m))
    return out


def example_of(record: object, data_format: str, where: str) -> dict[str, Any]:
    """The canonical example of one record, or a UserError naming `where` and the problem."""
    if not isinstance(record, dict):
        raise UserError(f"{where}: the record is a {type(record).__name__}, not an object")
    missing = [c for c in COLUMNS[data_format] if c not in record or record[c] is None]
    if missing:
        have = ", ".join(map(str, record)) or "none"
        raise UserError(
            f"{where}: no {' or '.join(missing)} (keys: {have}); data.format is {data_format}"
        )
    if data_format == "messages":
        messages, train_from = _messages(record["messages"], where, "messages"), 0
        if not messages:
            raise UserError(f"{where}: empty conversation (messages is [])")
    else:
        prompt, completion = record["prompt"], record["completion"]
        if isinstance(prompt, str) and isinstance(completion, str):
            prompt_msgs = [{"role": "user", "content": prompt}]
            completion_msgs = [{"role": "assistant", "content": completion}]
        elif isinstance(prompt, list) and isinstance(completion, list):
            prompt_msgs = _messages(prompt, where, "prompt")
            completion_msgs = _messages(completion, where, "completion")
        else:
            raise UserError(
                f"{where}: prompt ({type(prompt).__name__}) and completion "
                f"({type(completion).__name__}) must both be strings or both lists of messages"
            )
        if not prompt_msgs:
            raise UserError(f"{where}: empty prompt (prompt is [])")
        messages, train_from = prompt_msgs + completion_msgs, len(prompt_msgs)
    if not any(m["role"] == "assistant" for m in messages[train_from:]):
        part = "the completion" if data_format == "prompt_completion" else "the conversation"
        raise UserError(f"{where}: no assistant turn in {part}, so nothing to train on")
    return {"messages": messages, "train_from": train_from}


def dumps(example: dict[str, Any]) -> str:
    """The example's canonical text: what prepare stores, hashes and splits by."""
    return json.dumps(example, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def loads(text: str) -> dict[str, Any]:
    return json.loads(text)


def contents(example: dict[str, Any]) -> str:
    """The example's message contents, one after the other (length filter, decontamination)."""
    return "\n".join(m["content"] for m in example["messages"])


def scrubbed(
    example: dict[str, Any], scrub: Callable[..., str], found: Counter[str], name: str
) -> dict[str, Any]:
    """The example with every message's content scrubbed of secrets (the counts into found)."""
    messages = [
        {**m, "content": scrub(m["content"], found, filename=name)} for m in example["messages"]
    ]
    return {**example, "messages": messages}


def check_columns(path: Path, columns: list[str], data_format: str) -> None:
    """A table whose columns do not fit data.format: one line before any record is read."""
    missing = [c for c in COLUMNS[data_format] if c not in columns]
    if missing:
        raise UserError(
            f"{path}: no column {' or '.join(map(repr, missing))} (columns: "
            f"{', '.join(columns) or 'none'}); data.format {data_format} reads "
            f"{', '.join(COLUMNS[data_format])}"
        )


def cell(value: object) -> object:
    """A table cell as a record field: a .csv holds messages as JSON text, and pyarrow gives
    csv cells as bytes; a parquet list of structs is already a list of dicts."""
    if isinstance(value, bytes):
        value = value.decode("utf-8")  # a UnicodeDecodeError: the reader names the record
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            parsed = json.loads(value)
        except (ValueError, RecursionError):
            return value  # text that only starts like a list
        if isinstance(parsed, list) and all(isinstance(m, dict) for m in parsed):
            return parsed
    return value
