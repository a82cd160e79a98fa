"""Direct Preference Optimization (Rafailov et al. 2023, arXiv 2305.18290), the math.

With log pi(y | x) the sum of a completion's token log-probs (prompt and padding never
count: `codexlm.rl.logprobs`), the implicit reward of a completion is
beta * (log pi(y | x) - log ref(y | x)), and with h = (pi_c - ref_c) - (pi_r - ref_r):

- sigmoid (DPO, eq. 7): loss = -log sigmoid(beta * h)
- ipo (Azar et al. 2023, arXiv 2310.12036, eq. 17): loss = (h - 1 / (2 beta))^2

the forms of eric-mitchell/direct-preference-optimization's `preference_loss` (without label
smoothing). At step 0, policy = reference, h = 0 and the sigmoid loss is ln 2.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

Loss = Literal["sigmoid", "ipo"]


def preference_loss(
    pi_chosen: torch.Tensor,
    pi_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    kind: Loss,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean loss over the pairs (B,), and TRL's metrics (detached)."""
    h = (pi_chosen - ref_chosen) - (pi_rejected - ref_rejected)
    losses = (h - 1 / (2 * beta)) ** 2 if kind == "ipo" else -F.logsigmoid(beta * h)
    chosen = beta * (pi_chosen - ref_chosen).detach()
    rejected = beta * (pi_rejected - ref_rejected).detach()
    metrics = {
        "rewards/chosen": chosen.mean(),
        "rewards/rejected": rejected.mean(),
        "rewards/margins": (chosen - rejected).mean(),
        "rewards/accuracies": (chosen > rejected).float().mean(),
    }
    return losses.mean(), metrics
