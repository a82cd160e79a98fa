"""Evaluation on instruction data: answer-token loss, and greedy answers to held-out prompts.

The answer loss is Σ NLL / Σ targets over every example of the split (targets as trained:
the answers and their end-of-turn tokens), scored on packed rows with attention kept within
each example. Generation renders each held-out conversation up to its last trained answer
with the chat template and its generation prompt, decodes greedily and stops at the
end-of-turn token: an answer is an exact match when it equals the reference (surrounding
whitespace ignored), and it stopped by itself when the model emitted end-of-turn within
`max_new_tokens`. Both are reported per task too: a task is named by the first word of the
conversation's system message (the built-in dataset's `body` and `call`, tools/instruct.py).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from transformers import PreTrainedTokenizerBase

from codexlm import chat, records
from codexlm.generate import complete
from codexlm.loss import rows_nll
from codexlm.packing import Split, attention_mask, build_rows, fixed_rows

SAMPLES = 20  # conversations shown in samples.md


@dataclass(frozen=True)
class Answer:
    task: str
    prompt: str  # the last user message
    answer: str
    reference: str
    stopped: bool

    @property
    def exact(self) -> bool:
        return self.answer.strip() == self.reference.strip()


@torch.no_grad()
def answer_loss(
    model: torch.nn.Module, split: Split, batch_size: int, device: torch.device
) -> dict[str, float]:
    """Σ NLL / Σ targets over every example of `split`, and its perplexity."""
    model.eval()
    impl = getattr(model.config, "_attn_implementation", None) or "eager"
    total, count = 0.0, 0
    for rows in fixed_rows(split, len(split.keep), batch_size):
        r = build_rows(split, rows)
        mask = attention_mask(r.segments.to(device), impl, torch.float32)
        logits = model(
            input_ids=r.inputs.to(device),
            position_ids=r.positions.to(device),
            attention_mask=mask,
            use_cache=False,
        ).logits
        total += float(rows_nll(logits, r.labels.to(device)))
        count += int((r.labels != -100).sum())
    loss = total / max(count, 1)
    return {"answer_loss": loss, "answer_perplexity": math.exp(min(loss, 700)), "targets": count}


def task_of(messages: list[dict[str, Any]]) -> str:
    system = next((m["content"] for m in messages if m["role"] == "system"), "")
    words = re.findall(r"[A-Za-z0-9_]+", system)
    return words[0].lower() if words else "none"


def held_out(prepared: Path, split: str, limit: int) -> list[dict[str, Any]]:
    """The split's examples (at most `limit`; 0: all), in file order."""
    texts = pq.read_table(prepared / f"{split}.parquet", columns=["text"])["text"].to_pylist()
    return [records.loads(t) for t in (texts[:limit] if limit else texts)]


def answers(
    model: torch.nn.Module,
    tok: PreTrainedTokenizerBase,
    examples: list[dict[str, Any]],
    max_new_tokens: int,
    batch_size: int,
    device: torch.device,
) -> list[Answer]:
    """Greedy answers to each example's prompt: the conversation before its last trained
    assistant turn, rendered with the template and its generation prompt, encoded as
    training encoded it (the markup as special tokens, nothing added) and stopped at the
    template's end-of-turn.

    A prompt is cut only where the model cannot go past its positions (gpt2's absolute
    `n_positions`), keeping its end, the generation prompt; a rotary model reads the whole
    conversation, as the text samples of codexlm.evaluate do: cutting its start would drop
    the system message that names the task."""
    backend, eot = chat.encoder(tok), chat.end_of_turn(tok)
    last = [
        max(i for i, m in enumerate(e["messages"]) if m["role"] == "assistant") for e in examples
    ]
    prompts = [
        chat.render(tok, e["messages"][:i], True) for e, i in zip(examples, last, strict=True)
    ]
    gen = complete(
        model,
        tok,
        prompts,
        max_new_tokens=max_new_tokens,
        stops=(),
        batch_size=batch_size,
        temperature=0.0,
        top_p=1.0,
        seed=0,
        device=device,
        encode=lambda p: backend.encode(p, add_special_tokens=False).ids,
        eos_ids=[tok.convert_tokens_to_ids(eot)],
        limit=getattr(model.config, "n_positions", None),
        setting="evaluate.max_new_tokens",
    )
    out: list[Answer] = []
    for e, i, text, stopped in zip(examples, last, gen.raw, gen.stopped, strict=True):
        user = next((m["content"] for m in reversed(e["messages"][:i]) if m["role"] == "user"), "")
        out.append(Answer(task_of(e["messages"]), user, text, e["messages"][i]["content"], stopped))
    return out


def generation_metrics(results: list[Answer]) -> dict[str, float]:
    """Exact match and the share that stopped by themselves, overall and per task."""
    metrics = {
        "exact_match": float(np.mean([a.exact for a in results])),
        "stop_rate": float(np.mean([a.stopped for a in results])),
        "answers": len(results),
    }
    for task in sorted({a.task for a in results}):
        mine = [a for a in results if a.task == task]
        metrics[f"{task}/exact_match"] = float(np.mean([a.exact for a in mine]))
        metrics[f"{task}/stop_rate"] = float(np.mean([a.stopped for a in mine]))
    return metrics


def _cell(text: str) -> str:
    """A markdown table cell: the text verbatim in a code span, newlines shown as ⏎."""
    text = text.replace("|", "\\|").replace("\n", "⏎")
    return f"`{text}`" if text else "(empty)"


def samples_markdown(results: list[Answer], n: int = SAMPLES) -> str:
    rows = [
        "# Samples\n",
        "Greedy answers to held-out prompts, stopped at end-of-turn; ⏎ marks a newline.\n",
        "| task | prompt | answer | reference | exact | stopped |",
        "|---|---|---|---|---|---|",
    ]
    for a in results[:n]:
        rows.append(
            f"| {a.task} | {_cell(a.prompt)} | {_cell(a.answer)} | {_cell(a.reference)} | "
            f"{'yes' if a.exact else 'no'} | {'yes' if a.stopped else 'no'} |"
        )
    return "\n".join(rows) + "\n"
