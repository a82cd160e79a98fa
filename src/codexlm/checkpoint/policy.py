"""The checkpoint policy of a training run: which checkpoint it resumes, when it saves, what
it keeps, which weights are final. `codexlm.checkpoint.files` writes, verifies and reads the
files; this module decides, and says what it removes and why.

The loop calls `restore` once, then at each step `scheduled` and, when it is (or the run
is stopping), `save` (through `train.write_checkpoint`), which writes with
`checkpoint_files.write` and then `prune`s; at the end `load_final`.

Rank 0 alone chooses and writes; every rank loads what rank 0 chose (under FSDP each keeps
its shard), so all of them resume from the same step.
"""

from __future__ import annotations

import shutil
import sys
import warnings
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from codexlm import parallel
from codexlm.atomic import replace_dir
from codexlm.checkpoint import files
from codexlm.checkpoint.files import Checkpoint, CheckpointError
from codexlm.errors import MachineFault, free_bytes
from codexlm.hashing import fingerprint, folder_sha256
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
    return fingerprint(
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
            "init": None if init == "scratch" else folder_sha256(Path(init)),
        }
    )


@dataclass(frozen=True)
class Policy:
    root: Path
    identity: dict[str, str]  # params/data, code, packages: what a resumable checkpoint matches
    every: int | None  # steps between checkpoints, or None: by time
    every_seconds: float | None  # wall-clock seconds between checkpoints, or None: by steps
    keep: int
    resume: str  # auto | never
    final: str  # last | best
    log_dir: Path | None = None  # a folder each checkpoint keeps a copy of, restored with it


# what each part of a run's identity covers, for the message when a checkpoint is removed
IDENTITY_PARTS = {
    "params": "other params or data",
    "code": "other code",
    "packages": "other packages",
    "arithmetic": "other precisions",
}


def stale_reason(state: dict[str, Any], identity: dict[str, str]) -> str | None:
    """Why a checkpoint with this state.json is not this run's (None: it is)."""
    theirs = state.get("identity")
    if not isinstance(theirs, dict):
        return "an older codexlm without a run identity"
    differ = [why for part, why in IDENTITY_PARTS.items() if theirs.get(part) != identity.get(part)]
    return ", ".join(differ) or None


def remove_stale(root: Path, identity: dict[str, str]) -> list[str]:
    """Remove interrupted writes and the checkpoints of other runs; say what went and why.

    A checkpoint written under other params, data, code or packages must never be resumed:
    its weights are not what this run computes. One whose state.json is unreadable is left
    for `find_resumable` to skip as corrupt.
    """
    removed = []
    for path in files.interrupted_writes(root):
        shutil.rmtree(path)
        removed.append(f"removed {path} (a write that did not finish: a crash or a full disk)")
    for path in files.complete(root):
        state = files.read_state(path)
        why = stale_reason(state, identity) if state is not None else None
        if why is not None:
            shutil.rmtree(path)
            removed.append(f"removed {path} (written by {why})")
    return removed


def find_resumable(root: Path) -> Checkpoint | None:
    """The newest checkpoint that verifies, or None; a corrupt one is named and skipped."""
    for path in files.complete(root):
        try:
            return Checkpoint(path, files.verify(path))
        except CheckpointError as e:
            warnings.warn(
                f"checkpoint skipped: {e}; falling back to the previous one", stacklevel=2
            )
    return None


def best(root: Path) -> Checkpoint | None:
    """The checkpoint with the lowest validation loss (ties: the newest), among those
    validated at their own step (a checkpoint written on a stop carries an older loss)."""
    scored = []
    for path in files.complete(root):
        state = files.read_state(path)
        if state and state.get("val_loss") is not None and state.get("val_step") == state["step"]:
            scored.append((state["val_loss"], -state["step"], path, state))
    if not scored:
        return None
    _, _, path, state = min(scored)
    return Checkpoint(path, state)


def prune(root: Path, keep: int) -> None:
    """Keep the newest `keep` checkpoints and the best one; called after a save completes."""
    keep_best = best(root)
    for path in files.complete(root)[keep:]:
        if keep_best is None or path != keep_best.path:
            shutil.rmtree(path)


def clear(root: Path) -> list[Path]:
    """Remove every checkpoint (and interrupted write) under root; return what was removed."""
    removed = [*files.complete(root), *files.interrupted_writes(root)]
    for path in removed:
        shutil.rmtree(path)
    return removed


