"""The optimizer and its learning-rate schedule: AdamW or Muon, cosine or warmup-stable-decay.

Muon (Jordan et al. 2024) orthogonalises the momentum of each hidden weight matrix with a
few Newton-Schulz iterations, so every direction of the matrix moves at the same rate; as
its authors prescribe, it is for the 2-D matrices inside the blocks only, and AdamW keeps
the embeddings, the output head (tied to them here), norms and biases. Its updates are
scaled to AdamW's size (Moonshot's "Muon is scalable", 2025), so `train.lr` and
`train.weight_decay` mean the same for both halves.

`Muon` below is `torch.optim.Muon`'s update with `adjust_lr_fn="match_rms_adamw"` (same
coefficients, Nesterov momentum, decoupled weight decay; a test holds them equal), except
that the iterations of all same-shape matrices run as one batched iteration instead of one
matrix at a time (a model's hidden matrices come in a few shapes, and on small matrices the
per-call cost dominates), and that they run in the precision that is fast where they run:
bf16 on GPUs, as torch's, and fp32 on CPUs (`newton_schulz_dtype`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # what the optimizer and the schedule read: attributes of the train block
    from codexlm.params import Train


def lr_at(step: int, cfg: Train) -> float:
    """Linear warmup to lr over steps 0..warmup-1; then either a cosine from lr to min_lr, or
    (wsd) lr held until the last `decay_fraction` of the steps and a linear decay to min_lr.
    Both reach exactly min_lr at the last step (steps - 1)."""
    lr, min_lr, warmup, last = cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.steps - 1
    if step < warmup:
        return lr * (step + 1) / warmup
    if cfg.schedule == "wsd":
        # the decay's first step is still at lr, so a decay of n steps takes n - 1 to fall
        start = max(warmup, last - max(round(cfg.decay_fraction * cfg.steps), 1) + 1)
        progress = 1.0 if last <= start else min(max(step - start, 0) / (last - start), 1.0)
        return min_lr + (lr - min_lr) * (1 - progress)
    span = last - warmup
    progress = 1.0 if span <= 0 else min((step - warmup) / span, 1.0)
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))


# Keller Jordan's quintic Newton-Schulz coefficients and iteration count, torch.optim.Muon's
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5


def newton_schulz_dtype(device: torch.device) -> torch.dtype:
    """bf16 on a GPU, fp32 on every CPU. A CPU without native bf16 (AVX2 only: no AVX512-BF16
    or AMX) emulates a bf16 matmul about 20-100x slower than fp32 (an AMD EPYC: 5 iterations
    over the default's 28 matrices 1,645 ms against 149 ms; bench/RESULTS.md); on one with
    AMX, fp32 costs ~10 ms a step more than bf16. fp32 everywhere on CPU also makes the
    iteration's arithmetic the same whatever the CPU's bf16 support."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def orthogonalise(
    g: torch.Tensor,
    steps: int = NS_STEPS,
    eps: float = 1e-7,
    dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """Newton-Schulz on a stack of same-shape wide matrices (batch, rows <= columns), in
    `dtype`: about U V^T of each (singular values pushed into ~[0.7, 1.2], which trains as
    well)."""
    a, b, c = NS_COEFFICIENTS
    x = g.to(dtype)
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)  # spectral norm <= 1
    for _ in range(steps):
        gram = x @ x.mT
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x


def wide(m: torch.Tensor, like: torch.Tensor | None = None) -> torch.Tensor:
    """`m` transposed if `like` (default: `m` itself) is tall: a tall matrix goes into the
    iteration wide, and its wide result comes back tall."""
    ref = m if like is None else like
    return m.mT if ref.shape[0] > ref.shape[1] else m


class Muon(torch.optim.Optimizer):
    """Muon for 2-D matrices, one group option besides lr and weight decay: `momentum`.
    State: one `momentum_buffer` per matrix, as torch's. `ns_dtype`: the Newton-Schulz
    precision (the default: `newton_schulz_dtype` of the matrices' device)."""

    def __init__(
        self,
        params: list[dict[str, Any]],
        lr: float,
        weight_decay: float,
        momentum: float = 0.95,
        ns_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, "momentum": momentum})
        if any(p.ndim != 2 for g in self.param_groups for p in g["params"]):
            raise ValueError("Muon is for 2-D matrices only")
        first = next((p for g in self.param_groups for p in g["params"]), None)
        device = first.device if first is not None else torch.device("cpu")
        # not a group option: the state dict stays plain tensors and numbers
        self.ns_dtype = ns_dtype or newton_schulz_dtype(device)

    @torch.no_grad()
    def step(self) -> None:  # type: ignore[override]  # no closure: the loop has none
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            for p in params:  # once: a setdefault would allocate a buffer every step
                if "momentum_buffer" not in self.state[p]:
                    self.state[p]["momentum_buffer"] = torch.zeros_like(p)
            bufs = [self.state[p]["momentum_buffer"] for p in params]
            momentum, lr = group["momentum"], group["lr"]
            torch._foreach_lerp_(bufs, grads, 1 - momentum)
            updates = torch._foreach_lerp(grads, bufs, momentum)  # Nesterov
            torch._foreach_mul_(params, 1 - lr * group["weight_decay"])
            # tall matrices are orthogonalised transposed, so that each shape is wide
            by_shape: dict[tuple[int, ...], list[int]] = {}
            for i, p in enumerate(params):
                by_shape.setdefault(tuple(sorted(p.shape)), []).append(i)
            for (_, cols), members in by_shape.items():
                stack = torch.stack([wide(updates[i]) for i in members])
                for i, o in zip(members, orthogonalise(stack, dtype=self.ns_dtype), strict=True):
                    # match_rms_adamw: an orthogonal update's RMS is 1/sqrt(cols); AdamW's ~0.2
                    params[i].add_(wide(o, like=params[i]), alpha=-lr * 0.2 * math.sqrt(cols))


