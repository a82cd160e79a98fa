"""Batched completion of prompts: left-padded, KV-cached (`generate`'s cache), each sequence
stopped at its first end token or stop sequence, greedy or seeded sampling, tokens per second
counted. codeeval completes plain-text prompts (ended by the tokenizer's EOS and stop strings);
sft_eval answers chat-rendered ones (their own encoding, ended by the end-of-turn token).

Greedy output depends on the batch size and dtype (padding changes the matmul shapes; lm-eval
PR #1992 saw 3 points of pass@1 move with it), so both are recorded with the results."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from transformers import PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList

from codexlm.errors import UserError


@dataclass(frozen=True)
class Generated:
    raw: list[str]  # the decoded new tokens, up to max_new_tokens or a stop
    tokens: int  # new tokens up to each sequence's stop (what the model had to produce)
    seconds: float
    truncated_prompts: int  # prompts cut to their last tokens to fit the model's positions
    stopped: list[bool]  # per row: ended by an end token or a stop sequence, not by the budget

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


class _StopPerSequence(StoppingCriteria):
    """Marks a row done once its new text contains a stop sequence: finished rows are padded
    while the others go on, and generation ends when every row is done."""

    def __init__(self, tok: PreTrainedTokenizerBase, start: int, stops: Sequence[str]) -> None:
        self.tok, self.start, self.stops = tok, start, tuple(stops)

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        texts = self.tok.batch_decode(input_ids[:, self.start :], skip_special_tokens=True)
        done = [any(s in t for s in self.stops) for t in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def _end_ids(
    model: torch.nn.Module, tok: PreTrainedTokenizerBase, eos_ids: Sequence[int] | None
) -> list[int]:
    """The ids that end a row: `eos_ids`, else what `generate` falls back on, the tokenizer's
    EOS, else the model's generation_config's (one id or several)."""
    if eos_ids is not None:
        return list(eos_ids)
    if tok.eos_token_id is not None:
        return [tok.eos_token_id]
    config = getattr(model, "generation_config", None)
    found = getattr(config, "eos_token_id", None)
    return [] if found is None else [found] if isinstance(found, int) else list(found)


@torch.no_grad()
def complete(
    model: torch.nn.Module,
    tok: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    stops: Sequence[str],
    batch_size: int,
    temperature: float,
    top_p: float,
    seed: int,
    device: torch.device,
    encode: Callable[[str], list[int]] | None = None,
    eos_ids: Sequence[int] | None = None,
    limit: int | Literal["model"] | None = "model",
    setting: str = "codeeval.max_new_tokens",
) -> Generated:
    """One completion per prompt, in order. temperature 0 is greedy; otherwise sampling with
    top_p, seeded per batch so the same seed and batch size give the same samples.

    `encode` turns a prompt into ids (default: the tokenizer's own call, which adds what its
    post-processor adds; chat-rendered prompts bring their own markup). `eos_ids` end a row
    (default: the tokenizer's EOS), and its text is decoded up to the first of them. A
    prompt is cut to its last tokens so that it and `max_new_tokens` fit `limit` positions:
    by default the model's own, None for no cut. `setting` names the param of
    max_new_tokens in the error."""
    if limit == "model":
        limit = getattr(model.config, "max_position_embeddings", None) or getattr(
            model.config, "n_positions", None
        )
    if limit is not None and max_new_tokens >= limit:
        raise UserError(
            f"{setting}: {max_new_tokens} leaves no room for a prompt in the "
            f"model's {limit} positions; set it below {limit}"
        )
    encode = encode or (lambda p: tok(p).input_ids)
    ends = _end_ids(model, tok, eos_ids)
    if tok.pad_token_id is None:
        raise UserError("models/trained: the tokenizer has no pad token for batched generation")
    tok.padding_side = "left"  # new tokens follow every prompt's last token directly
    model.eval()
    raw: list[str] = []
    stopped: list[bool] = []
    n_tokens = truncated = 0
    start = time.perf_counter()
    for b in range(0, len(prompts), batch_size):
        batch = list(prompts[b : b + batch_size])
        ids = [encode(p) for p in batch]
        if limit is not None:
            keep = limit - max_new_tokens
            truncated += sum(len(x) > keep for x in ids)
            ids = [x[-keep:] for x in ids]
        width = max(len(x) for x in ids)
        pad = tok.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids], device=device)
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=device)
        torch.manual_seed(seed + b)
        greedy = temperature == 0
        # no stop strings, no criterion: it would decode every row at every new token
        criteria = [_StopPerSequence(tok, width, stops)] if stops else []
        out = model.generate(
            input_ids=input_ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=not greedy,
            temperature=None if greedy else temperature,
            top_p=None if greedy else top_p,
            top_k=None,
            use_cache=True,
            pad_token_id=pad,
            eos_token_id=ends or None,
            stopping_criteria=StoppingCriteriaList(criteria),
        )
        for row in out[:, width:].tolist():
            end = next((i for i, t in enumerate(row) if t in ends), None)
            # an end token need not be special (a template's added end-of-turn): cut there
            text = tok.decode(row if end is None else row[:end], skip_special_tokens=True)
            raw.append(text)
            stopped.append(end is not None or any(s in text for s in stops))
            n_tokens += sum(t != pad for t in row)
    return Generated(raw, n_tokens, time.perf_counter() - start, truncated, stopped)
