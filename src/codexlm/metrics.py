"""Loss, perplexity, bits per byte, next-token accuracy and model FLOPs utilisation."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def token_nll(
    logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed negative log-likelihood, scored tokens and correct argmax predictions.

    `logits[:, t]` is the prediction for `targets[:, t]`: the caller has already shifted
    (targets are inputs moved one token left), so position t never sees its own target.
    """
    logits = logits.float().flatten(0, 1)
    targets = targets.flatten()
    nll = F.cross_entropy(logits, targets, reduction="none")
    correct = logits.argmax(-1) == targets
    if mask is None:
        return nll.sum(), torch.tensor(targets.numel()), correct.sum()
    mask = mask.flatten()
    return (nll * mask).sum(), mask.sum(), (correct & mask).sum()


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy for training: targets are already shifted, and unlike
    token_nll nothing else (no argmax) is computed from the logits."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


def bits_per_byte(total_nats: float, n_bytes: int) -> float:
    """Compression rate of the text: comparable across tokenizers, and with xz."""
    return total_nats / (math.log(2) * n_bytes)


def flops_per_token(n_params: int, n_layer: int, d_model: int, context: int) -> float:
    """Training FLOPs per token: 6N for the matmuls plus attention scores (PaLM appendix B)."""
    return 6 * n_params + 12 * n_layer * d_model * context


# Dense bf16 peak FLOP/s (no sparsity), by a substring of torch.cuda.get_device_name(); the
# first match wins, so variants come before their family's name.
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 125e12,
    "L4": 121e12,
    "4090": 165e12,
    "3090": 71e12,
}


def peak_flops(device_name: str) -> float | None:
    for key, flops in PEAK_BF16_FLOPS.items():
        if key in device_name:
            return flops
    return None


def mfu(tokens_per_s: float, flops_per_tok: float, device_name: str) -> float | None:
    peak = peak_flops(device_name)
    return None if peak is None else tokens_per_s * flops_per_tok / peak