def hidden_matrices(model: torch.nn.Module) -> set[torch.nn.Parameter]:
    """The trainable 2-D weights inside the blocks: not embeddings (token or position) and
    not the output head, whose rows are per-token vectors rather than a linear map."""
    embeddings = {
        p for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()
    }
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None:
        embeddings |= set(head.parameters())
    return {p for p in model.parameters() if p.requires_grad and p.ndim == 2} - embeddings


def adamw(
    params: list[torch.nn.Parameter],
    cfg: Train,
    decay: set[torch.nn.Parameter],
    hidden: set[torch.nn.Parameter],
) -> torch.optim.AdamW:
    """Fused AdamW; only the parameters in `decay` get weight decay, and those not in
    `hidden` train at `embed_lr_scale` times the lr (each group's `lr_scale`).

    Fused: one kernel for all parameters, and it honours `found_inf` (skip a step) on the
    device, which is how non-finite steps are skipped without a sync.
    """
    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    for p in params:
        scale = 1.0 if p in hidden else cfg.embed_lr_scale
        groups.setdefault((cfg.weight_decay if p in decay else 0.0, scale), []).append(p)
    return torch.optim.AdamW(
        [
            {"params": ps, "weight_decay": wd, "lr": cfg.lr * scale, "lr_scale": scale}
            for (wd, scale), ps in groups.items()
        ],
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        fused=True,
    )


class MuonAdamW:
    """Muon for the hidden matrices and AdamW for the rest, stepped as one optimizer: the
    loop sets every group's lr, checkpoints store both states under one dict."""

    def __init__(self, muon: Muon, rest: torch.optim.AdamW) -> None:
        self.muon, self.rest = muon, rest
        self.found_inf: torch.Tensor | None = None

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [*self.muon.param_groups, *self.rest.param_groups]

    def step(self) -> None:
        # Muon has no fused `found_inf`: looking at the flag costs a host sync per step,
        # small next to the Newton-Schulz iterations it saves on a skipped step
        if self.found_inf is not None and bool(self.found_inf):
            return
        self.muon.step()
        self.rest.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none=set_to_none)
        self.rest.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"muon": self.muon.state_dict(), "adamw": self.rest.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.muon.load_state_dict(state["muon"])
        self.rest.load_state_dict(state["adamw"])


def set_lr(opt: torch.optim.Optimizer | MuonAdamW, lr: float) -> None:
    """The schedule's lr for this step, times each group's scale."""
    for g in opt.param_groups:
        g["lr"] = lr * g["lr_scale"]


def build_optimizer(model: torch.nn.Module, cfg: Train) -> torch.optim.AdamW | MuonAdamW:
    """`cfg.optimizer` over the trainable parameters. Weight decay goes to the matrices
    (hidden and embeddings), not to norms and biases; all but the hidden matrices train at
    `embed_lr_scale` x the lr (with Muon: the AdamW half)."""
    params = [p for p in model.parameters() if p.requires_grad]
    matrices = {p for p in params if p.ndim >= 2}
    hidden = hidden_matrices(model)
    if cfg.optimizer == "adamw":
        return adamw(params, cfg, matrices, hidden)
    muon = Muon(
        [{"params": [p for p in params if p in hidden], "lr_scale": 1.0}],
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
    )
    return MuonAdamW(muon, adamw([p for p in params if p not in hidden], cfg, matrices, hidden))


def state_bytes(opt: torch.optim.AdamW | MuonAdamW) -> int:
    """What the optimizer's state will take: AdamW keeps two moments per parameter, Muon one
    momentum buffer per matrix. What LoRA saves, and what Muon saves over AdamW."""
    groups = [(opt, 2)] if isinstance(opt, torch.optim.AdamW) else [(opt.muon, 1), (opt.rest, 2)]
    return sum(
        slots * p.numel() * p.element_size()
        for o, slots in groups
        for g in o.param_groups
        for p in g["params"]
    )
