"""The checkpoint policy of a training run: which checkpoint it resumes, when it saves, what
it keeps, which weights are final. `codexlm.checkpoint` writes and verifies the files; this
module decides, and says what it removes and why.

Rank 0 alone chooses and writes; every rank loads what rank 0 chose (under FSDP each keeps
its shard), so all of them resume from the same step.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from codexlm import checkpoint, parallel
from codexlm.atomic import replace_dir
from codexlm.checkpoint import Checkpoint, CheckpointError
from codexlm.parallel import Dist


def run_fingerprint(
    seed: int,
    model: dict[str, Any],
    lora: dict[str, Any],
    train: dict[str, Any],
    tokens_meta: dict[str, Any],
    dropout: bool,
    not_fingerprinted: Collection[str],
) -> str:
    """What the weights are a function of among params and data (the param blocks as dicts;
    `dropout`: whether the model draws masks; `not_fingerprinted`: the train keys params.py
    marks as not changing the weights); the training loop adds the code and the packages."""
    init = model["init"]
    return checkpoint.fingerprint(
        {
            "seed": seed,
            "model": model,
            "lora": lora if lora["enabled"] else None,
            "train": {k: v for k, v in train.items() if k not in not_fingerprinted},
            # compiled dropout draws other masks than eager (tests/test_provenance.py)
            "compile": (train["compile"], train["compile_mode"]) if dropout else None,
            # the data each step draws depends only on the global batch
            "global_batch": train["batch_size"] * train["grad_accum"] * train["nproc"],
            "tokens": tokens_meta["sha256"],
            "tokenizer": tokens_meta["tokenizer_sha256"],
            "init": None if init == "scratch" else checkpoint.folder_digest(Path(init)),
        }
    )


@dataclass(frozen=True)
class Policy:
    root: Path
    identity: dict[str, str]  # params/data, code, packages: what a resumable checkpoint matches
    every: int
    keep: int
    resume: str  # auto | never
    final: str  # last | best
    log_dir: Path | None = None  # a folder each checkpoint keeps a copy of, restored with it


def shared(ckpt: Checkpoint | None, d: Dist) -> Checkpoint | None:
    """Rank 0's choice of checkpoint (or None), opened and verified on every rank."""
    if d.world == 1:
        return ckpt
    box = [str(ckpt.path) if ckpt else None]
    dist.broadcast_object_list(box, src=0)
    if box[0] is None or d.main:
        return ckpt
    return Checkpoint(Path(box[0]), checkpoint.verify(Path(box[0])))


def choose(policy: Policy) -> Checkpoint | None:
    """On rank 0: the checkpoint to resume, after removing what must not be (said out loud)."""
    if policy.resume == "never":
        for path in checkpoint.clear(policy.root):
            print(f"checkpoint: removed {path} (train.resume: never)", file=sys.stderr)
        return None
    for message in checkpoint.remove_stale(policy.root, policy.identity):
        print(f"checkpoint: {message}", file=sys.stderr)
    return checkpoint.find_resumable(policy.root)


def restore(
    policy: Policy, raw: torch.nn.Module, opt: torch.optim.Optimizer, mode: str, d: Dist
) -> Checkpoint | None:
    """Load the resumable checkpoint's weights, optimizer and RNG states, if there is one."""
    ckpt = shared(choose(policy) if d.main else None, d)
    if ckpt is None:
        return None
    weights, opt_state, rng = checkpoint.load(ckpt, d.device)
    missing = set(parallel.trainable_names(raw)) - set(weights)
    if missing:
        raise CheckpointError(f"{ckpt.path}: lacks weights {sorted(missing)[:3]}")
    parallel.load_state(raw, opt, weights, opt_state, mode)
    checkpoint.set_rng_state(ckpt.state["rng"], rng)
    saved_log = ckpt.path / checkpoint.LOG
    if d.main and policy.log_dir is not None and saved_log.is_dir():
        with replace_dir(policy.log_dir) as tmp:  # the log as it stood at this checkpoint
            shutil.copytree(saved_log, tmp, dirs_exist_ok=True)
    return ckpt


def due(policy: Policy, step: int, last: int, stopping: bool) -> bool:
    """Checkpoint steps: every `every` steps, the last step, and a step the run stops at."""
    return step % policy.every == 0 or step == last or stopping


def save(
    policy: Policy,
    raw: torch.nn.Module,
    opt: torch.optim.Optimizer,
    mode: str,
    loop_state: dict[str, Any],
    d: Dist,
) -> Path | None:
    """Write the checkpoint of loop_state["step"] (rank 0), then keep the newest `keep` and
    the best; return its folder (None on other ranks)."""
    weights = parallel.model_state(raw, mode)  # under FSDP: collectives, on every rank
    opt_state = parallel.optimizer_state(raw, opt, mode)
    path = None
    if d.main:
        state = {"loop": loop_state, "identity": policy.identity}
        # top-level copies, read by checkpoint.best and by people looking at the folder
        state.update(val_loss=loop_state["val_loss"], val_step=loop_state["val_step"])
        step = loop_state["step"]
        path = checkpoint.save(policy.root, step, weights, opt_state, state, policy.log_dir)
        checkpoint.prune(policy.root, policy.keep)
    if d.world > 1:
        dist.barrier()
    return path


def load_final(policy: Policy, raw: torch.nn.Module, mode: str, d: Dist) -> Checkpoint | None:
    """Under `final: best`, load the best checkpoint's weights into raw and return it."""
    if policy.final != "best":
        return None
    best = shared(checkpoint.best(policy.root) if d.main else None, d)
    if best is not None:
        weights, _, _ = checkpoint.load(best, d.device)
        parallel.load_state(raw, None, weights, None, mode)
    return best
