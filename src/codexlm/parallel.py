"""How the model is spread over processes: replicated (DDP) or sharded (FSDP2).

DDP keeps a full copy of the weights and optimizer state on every rank and all-reduces
gradients. FSDP (`torch.distributed.fsdp.fully_shard`) keeps only a 1/N shard of each on a
rank and gathers a block's weights just for its forward and backward: for models whose
weights, gradients and AdamW state do not fit one device. Everything else in the training
loop is the same; this module holds the few places where the two differ.

Checkpoints always hold full (unsharded) tensors under the model's own parameter names, so
they are ordinary safetensors files whatever the strategy.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.tensor import DTensor

from codexlm.errors import UserError

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)  # rank 0 gets it, on the CPU


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0


def relaunch(nproc: int, script: str) -> None:
    """With nproc > 1, replace this process by `torchrun` running `script` nproc times
    (unless torchrun started it); refuse a hand-started torchrun of another size."""
    if nproc > 1 and "LOCAL_RANK" not in os.environ:
        args = ["--standalone", f"--nproc_per_node={nproc}", script]
        os.execvp(sys.executable, [sys.executable, "-m", "torch.distributed.run", *args])
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != nproc:  # a torchrun started by hand (several nodes) must agree with params
        raise UserError(
            f"train.nproc: {nproc}, but torchrun started {world} processes in all; set it "
            "to the total (it sets the global batch, which checkpoints are matched on)"
        )


def init_distributed() -> Dist:
    """One process, or one of `torchrun`'s: gloo on CPU, nccl on CUDA."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world, device)


def blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks: the modules Hugging Face marks as never to be split."""
    hf = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(hf, "_no_split_modules", None) or ())
    return [m for m in hf.modules() if type(m).__name__ in names]


def shard(
    loss_module: torch.nn.Module,
    model: torch.nn.Module,
    compile: bool,
    compile_mode: str = "default",
) -> None:
    """FSDP2 in place: each block its own shard group, the rest (embeddings, final norm,
    the tied head) in the root group of the loss module, whose forward runs the head.

    Must run before the optimizer is built: parameters become DTensors. With compile, each
    block is compiled on its own (as torchtitan does) so the collectives stay outside the
    compiled graphs.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    found = blocks(model)
    if not found:
        raise UserError(
            f"train.strategy: fsdp needs the model's transformer blocks, and "
            f"{type(model).__name__} names none (_no_split_modules); use ddp"
        )
    device = next(model.parameters()).device
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for block in found:
        if compile:
            block.compile(mode=compile_mode)
        fully_shard(block, mesh=mesh)
    fully_shard(loss_module, mesh=mesh)


def grad_sync(module: torch.nn.Module, strategy: str, world: int, last_micro: bool) -> Any:
    """A context for one micro-step: gradients are synchronised on the last one only."""
    if world == 1:
        return contextlib.nullcontext()
    if strategy == "fsdp":
        module.set_requires_gradient_sync(last_micro)
        return contextlib.nullcontext()
    return contextlib.nullcontext() if last_micro else module.no_sync()


def local(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor: the full value of a (replicated) DTensor, else the tensor itself."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def weights_finite(model: torch.nn.Module, strategy: str, world: int) -> bool:
    """Whether every weight is finite, on every rank (each holds a shard under FSDP)."""
    # one device-side reduction and one host sync, not one per parameter
    flag = (
        torch.stack(
            [
                torch.isfinite(p.to_local() if isinstance(p, DTensor) else p).all()
                for p in model.parameters()
            ]
        )
        .all()
        .float()
    )
    if strategy == "fsdp" and world > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag)


def trainable_names(model: torch.nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def model_state(model: torch.nn.Module, strategy: str) -> dict[str, torch.Tensor]:
    """The trainable weights, full. Under FSDP a collective: every rank calls it, rank 0
    gets the tensors (on the CPU), the others an empty dict."""
    if strategy != "fsdp":
        return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    state = get_model_state_dict(model, options=FULL)
    return {n: state[n] for n in trainable_names(model) if n in state}


def optimizer_state(
    model: torch.nn.Module, opt: torch.optim.Optimizer, strategy: str
) -> dict[str, Any]:
    """The optimizer's state, full (keyed by parameter name under FSDP; a collective)."""
    if strategy != "fsdp":
        return opt.state_dict()
    return get_optimizer_state_dict(model, opt, options=FULL)


def load_state(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer | None,
    weights: dict[str, torch.Tensor],
    opt_state: dict[str, Any] | None,
    strategy: str,
) -> None:
    """Load full weights (and optimizer state) that every rank has read from a checkpoint."""
    if strategy != "fsdp":
        model.load_state_dict(weights, strict=False)
        if opt is not None and opt_state is not None:
            opt.load_state_dict(opt_state)
        return
    options = StateDictOptions(full_state_dict=True, strict=False)
    set_model_state_dict(model, weights, options=options)
    if opt is not None and opt_state is not None:
        set_optimizer_state_dict(model, opt, opt_state, options=options)


def gathered(model: torch.nn.Module, strategy: str, is_main: bool) -> torch.nn.Module | None:
    """The trained model as a plain, unsharded module on rank 0 (None elsewhere), to save.

    Under FSDP a collective: the full state is gathered to rank 0 and loaded into a fresh
    model of the same config.
    """
    if strategy != "fsdp":
        return model if is_main else None
    state = get_model_state_dict(model, options=FULL)
    if not is_main:
        return None
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_config(model.config, attn_implementation="sdpa")
    plain.load_state_dict(state)
    return plain
