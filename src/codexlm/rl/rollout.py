"""Sampled completions with their token ids and the sampler's log-probabilities: GRPO's
rollouts, through transformers' batched, KV-cached `generate` with left padding, as
`codexlm.generate.complete` does for evaluation.

A row's completion ends at the token that completes its first stop sequence or at the end
token (both kept: emitting them is the policy's decision to stop), or at max_new_tokens; the
judge gets its text cut before the stop (`scoring.truncate`, as codeeval cuts). The sampler's
log-prob of a token is log softmax(logits / temperature), the distribution sampled from when
top_p is 1 (GRPO's default; with top_p < 1 the nucleus renormalises and the policy gradient
is that of the tempered, unrestricted policy, as in TRL).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase, StoppingCriteriaList

from codexlm.codeeval.scoring import truncate
from codexlm.errors import UserError
from codexlm.generate import _StopPerSequence  # the same per-row stop as evaluation's
from codexlm.rl.logprobs import Rows, rows_of


@dataclass(frozen=True)
class Rollouts:
    rows: Rows  # prompt + completion tokens, the completion tokens marked as targets
    sampler_logprobs: torch.Tensor  # (B, T-1) aligned with token_logprobs(model, rows)
    texts: list[str]  # each completion's text up to its first stop: what the judge runs
    lengths: list[int]  # completion tokens per row


def cut(
    ids: Sequence[int], tok: PreTrainedTokenizerBase, ends: Sequence[int], stops: Sequence[str]
) -> int:
    """How many of a row's new tokens are its completion: up to and including its first end
    token, or the token whose text completes a stop sequence."""
    for k, t in enumerate(ids, 1):
        if t in ends:
            return k
        if stops and any(s in tok.decode(ids[:k], skip_special_tokens=True) for s in stops):
            return k
    return len(ids)


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    tok: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    stops: Sequence[str],
    temperature: float,
    top_p: float,
    seed: int,
    batch_size: int,
    device: torch.device,
    limit: int | None = None,
) -> Rollouts:
    """One sampled completion per prompt (repeat a prompt G times for a group), in order;
    the same seed, prompts and batch size give the same completions. A prompt is cut to its
    last tokens so that it and max_new_tokens fit `limit` positions (as evaluation cuts)."""
    if tok.pad_token_id is None or tok.eos_token_id is None:
        raise UserError("model.init: its tokenizer needs a pad and an end token to sample rollouts")
    pad, ends = tok.pad_token_id, [tok.eos_token_id]
    was_training = model.training
    model.eval()
    prompt_ids = [tok(p).input_ids for p in prompts]
    if limit is not None:
        prompt_ids = [x[-(limit - max_new_tokens) :] for x in prompt_ids]
    completions: list[list[int]] = []
    logps: list[list[float]] = []
    for b in range(0, len(prompts), batch_size):
        ids = prompt_ids[b : b + batch_size]
        width = max(len(x) for x in ids)
        input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids], device=device)
        mask = (torch.arange(width, device=device)[None] >= torch.tensor(
            [width - len(x) for x in ids], device=device)[:, None]).long()  # fmt: skip
        torch.manual_seed(seed + b)
        criteria = StoppingCriteriaList([_StopPerSequence(tok, width, stops)] if stops else [])
        out = model.generate(
            input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens,
            do_sample=True, temperature=temperature, top_p=top_p, top_k=None, use_cache=True,
            pad_token_id=pad, eos_token_id=ends, return_dict_in_generate=True,
            output_logits=True,
            stopping_criteria=criteria,
        )  # fmt: skip
        new = out.sequences[:, width:]
        # the raw logits of each new position, tempered as the sampler's warper tempers them
        lp = torch.log_softmax(torch.stack(out.logits, 1).float() / temperature, -1)
        picked = lp.gather(-1, new[..., None]).squeeze(-1)
        for row, row_lp in zip(new.tolist(), picked.tolist(), strict=True):
            k = cut(row, tok, ends, stops)
            completions.append(row[:k])
            logps.append(row_lp[:k])
    model.train(was_training)
    rows = rows_of(prompt_ids, completions, pad)
    sampler = torch.zeros(rows.input_ids.shape[0], rows.input_ids.shape[1] - 1)
    start = max(len(p) for p in prompt_ids) - 1  # the column predicting the first new token
    for i, lp in enumerate(logps):
        sampler[i, start : start + len(lp)] = torch.tensor(lp)
    texts = [truncate(tok.decode(c, skip_special_tokens=True), stops) for c in completions]
    return Rollouts(rows, sampler, texts, [len(c) for c in completions])
