"""Log-probabilities of completion tokens under a causal LM: what GRPO's ratio and DPO's
implicit reward are made of, computed one way for both.

A batch is `Rows`: prompts left-padded to one width and their completions right-padded after
them, so every completion starts at the same column, with an attention mask (padding
attends nowhere and is attended by nothing) and a target mask, 1 exactly on completion tokens:
prompt tokens and padding never count. Position ids restart at each row's first real token,
as `generate` numbers them, so the training forward sees what the sampler saw.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Rows:
    input_ids: torch.Tensor  # (B, T)
    attention: torch.Tensor  # (B, T) 1 on real tokens
    targets: torch.Tensor  # (B, T) 1 on completion tokens (prompt and padding: 0)

    def to(self, device: torch.device) -> Rows:
        return Rows(*(t.to(device) for t in (self.input_ids, self.attention, self.targets)))


def rows_of(
    prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], pad: int
) -> Rows:
    """Prompt ids left-padded, completion ids right-padded after them."""
    p_width = max(len(p) for p in prompts)
    c_width = max(1, max(len(c) for c in completions))
    ids, att, tgt = [], [], []
    for p, c in zip(prompts, completions, strict=True):
        left, right = p_width - len(p), c_width - len(c)
        ids.append([pad] * left + list(p) + list(c) + [pad] * right)
        att.append([0] * left + [1] * (len(p) + len(c)) + [0] * right)
        tgt.append([0] * (left + len(p)) + [1] * len(c) + [0] * right)
    return Rows(torch.tensor(ids), torch.tensor(att), torch.tensor(tgt))


def position_ids(attention: torch.Tensor) -> torch.Tensor:
    """What `generate` computes for left-padded rows: 0 at each row's first real token."""
    return (attention.long().cumsum(-1) - 1).clamp(min=0)


def token_logprobs(model: torch.nn.Module, rows: Rows, temperature: float = 1.0) -> torch.Tensor:
    """(B, T-1): log p(token t+1 | tokens <= t) at temperature `temperature` where token t+1
    is a completion token, 0 elsewhere (mask with `rows.targets[:, 1:]`). fp32 log-softmax:
    a sum over a completion is a difference of large numbers in DPO."""
    out = model(
        input_ids=rows.input_ids,
        attention_mask=rows.attention,
        position_ids=position_ids(rows.attention),
        use_cache=False,
    )
    logits = out.logits[:, :-1].float() / temperature
    picked = torch.log_softmax(logits, -1).gather(-1, rows.input_ids[:, 1:, None]).squeeze(-1)
    return picked * rows.targets[:, 1:]


def sequence_logprobs(model: torch.nn.Module, rows: Rows) -> torch.Tensor:
    """(B,): the sum of each row's completion-token log-probs (DPO's log pi(y | x))."""
    return token_logprobs(model, rows).sum(-1)
