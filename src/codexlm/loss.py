"""The training loss of a causal LM without its full logits: a chunked linear cross-entropy.

At GPT-2's vocabulary (50k) and a batch of 32 x 1024 tokens, fp32 logits take 6.6 GB, and
autograd keeps them and their softmax for the backward. Here the output projection and the
cross-entropy run together over chunks of tokens: each chunk's gradients (for the hidden
states and the head's weight) are computed in the forward, as Liger Kernel's fused linear
cross-entropy does, and its logits are dropped at once; the backward only scales them.
Only one chunk of logits exists at any time.

Targets are already shifted (`targets[:, t]` is the token after `inputs[:, t]`): the data
windows are built that way (codexlm.batches), so no position ever scores its own input.

Instruction rows (codexlm.packing) add position ids, segments (the block-diagonal mask) and
the step's target count: their loss is the summed NLL of this micro-batch's targets (labels
other than -100) divided by the targets of the whole step, every micro-batch and rank, so
that the step's gradient is that of Σ NLL / Σ targets however the step is split. Text
windows whose attention stops at document bounds (`train.doc_mask`) add position ids and
segments without a divisor: every token is a target, and the loss stays their mean.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from codexlm.metrics import lm_loss
from codexlm.packing import IGNORE, attention_mask

# Logits per chunk, in fp32 values. On a GPU 2**26 (256 MB): at vocab 50k that is 1280 tokens.
# On a CPU 2**22 (16 MB), so that a chunk's logits stay in the last-level cache between the
# head's matmul that writes them and the softmax that reads them back: at the CPU default
# (3072 tokens a micro-batch, vocab 4096) three chunks of 1024 take the loss's forward +
# backward 59 ms against 71 ms as one chunk of 3072 (an AMD EPYC, natively and as AVX2;
# bench/RESULTS.md). The chunking only reorders sums: the same arithmetic up to rounding.
CHUNK_ELEMENTS = {"cuda": 2**26, "cpu": 2**22}


def chunk_budget(device: torch.device) -> int:
    """The logits a chunk may hold on `device` (other accelerators: the GPU's)."""
    return CHUNK_ELEMENTS.get(device.type, CHUNK_ELEMENTS["cuda"])


# Model types whose causal-LM forward is exactly `lm_head(trunk(x))`: no logit scaling or
# soft-capping that computing the head here would skip. Others use the full logits.
PLAIN_HEAD_TYPES = frozenset({"llama", "gpt2", "mistral", "qwen2", "qwen3"})


def chunk_tokens(vocab: int, budget: int = CHUNK_ELEMENTS["cuda"]) -> int:
    """Tokens per chunk: within `budget` logits, a multiple of 128 rows for the matmul."""
    return max(128, budget // vocab // 128 * 128)


class _LinearCrossEntropy(torch.autograd.Function):
    """mean_i CE(hidden_i @ weight.T, target_i), its gradients computed chunk by chunk."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int
    ) -> torch.Tensor:
        n = hidden.shape[0]
        total = torch.zeros((), device=hidden.device, dtype=torch.float32)
        grad_hidden = torch.empty_like(hidden)
        # fp32 accumulation across chunks, whatever the matmuls' (autocast) dtype
        grad_weight = (
            torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        )
        for i in range(0, n, chunk):
            h, t = hidden[i : i + chunk], targets[i : i + chunk]
            logits = (h @ weight.t()).float()  # the autocast dtype under bf16, then fp32
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
            # d(CE)/d(logits) = softmax - one_hot. The softmax overwrites the logits; the
            # one-hot part (the target rows of the weight, and h into the targets' rows) and
            # the 1/n are applied to the matmuls' (chunk, d) and (vocab, d) results, so the
            # (chunk, vocab) tensor is written once more and never passed over again: a
            # separate scale-and-scatter pass over it was 4% of the default's CPU step
            probs = logits.sub_(lse[:, None]).exp_()
            if not torch.is_autocast_enabled(h.device.type):
                probs = probs.to(weight.dtype)  # under autocast the matmuls pick their dtype
            grad_hidden[i : i + chunk] = (probs @ weight - weight[t]) / n
            if grad_weight is not None:
                grad_weight += (probs.t() @ h).float()
                grad_weight.index_add_(0, t, h.float(), alpha=-1.0)
        if grad_weight is not None:
            grad_weight /= n
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        return total / n

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad_hidden, grad_weight = ctx.saved_tensors
        dw = None if grad_weight is None else (grad_weight * grad_out).to(ctx.weight_dtype)
        return grad_hidden * grad_out.to(grad_hidden.dtype), dw, None, None


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int
) -> torch.Tensor:
    """Mean cross-entropy of `hidden @ weight.T` against `targets`, in chunks of `chunk` rows.

    hidden: (N, D); weight: (V, D); targets: (N,). Without grad mode (validation) the
    gradient work is skipped and each chunk is a plain cross-entropy.
    """
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _LinearCrossEntropy.apply(hidden, weight, targets, chunk)
    total = torch.zeros((), device=hidden.device, dtype=torch.float32)
    for i in range(0, hidden.shape[0], chunk):
        logits = (hidden[i : i + chunk] @ weight.t()).float()
        total += F.cross_entropy(logits, targets[i : i + chunk], reduction="sum")
    return total / hidden.shape[0]


def split_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Linear] | None:
    """The transformer trunk and its output projection, when the loss may compute the head
    itself: a known model type whose head is a bias-free nn.Linear (not LoRA-wrapped)."""
    hf = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft
    config = getattr(hf, "config", None)
    if getattr(config, "model_type", None) not in PLAIN_HEAD_TYPES:
        return None
    head = hf.get_output_embeddings()
    trunk = getattr(hf, "base_model", hf)
    if type(head) is not torch.nn.Linear or head.bias is not None or trunk is hf:
        return None
    return trunk, head


class CausalLMLoss(torch.nn.Module):
    """The model and its training loss as one module (so torch.compile fuses them and DDP
    sees one forward): chunked linear cross-entropy where the head allows, else the
    cross-entropy of the model's full logits."""

    def __init__(self, model: torch.nn.Module, chunked: bool = True) -> None:
        super().__init__()
        self.model = model
        parts = split_head(model) if chunked else None
        self.chunked = parts is not None
        if parts is not None:
            self.trunk, self.head = parts
            weight = self.head.weight
            self.chunk = chunk_tokens(weight.shape[0], chunk_budget(weight.device))

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        positions: torch.Tensor | None = None,
        segments: torch.Tensor | None = None,
        denom: torch.Tensor | float | None = None,
    ) -> torch.Tensor:
        if denom is not None:
            return self._rows(x, y, positions, segments, denom)
        kw = model_inputs(self.model, x, positions, segments)  # segments: doc_mask windows
        if not self.chunked:
            return lm_loss(self.model(**kw).logits, y)
        hidden = self.trunk(**kw).last_hidden_state
        return linear_cross_entropy(hidden.flatten(0, 1), self.head.weight, y.flatten(), self.chunk)

    def _rows(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        positions: torch.Tensor | None,
        segments: torch.Tensor,
        denom: torch.Tensor | float,
    ) -> torch.Tensor:
        """Σ NLL of the targets / denom (the step's targets), attention within each example."""
        kw = model_inputs(self.model, x, positions, segments)
        if not self.chunked:
            return rows_nll(self.model(**kw).logits, y) / denom
        hidden = self.trunk(**kw).last_hidden_state.flatten(0, 1)
        keep = y.flatten() != IGNORE  # masked positions get no logits, so no gradient
        n = keep.sum()
        mean = linear_cross_entropy(hidden[keep], self.head.weight, y.flatten()[keep], self.chunk)
        return mean * n / denom


def model_inputs(
    model: torch.nn.Module,
    x: torch.Tensor,
    positions: torch.Tensor | None = None,
    segments: torch.Tensor | None = None,
) -> dict[str, Any]:
    """The model's keywords for a batch; with segments, each token's attention kept within
    its own segment (packed examples, or documents under doc_mask) and `positions` its ids."""
    kw: dict[str, Any] = dict(input_ids=x, use_cache=False)
    if segments is not None:
        mask = attention_mask(segments, attn_implementation(model), torch.float32)
        kw.update(position_ids=positions, attention_mask=mask)
    return kw


def rows_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token NLL over the targets (labels other than -100, already shifted)."""
    return F.cross_entropy(
        logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE, reduction="sum"
    )


def attn_implementation(model: torch.nn.Module) -> str:
    hf = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft
    return getattr(hf.config, "_attn_implementation", None) or "eager"
