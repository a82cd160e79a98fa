"""Batched completion of prompts: left-padded, KV-cached (`generate`'s cache), each sequence
stopped at its first stop sequence, greedy or seeded sampling, tokens per second counted.

Greedy output depends on the batch size and dtype (padding changes the matmul shapes; lm-eval
PR #1992 saw 3 points of pass@1 move with it), so both are recorded with the results."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList

from codexlm.errors import UserError


@dataclass(frozen=True)
class Generated:
    raw: list[str]  # the decoded new tokens, up to max_new_tokens or a stop
    tokens: int  # new tokens up to each sequence's stop (what the model had to produce)
    seconds: float
    truncated_prompts: int  # prompts cut to their last tokens to fit the model's positions

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
) -> Generated:
    """One completion per prompt, in order. temperature 0 is greedy; otherwise sampling with
    top_p, seeded per batch so the same seed and batch size give the same samples."""
    limit = getattr(model.config, "max_position_embeddings", None) or getattr(
        model.config, "n_positions", None
    )
    if limit is not None and max_new_tokens >= limit:
        raise UserError(
            f"codeeval.max_new_tokens: {max_new_tokens} leaves no room for a prompt in the "
            f"model's {limit} positions; set it below {limit}"
        )
    if tok.pad_token_id is None:
        raise UserError("models/trained: the tokenizer has no pad token for batched generation")
    tok.padding_side = "left"  # new tokens follow every prompt's last token directly
    model.eval()
    raw: list[str] = []
    n_tokens = truncated = 0
    start = time.perf_counter()
    for b in range(0, len(prompts), batch_size):
        batch = list(prompts[b : b + batch_size])
        ids = [tok(p).input_ids for p in batch]
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
            eos_token_id=tok.eos_token_id,
            stopping_criteria=StoppingCriteriaList([_StopPerSequence(tok, width, stops)]),
        )
        for row in out[:, width:].tolist():
            text = tok.decode(row, skip_special_tokens=True)
            raw.append(text)
            n_tokens += sum(t != pad for t in row)
    return Generated(raw, n_tokens, time.perf_counter() - start, truncated)