def shared(ckpt: Checkpoint | None, d: Dist) -> Checkpoint | None:
    """Rank 0's choice of checkpoint (or None), opened and verified on every rank."""
    if d.world == 1:
        return ckpt
    box = [str(ckpt.path) if ckpt else None]
    dist.broadcast_object_list(box, src=0)
    if box[0] is None or d.main:
        return ckpt
    return Checkpoint(Path(box[0]), files.verify(Path(box[0])))


def choose(policy: Policy) -> Checkpoint | None:
    """On rank 0: the checkpoint to resume, after removing what must not be (said out loud)."""
    if policy.resume == "never":
        for path in clear(policy.root):
            print(f"checkpoint: removed {path} (train.resume: never)", file=sys.stderr)
        return None
    for message in remove_stale(policy.root, policy.identity):
        print(f"checkpoint: {message}", file=sys.stderr)
    return find_resumable(policy.root)


def restore(
    policy: Policy, raw: torch.nn.Module, opt: torch.optim.Optimizer, mode: str, d: Dist
) -> Checkpoint | None:
    """Load the resumable checkpoint's weights, optimizer and RNG states, if there is one."""
    ckpt = shared(choose(policy) if d.main else None, d)
    if ckpt is None:
        return None
    weights, opt_state, rng = files.read(ckpt, d.device)
    missing = set(parallel.trainable_names(raw)) - set(weights)
    if missing:
        raise CheckpointError(f"{ckpt.path}: lacks weights {sorted(missing)[:3]}")
    parallel.load_state(raw, opt, weights, opt_state, mode)
    files.set_rng_state(ckpt.state["rng"], rng)
    saved_log = ckpt.path / files.LOG
    if d.main and policy.log_dir is not None and saved_log.is_dir():
        with replace_dir(policy.log_dir) as tmp:  # the log as it stood at this checkpoint
            shutil.copytree(saved_log, tmp, dirs_exist_ok=True)
    return ckpt


def scheduled(policy: Policy, step: int, last: int, since_last: float) -> bool:
    """A checkpoint step by the schedule: every `every` steps (or once `every_seconds` have
    passed since the last checkpoint), and the last step."""
    if step == last:
        return True
    if policy.every is not None:
        return step % policy.every == 0
    return policy.every_seconds is not None and since_last >= policy.every_seconds


def estimated_bytes(raw: torch.nn.Module, optimizer_bytes: int, log_dir: Path | None) -> int:
    """What one checkpoint takes before any is written: the trainable weights, the optimizer
    state, and the training log (RNG states and JSON are a few kB: the margin covers them)."""
    weights = sum(p.numel() * p.element_size() for p in raw.parameters() if p.requires_grad)
    log = sum(f.stat().st_size for f in log_dir.rglob("*") if f.is_file()) if log_dir else 0
    return weights + optimizer_bytes + log + (1 << 16)


def plan_space(policy: Policy, one: int) -> str | None:
    """At start: whether the checkpoint folder's filesystem holds `keep + 1` checkpoints of
    `one` bytes (a save writes the new one before pruning). A MachineFault when not even one
    fits (training would be lost), a warning line when fewer than keep + 1 do, else None."""
    existing = files.complete(policy.root)
    ours = sum(f.stat().st_size for p in existing for f in p.rglob("*") if f.is_file())
    free = free_bytes(policy.root)
    if free is None:
        return None
    wanted = (policy.keep + 1) * one
    if free < one:
        raise MachineFault(files.space_message(policy.root, "one checkpoint", one, free))
    if free + ours >= wanted:
        return None
    return (
        f"checkpoint: {policy.root} has room for {(free + ours) // one} checkpoints of "
        f"~{one:,} bytes, but a run keeps train.keep_checkpoints + 1 = {policy.keep + 1} while "
        f"it saves; free {wanted - free - ours:,} bytes or lower train.keep_checkpoints"
    )


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
        # top-level copies, read by `best` and by people looking at the folder
        state.update(val_loss=loop_state["val_loss"], val_step=loop_state["val_step"])
        step = loop_state["step"]
        path = files.write(policy.root, step, weights, opt_state, state, policy.log_dir)
        prune(policy.root, policy.keep)
    if d.world > 1:
        dist.barrier()
    return path


def load_final(policy: Policy, raw: torch.nn.Module, mode: str, d: Dist) -> Checkpoint | None:
    """Under `final: best`, load the best checkpoint's weights into raw and return it."""
    if policy.final != "best":
        return None
    chosen = shared(best(policy.root) if d.main else None, d)
    if chosen is not None:
        weights, _, _ = files.read(chosen, d.device)
        parallel.load_state(raw, None, weights, None, mode)
    return chosen
