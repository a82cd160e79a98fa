"""Group Relative Policy Optimization (DeepSeekMath, arXiv 2402.03300), the math.

Each prompt gets G sampled completions; a completion's advantage is its reward minus its
group's mean (divided by the group's standard deviation when `scale`, as in the paper and
TRL's default; Dr. GRPO, arXiv 2503.20783, argues for not dividing). A group whose rewards
are all equal has advantage 0 everywhere: no gradient, so it is dropped from the batch and
counted. The loss is PPO's clipped surrogate per completion token, averaged over every
completion token of the batch (token-level normalisation, TRL's "dapo"/nanochat's mean:
long completions are not down-weighted per token), plus an optional KL penalty to a frozen
reference (the k3 estimator, exp(ref - logp) - (ref - logp) - 1, >= 0; off by default, as in
TRL). With one inner step the "old" log-probs are the current ones detached: the ratio is
exactly 1, and the gradient is REINFORCE's with a group baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

EPS = 1e-4  # added to a group's std: a group of near-equal rewards gets no huge advantages


def advantages(rewards: torch.Tensor, scale: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """rewards (P, G) -> advantages (P, G), and which groups carry a gradient (P,) (rewards
    not all equal)."""
    adv = rewards - rewards.mean(1, keepdim=True)
    if scale:
        adv = adv / (rewards.std(1, keepdim=True) + EPS)
    keep = rewards.amax(1) > rewards.amin(1)
    return adv * keep[:, None], keep


@dataclass(frozen=True)
class Stats:
    kl: torch.Tensor  # mean per-token KL estimate to the reference (0 without one)
    clipped: torch.Tensor  # the share of completion tokens whose ratio was clipped
    ratio: torch.Tensor  # the mean ratio over completion tokens


def loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    adv: torch.Tensor,
    mask: torch.Tensor,
    clip: float,
    ref_logp: torch.Tensor | None = None,
    kl_coef: float = 0.0,
) -> tuple[torch.Tensor, Stats]:
    """Clipped surrogate over completion tokens. logp, old_logp, ref_logp, mask: (B, T-1);
    adv: (B,), one per completion. Returns the loss (Σ over masked tokens / their count)."""
    mask = mask.to(logp.dtype)
    ratio = torch.exp(logp - old_logp)
    a = adv[:, None].to(logp.dtype)
    surrogate = torch.minimum(ratio * a, ratio.clamp(1 - clip, 1 + clip) * a)
    per_token = -surrogate
    n = mask.sum().clamp(min=1)
    kl = torch.zeros((), dtype=logp.dtype, device=logp.device)
    if ref_logp is not None and kl_coef > 0:
        d = ref_logp - logp
        k3 = torch.exp(d) - d - 1
        per_token = per_token + kl_coef * k3
        kl = (k3 * mask).sum().detach() / n
    clipped = (((ratio - 1).abs() > clip).to(logp.dtype) * mask).sum() / n
    out = (per_token * mask).sum() / n
    return out, Stats(kl, clipped.detach(), ((ratio * mask).sum() / n).detach())
