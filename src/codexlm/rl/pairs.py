"""Preference pairs for DPO: `prompt / chosen / rejected` records, read, checked and
tokenized; and pairs built from a model's own completions that the judge passed and failed.

A record's three fields are strings (plain text: the prompt continued by each answer, as
code completion does; each answer ends with the end token), or message lists: the prompt a
conversation and each answer an assistant message (or a list holding one) or a string,
rendered with the chat template (`codexlm.chat`; the answer is what the template adds after
the prompt's rendering with its generation prompt). A malformed record is one line naming the
file, the line and the field, exit 2.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from codexlm.chat import render
from codexlm.errors import UserError
from codexlm.records import _messages  # the instruction records' own message check

FIELDS = ("prompt", "chosen", "rejected")


@dataclass(frozen=True)
class Pair:
    prompt: list[int]
    chosen: list[int]  # completion tokens only: the prompt's never count
    rejected: list[int]


def read_pairs(path: str, key: str = "dpo.pairs") -> list[dict[str, Any]]:
    """The records of a .jsonl, each with the three fields (strings or message lists)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise UserError(f"{key}: {path}: cannot read ({e.strerror})") from None
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{key}: {path}:{n}"
        try:
            rec = json.loads(line)
        except ValueError:
            raise UserError(f"{where}: not JSON") from None
        if not isinstance(rec, dict):
            raise UserError(f"{where}: a {type(rec).__name__}, not an object")
        missing = [f for f in FIELDS if rec.get(f) in (None, "", [])]
        if missing:
            raise UserError(
                f"{where}: missing {', '.join(missing)} (a pair needs {', '.join(FIELDS)})"
            )
        for f in FIELDS:
            if not isinstance(rec[f], str | list):
                raise UserError(
                    f"{where}: {f} is a {type(rec[f]).__name__}, not a string or messages"
                )
        if isinstance(rec["prompt"], str) and not all(isinstance(rec[f], str) for f in FIELDS):
            raise UserError(f"{where}: a string prompt needs string chosen and rejected")
        out.append({**rec, "_where": where})
    if not out:
        raise UserError(f"{key}: {path} holds no pairs")
    return out


def _answer_messages(value: object, where: str, field: str) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"role": "assistant", "content": value}]
    msgs = _messages(value, where, field)
    if [m["role"] for m in msgs] != ["assistant"]:
        raise UserError(f"{where}: {field} must be one assistant message")
    return msgs


def encode_pair(tok: PreTrainedTokenizerBase, rec: dict[str, Any]) -> Pair:
    where = rec["_where"]
    if isinstance(rec["prompt"], str):
        eos = [tok.eos_token_id]
        return Pair(
            tok(rec["prompt"]).input_ids,
            tok(rec["chosen"], add_special_tokens=False).input_ids + eos,
            tok(rec["rejected"], add_special_tokens=False).input_ids + eos,
        )
    if not tok.chat_template:
        raise UserError(f"{where}: message lists need a chat template; the tokenizer has none")
    prompt = _messages(rec["prompt"], where, "prompt")
    head = render(tok, prompt, generation_prompt=True)
    answers = []
    for f in ("chosen", "rejected"):
        full = render(tok, prompt + _answer_messages(rec[f], where, f), generation_prompt=False)
        if not full.startswith(head):
            raise UserError(f"{where}: the chat template renders the {f} conversation "
                            "without the prompt's rendering as its start")  # fmt: skip
        answers.append(tok(full[len(head) :], add_special_tokens=False).input_ids)
    return Pair(tok(head, add_special_tokens=False).input_ids, *answers)


def load_pairs(tok: PreTrainedTokenizerBase, path: str, context: int) -> list[Pair]:
    """Every pair tokenized, cut to fit `context` (the prompt's start goes first, as
    generation cuts a long prompt)."""
    out = []
    for rec in read_pairs(path):
        p = encode_pair(tok, rec)
        longest = max(len(p.chosen), len(p.rejected))
        if longest >= context:
            raise UserError(
                f"{rec['_where']}: an answer of {longest} tokens does not fit model.context "
                f"({context}) with its prompt"
            )
        out.append(Pair(p.prompt[-(context - longest) :], p.chosen, p.rejected))
    return out


def from_verdicts(
    prompts: dict[str, str], samples: Sequence[tuple[str, str]], passed: Sequence[bool]
) -> list[dict[str, str]]:
    """Pairs from sampled completions judged: per task, each passing completion against a
    failing one (in sample order, each used once; identical texts never paired)."""
    good: dict[str, list[str]] = {}
    bad: dict[str, list[str]] = {}
    for (task_id, completion), ok in zip(samples, passed, strict=True):
        box = good if ok else bad
        if completion not in box.setdefault(task_id, []):
            box[task_id].append(completion)
    out = []
    for task_id in prompts:
        for c, r in zip(good.get(task_id, []), bad.get(task_id, []), strict=False):
            out.append({"prompt": prompts[task_id], "chosen": c, "rejected": r, "task_id": task_id})
    return out
