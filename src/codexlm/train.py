"""The training loop: accumulation, clipping, autocast, compile, DDP/FSDP, checkpoints.

Read `train()` first: it sets up (optimizer, restore, compile and wrap), then runs each step
as `train_step` -> `log` -> `validate` -> checkpoint (`checkpoint_policy.scheduled` or a
stop, then `write_checkpoint` -> `checkpoint_policy.save`), with the loop's counters
in one `LoopState`, which is what a checkpoint stores besides weights, optimizer and RNG.
There is no host-device sync inside a step except at log intervals: losses, gradient norms
and non-finite counts accumulate on the device, and a step with a non-finite gradient is
skipped by fused AdamW's `found_inf` without the host having to look at it (Muon has to
look: `codexlm.optim`). What the loop
reports goes to callbacks (`codexlm.callbacks`): DVCLive and a progress bar in the train
stage, timers in the benchmarks.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import psutil
import torch
import torch.distributed as dist

from codexlm import parallel, provenance
from codexlm.batches import eval_batches, train_batch
from codexlm.callbacks import Start, emit
from codexlm.checkpoint import files as checkpoint_files
from codexlm.checkpoint import policy as checkpoint_policy
from codexlm.checkpoint.files import Checkpoint
from codexlm.errors import MachineFault, is_out_of_memory
from codexlm.hashing import fingerprint
from codexlm.intervals import interval_seconds
from codexlm.loss import CausalLMLoss
from codexlm.metrics import flops_per_token, mfu
from codexlm.model import count_params
from codexlm.optim import MuonAdamW, build_optimizer, lr_at, set_lr, state_bytes
from codexlm.packing import Schedule, Split, build_rows, document_rows, fixed_rows, step_rows
from codexlm.parallel import Dist, weights_finite


class TrainArgs(Protocol):
    """The `train` params block as the loop takes it: every key of `params.Train`, with its
    type (tests/test_schema.py holds the two equal). Any object with these attributes will
    do: the GPU benchmark, whose image has no pydantic, builds one from these hints."""

    steps: int
    batch_size: int
    grad_accum: int
    optimizer: str
    lr: float
    min_lr: float
    schedule: str
    warmup_steps: int
    decay_fraction: float
    embed_lr_scale: float
    weight_decay: float
    beta1: float
    beta2: float
    grad_clip: float
    precision: str
    compile: bool
    compile_mode: str
    eval_every: int
    eval_batches: int
    log_every: int
    checkpoint_every: int | str  # steps, or a time interval ("30m": codexlm.intervals)
    keep_checkpoints: int
    max_stop_seconds: float
    resume: str
    final: str
    max_bad_steps: int
    nproc: int  # read by the stage (torchrun) and the fingerprint, not the loop
    strategy: str
    loss_on: str  # answers | all: instruction data's targets (codexlm.examples)
    packing: bool  # instruction data: several examples per window, or one per padded row
    doc_mask: bool  # text: attention stops at each end-of-text (codexlm.packing.document_rows)
    loggers: list[str]  # read by the stage (codexlm.live, codexlm.trackers), not the loop


@dataclass(frozen=True)
class Run:
    """What a run is besides its train params."""

    seed: int
    context: int
    ckpt_dir: Path
    fingerprint: str  # of its params and data; train() adds the code and the packages
    dist: Dist = field(default_factory=Dist)
    # the training log, kept in every checkpoint and restored with it: DVC deletes the train
    # stage's report folder before it reruns the stage (a cached output, as its run-cache needs)
    log_dir: Path | None = None
    eot_id: int | None = None  # the end-of-text id: text windows' document bounds (doc_mask)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 where the GPU supports it (precision auto), else fp32 (None: no autocast)."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def deterministic_kernels(device: torch.device) -> Callable[[], None]:
    """On CPU, turn on torch's deterministic mode; return what restores the previous setting.

    Eager CPU kernels are deterministic already, but inductor compiles the embedding's
    backward into a kernel that sums with atomic adds across threads, so two runs of the same
    params would end with different last bits in every weight. In deterministic mode inductor
    uses an ordered kernel instead (no measurable cost on the default model). Not on CUDA,
    where the mode needs CUBLAS_WORKSPACE_CONFIG and slower kernels: GPU runs agree to
    rounding, not to the bit.
    """
    was = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)  # an op without one: a warning
    return lambda: torch.use_deterministic_algorithms(was, warn_only=warn_only)


def row_batch(rows_of: Schedule, step: int, micro: int, cfg: TrainArgs, d: Dist) -> tuple:
    """Instruction rows of micro-batch `micro` of `step` for this rank: inputs, labels,
    position ids, segments, and the divisor that makes the step's loss Σ NLL / Σ targets
    over every micro-batch and rank (x world: DDP averages the ranks' gradients)."""
    rows, targets = step_rows(rows_of, step, micro, cfg.batch_size, cfg.grad_accum, d.rank, d.world)
    r = build_rows(rows_of.split, rows)
    return r.inputs, r.labels, r.positions, r.segments, torch.tensor(targets / d.world)


def masked_text(batch: tuple[torch.Tensor, torch.Tensor], eot: int | None) -> tuple:
    """Text windows with their document bounds: inputs, targets, position ids, segments (every
    token a target, so the loss stays each micro-batch's mean over its tokens)."""
    if eot is None:
        raise ValueError("train.doc_mask needs Run.eot_id, the end-of-text id")
    return (*batch, *document_rows(batch[0], eot))


def device_batches(
    tokens: np.ndarray | Split, seed: int, start: int, cfg: TrainArgs, run: Run
) -> Iterator[tuple[torch.Tensor, ...]]:
    """This rank's micro-batches of steps start..steps-1, in order, one ahead of the loop.

    Each batch is a pure function of (seed, step, micro-step, rank), so prefetching changes
    nothing a resume could see. On CUDA the next batch goes through pinned memory with an
    asynchronous copy, queued before the current one's kernels are waited on. Instruction
    data (a packing.Split) gives rows of whole examples (`row_batch`); text under
    `doc_mask` adds each window's document bounds (`masked_text`).
    """
    d, context = run.dist, run.context
    rows_of = Schedule(tokens, seed, cfg.packing) if isinstance(tokens, Split) else None

    def fetch(step: int, micro: int) -> tuple[torch.Tensor, ...]:
        if rows_of is not None:
            batch = row_batch(rows_of, step, micro, cfg, d)
        else:
            batch = train_batch(
                tokens, seed, step, micro, cfg.batch_size, cfg.grad_accum, context, d.rank, d.world
            )
            if cfg.doc_mask:
                batch = masked_text(batch, run.eot_id)
        if d.device.type != "cuda":
            return batch
        return tuple(t.pin_memory().to(d.device, non_blocking=True) for t in batch)

    pending = None
    for step, micro in itertools.product(range(start, cfg.steps), range(cfg.grad_accum)):
        ready, pending = pending, fetch(step, micro)
        if ready is not None:
            yield ready
    if pending is not None:
        yield pending


@torch.no_grad()
def validation_loss(
    loss_fn: torch.nn.Module, batches: list, device: torch.device, amp: torch.dtype | None
) -> float:
    """Token-weighted mean loss over the fixed validation batches (instruction rows, which
    carry a divisor: Σ NLL of the targets / Σ targets)."""
    was_training = loss_fn.training
    loss_fn.eval()
    total = torch.zeros((), device=device, dtype=torch.float64)
    count = 0
    for batch in batches:
        x, y, *rest = (t.to(device) for t in batch)
        rows = len(rest) == 3  # position ids, segments and a divisor of 1: a sum
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            if rows:
                total += loss_fn(x, y, *rest).double()
            else:
                total += loss_fn(x, y, *rest).double() * y.numel()
        count += int((y != -100).sum()) if rows else y.numel()
    loss_fn.train(was_training)
    return float(total) / count


class LoopState:
    """The loop's counters, and the sums it logs every `log_every` steps: with the weights,
    optimizer and RNG states, what a checkpoint must hold for a resumed run to log what the
    uninterrupted one would have. The sums and the non-finite counters live on the device
    (no host sync per step) and are read only at log steps and checkpoints."""

    DEVICE = ("loss_sum", "norm_sum", "good_steps", "bad_total", "bad_run", "bad_max")

    def __init__(self, device: torch.device) -> None:
        self.step = 0
        self.tokens_seen = 0
        self.val_loss: float | None = None
        self.val_step: int | None = None  # the step val_loss was measured at
        for name in self.DEVICE:
            setattr(self, name, torch.zeros((), device=device))

    def state_dict(self) -> dict[str, Any]:
        plain = {k: getattr(self, k) for k in ("step", "tokens_seen", "val_loss", "val_step")}
        return {**plain, **{k: float(getattr(self, k)) for k in self.DEVICE}}  # a sync

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k in ("step", "tokens_seen", "val_loss", "val_step"):
            setattr(self, k, state[k])
        for k in self.DEVICE:
            getattr(self, k).fill_(state[k])

    def count(self, loss: torch.Tensor, norm: torch.Tensor, bad: torch.Tensor) -> None:
        """Add one step: a non-finite one (bad) adds to the non-finite counters only."""
        self.bad_total += bad
        self.bad_run.copy_((self.bad_run + 1) * bad)
        self.bad_max.copy_(torch.maximum(self.bad_max, self.bad_run))
        self.loss_sum += torch.where(bad, 0.0, loss)
        self.norm_sum += torch.where(bad, 0.0, norm)
        self.good_steps += ~bad

    def reset_sums(self) -> None:
        for t in (self.loss_sum, self.norm_sum, self.good_steps):
            t.zero_()


class StopFlag:
    """SIGINT/SIGTERM set a flag; the loop finishes its step, checkpoints and exits.

    A preempted machine is killed after a grace period, so the stop is bounded: if the step
    and its checkpoint take longer than `max_seconds`, a watchdog exits without it (a write
    in progress is a temp folder, never trusted) and the previous checkpoint is the resume.
    """

    def __init__(self, max_seconds: float, root: Path) -> None:
        self.signum: int | None = None
        self.max_seconds, self.root = max_seconds, root
        self._watchdog: threading.Timer | None = None
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is None:  # a second signal changes nothing: the watchdog is running
            self._watchdog = threading.Timer(self.max_seconds, self._expire, args=(signum,))
            self._watchdog.daemon = True
            self._watchdog.start()
        self.signum = signum

    def _expire(self, signum: int) -> None:
        last = checkpoint_files.complete(self.root)
        resumes = f"a rerun resumes from {last[0]}" if last else "no checkpoint to resume from"
        print(
            f"train: stopped by {signal.Signals(signum).name} without a checkpoint of the "
            f"current step: it did not finish within train.max_stop_seconds = "
            f"{self.max_seconds:g}; {resumes}",
            file=sys.stderr,
            flush=True,
        )
        os._exit(128 + signum)  # the main thread is inside a step: nothing to unwind safely

    def requested(self, step: int, log_every: int, d: Dist) -> bool:
        """Whether to stop after `step`. With several processes they must agree, so the
        flag is all-reduced, at log steps only (a collective per step would cost a sync)."""
        if d.world == 1:
            return self.signum is not None
        if step % log_every:
            return False
        flag = torch.tensor([float(self.signum is not None)], device=d.device)
        dist.all_reduce(flag)
        return bool(flag.item())

    def restore(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        for s, h in self._old.items():
            signal.signal(s, h)


def agreed(flag: bool, step: int, log_every: int, d: Dist) -> bool:
    """A per-process decision all processes take together: at log steps only, any one's
    (a collective per step would cost a sync)."""
    if d.world == 1:
        return flag
    if step % log_every:
        return False
    t = torch.tensor([float(flag)], device=d.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


class Interrupted(Exception):
    def __init__(self, signum: int, step: int, path: Path | None) -> None:
        where = f"checkpoint {path} written" if path else "checkpoint written"
        super().__init__(
            f"stopped by {signal.Signals(signum).name} after step {step}; {where}: "
            "a rerun (`dvc repro`) resumes from it"
        )
        self.signum = signum


class NonFiniteError(Exception):
    pass


def system_metrics(device: torch.device) -> dict[str, float]:
    """CPU and memory use (GPU memory and utilisation on CUDA) at a log step.

    DVCLive's monitor_system is not used: its thread logs wall-clock timestamps at its own
    steps and fails with a traceback on machines without NVML.
    """
    out = {
        "system/cpu_percent": psutil.cpu_percent(),
        "system/rss_gb": psutil.Process().memory_info().rss / 2**30,
    }
    if device.type == "cuda":
        out["system/gpu_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
        try:  # through NVML (the nvidia-ml-py package), which not every image has
            out["system/gpu_util_percent"] = float(torch.cuda.utilization(device))
        except (ImportError, RuntimeError) as e:  # warnings show a repeated message once
            warnings.warn(f"GPU utilisation not logged ({type(e).__name__}: {e})", stacklevel=1)
    return out


@dataclass
class Parts:
    """The model as the loop uses it."""

    raw: torch.nn.Module  # as built: the names checkpoints store
    fwd: torch.nn.Module  # the loss module that trains: sharded, compiled and/or DDP-wrapped
    evaluator: torch.nn.Module  # the loss module that validates
    opt: torch.optim.Optimizer | MuonAdamW
    params: list[torch.nn.Parameter]  # the trainable ones
    mode: str  # ddp | fsdp (one process: ddp, a plain model)
    amp: torch.dtype | None


def setup(model: torch.nn.Module, cfg: TrainArgs, d: Dist) -> Parts:
    """Move, shard under FSDP, and build the optimizer; compile and DDP come after restoring
    (`wrap`), since a checkpoint's names are the raw model's."""
    raw = model.to(d.device)
    raw.train()
    if d.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    mode = "fsdp" if cfg.strategy == "fsdp" and d.world > 1 else "ddp"
    fwd: torch.nn.Module = CausalLMLoss(raw)
    if mode == "fsdp":  # sharding turns parameters into DTensors: before the optimizer sees them
        parallel.shard(fwd, raw, cfg.compile, cfg.compile_mode)
    opt = build_optimizer(raw, cfg)
    params = [p for p in raw.parameters() if p.requires_grad]
    # Validation runs uncompiled and unwrapped (except under FSDP, whose sharded parameters
    # only the wrapped module can gather): a no-grad graph would be a second compilation
    # (12 s on the CPU default, more on GPUs) for a few batches per evaluation, and every
    # rank scores the same validation windows, so DDP has nothing to synchronise.
    evaluator = fwd if mode == "fsdp" else CausalLMLoss(raw)
    amp = autocast_dtype(cfg.precision, d.device)
    return Parts(raw, fwd, evaluator, opt, params, mode, amp)


def wrap(parts: Parts, cfg: TrainArgs, d: Dist) -> None:
    if cfg.compile and parts.mode != "fsdp":
        parts.fwd = torch.compile(parts.fwd, mode=cfg.compile_mode)
    if d.world > 1 and parts.mode != "fsdp":
        parts.fwd = torch.nn.parallel.DistributedDataParallel(
            parts.fwd, device_ids=[d.device.index] if d.device.type == "cuda" else None
        )


def train_step(
    parts: Parts, batches: Iterator, loop: LoopState, lr: float, cfg: TrainArgs, d: Dist
) -> None:
    """One optimizer step over grad_accum micro-batches; sums stay on the device."""
    set_lr(parts.opt, lr)
    step_loss = torch.zeros((), device=d.device)
    for micro in range(cfg.grad_accum):
        batch = next(batches)
        # text windows: each micro-batch's mean over its tokens, averaged over the micro-
        # batches (all hold as many tokens); instruction rows (the only batches with a
        # divisor): each micro-batch's Σ NLL over the step's Σ targets already
        # (codexlm.loss), so the micro-batches add up
        parts_of_step = cfg.grad_accum if len(batch) < 5 else 1
        # DDP and FSDP reduce gradients on the last micro-step only
        with parallel.grad_sync(parts.fwd, parts.mode, d.world, micro == cfg.grad_accum - 1):
            with torch.autocast(
                d.device.type, dtype=parts.amp or torch.float32, enabled=parts.amp is not None
            ):
                loss = parts.fwd(*batch)
            # a division, as before instruction rows existed: x / 3 and x * (1 / 3) can
            # differ in the last bit, and the text path's weights are the lock's
            (loss / parts_of_step).backward()
        step_loss += loss.detach() / parts_of_step
    clip = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
    norm = parallel.local(torch.nn.utils.clip_grad_norm_(parts.params, clip))  # DTensor: FSDP
    bad = ~torch.isfinite(norm)
    parts.opt.found_inf = bad.float()  # the optimizer skips the update (and its step count)
    parts.opt.step()
    parts.opt.zero_grad(set_to_none=True)
    loop.count(step_loss, norm, bad)


def log_metrics(loop: LoopState, lr: float, cfg: TrainArgs, d: Dist, rate: Rate) -> dict:
    """What a log step reports; reads the device sums (a sync) and resets them."""
    if int(loop.bad_max) >= cfg.max_bad_steps:
        raise NonFiniteError(
            f"{int(loop.bad_max)} consecutive steps with a non-finite loss or gradient "
            f"(train.max_bad_steps = {cfg.max_bad_steps}) before step {loop.step}; "
            "lower train.lr or check the data"
        )
    if d.world > 1:  # each rank saw its own share of the batch: average them
        dist.all_reduce(loop.loss_sum)
        loop.loss_sum /= d.world
    good = max(float(loop.good_steps), 1.0)
    tps = rate.tokens_per_s(loop.tokens_seen)
    metrics = {
        "train/loss": float(loop.loss_sum) / good,
        "lr": lr,
        "grad_norm": float(loop.norm_sum) / good,
        "tokens_per_s": tps,
        "bad_steps": float(loop.bad_total),
    }
    util = mfu(tps, rate.flops_per_token, rate.device_name) if d.device.type == "cuda" else None
    if util is not None:
        metrics["mfu"] = util
    metrics.update(system_metrics(d.device))
    loop.reset_sums()
    return metrics


class Rate:
    """Training throughput since the last log step, checkpoint writes excluded."""

    def __init__(self, tokens_seen: int, flops_per_token: float, device_name: str) -> None:
        self.flops_per_token, self.device_name = flops_per_token, device_name
        self.restart(tokens_seen)

    def restart(self, tokens_seen: int) -> None:
        self.t, self.tokens = time.perf_counter(), tokens_seen

    def exclude(self, seconds: float) -> None:
        self.t += seconds

    def tokens_per_s(self, tokens_seen: int) -> float:
        return (tokens_seen - self.tokens) / max(time.perf_counter() - self.t, 1e-9)


def write_checkpoint(
    parts: Parts,
    loop: LoopState,
    policy: checkpoint_policy.Policy,
    d: Dist,
    callbacks: Sequence[Any],
) -> tuple[float, Path | None]:
    """Write this step's checkpoint; return the seconds it took and its folder."""
    started = time.perf_counter()
    if not weights_finite(parts.raw, parts.mode, d.world):
        raise NonFiniteError(f"non-finite weights at step {loop.step}: checkpoint not written")
    if d.world > 1:  # each rank's loss sum, as the cross-rank mean the next log would take
        dist.all_reduce(loop.loss_sum)
        loop.loss_sum /= d.world
    path = checkpoint_policy.save(policy, parts.raw, parts.opt, parts.mode, loop.state_dict(), d)
    seconds = time.perf_counter() - started
    emit(callbacks, "on_checkpoint", loop.step, path, seconds)
    return seconds, path


def plan(policy: checkpoint_policy.Policy, parts: Parts) -> None:
    """Say at start when the checkpoint folder cannot hold what the run will keep."""
    one = checkpoint_policy.estimated_bytes(parts.raw, state_bytes(parts.opt), policy.log_dir)
    warning = checkpoint_policy.plan_space(policy, one)
    if warning:
        print(warning, file=sys.stderr)


def out_of_memory(
    parts: Parts, loop: LoopState, cfg: TrainArgs, run: Run, policy: checkpoint_policy.Policy
) -> MachineFault:
    """The one line for memory exhausted in a step: the sizes that drove it, what to lower."""
    where = "GPU" if run.dist.device.type == "cuda" else "CPU"
    vocab = getattr(getattr(parts.raw, "config", None), "vocab_size", "?")
    last = checkpoint_files.complete(policy.root)
    resumes = f"a rerun resumes from {last[0].name}" if last else "no checkpoint yet"
    return MachineFault(
        f"train: out of {where} memory in step {loop.step + 1}: micro-batch of "
        f"train.batch_size {cfg.batch_size} x model.context {run.context} tokens, vocab "
        f"{vocab}, {count_params(parts.raw):,} parameters; lower train.batch_size and raise "
        f"train.grad_accum to keep the global batch ({cfg.batch_size} x {cfg.grad_accum} "
        f"now), or lower model.context ({resumes})"
    )


def model_flops_per_token(raw: torch.nn.Module, context: int) -> float:
    cfg = getattr(raw, "config", None)
    layers = getattr(cfg, "num_hidden_layers", 0) or 0
    return flops_per_token(count_params(raw), layers, getattr(cfg, "hidden_size", 0) or 0, context)


def device_name(d: Dist) -> str:
    return torch.cuda.get_device_name(d.device) if d.device.type == "cuda" else "cpu"


def arithmetic(parts: Parts) -> dict[str, str]:
    """The precisions chosen at setup for this device: they change the arithmetic, so they
    are part of a run's identity (a checkpoint of other precisions is another run's)."""
    muon = parts.opt.muon.ns_dtype if isinstance(parts.opt, MuonAdamW) else None
    return {
        "autocast": str(parts.amp).removeprefix("torch.") if parts.amp else "off",
        "newton_schulz": str(muon).removeprefix("torch.") if muon else "none",
    }


def announce(
    ckpt: Checkpoint | None, loop: LoopState, parts: Parts, cfg: TrainArgs, d: Dist
) -> None:
    if not d.main:
        return
    steps, mode, how = cfg.steps, parts.mode, arithmetic(parts)
    muon = how["newton_schulz"] != "none"
    ns = f"muon (newton-schulz in {how['newton_schulz']}) + adamw" if muon else "adamw"
    print(f"train: {ns} on {d.device.type}, autocast {how['autocast']}")
    if ckpt is not None:
        print(f"train: resuming from {ckpt.path} (step {loop.step} of {steps})")
    else:
        print(f"train: starting from step 0 of {steps}")
    if d.world > 1:
        print(f"train: {d.world} processes, {mode}")


def start_info(parts: Parts, loop: LoopState, cfg: TrainArgs, resumed: bool) -> Start:
    return Start(
        steps=cfg.steps,
        start=loop.step,
        resumed=resumed,
        params_trainable=count_params(parts.raw, trainable_only=True),
        params_total=count_params(parts.raw),
        optimizer_state_bytes=state_bytes(parts.opt),
    )


def train(
    model: torch.nn.Module,
    train_tokens: np.ndarray | Split,
    val_tokens: np.ndarray | Split,
    cfg: TrainArgs,
    run: Run,
    callbacks: Sequence[Any] = (),
) -> dict[str, Any]:
    """Train `model` in place and return a summary; rank 0 alone checkpoints and reports.

    With several processes, `cfg.strategy` "ddp" replicates the model and "fsdp" shards it
    (codexlm.parallel); under "fsdp" `model` is left sharded: `parallel.gathered` unshards it.
    """
    d = run.dist
    seed_everything(run.seed)
    parts = setup(model, cfg, d)
    policy = checkpoint_policy.Policy(
        run.ckpt_dir,
        # params and data, and the code and packages that compute them: a checkpoint of
        # other code is never resumed as if it were this run's
        identity={
            "params": run.fingerprint,
            "code": provenance.code_digest(),
            "packages": fingerprint(provenance.package_versions()),
            "arithmetic": ", ".join(f"{k} {v}" for k, v in arithmetic(parts).items()),
        },
        every=cfg.checkpoint_every if isinstance(cfg.checkpoint_every, int) else None,
        every_seconds=interval_seconds(cfg.checkpoint_every),
        keep=cfg.keep_checkpoints,
        resume=cfg.resume,
        final=cfg.final,
        log_dir=run.log_dir,
    )
    loop = LoopState(d.device)
    ckpt = checkpoint_policy.restore(policy, parts.raw, parts.opt, parts.mode, d)
    if ckpt is not None:
        loop.load_state_dict(ckpt.state["loop"])
    announce(ckpt, loop, parts, cfg, d)
    if d.main:
        plan(policy, parts)
    wrap(parts, cfg, d)
    reporters = callbacks if d.main else ()
    emit(reporters, "on_start", start_info(parts, loop, cfg, ckpt is not None))
    try:
        try:
            run_steps(parts, loop, policy, train_tokens, val_tokens, cfg, run, reporters)
        except (MemoryError, RuntimeError) as e:  # torch.OutOfMemoryError is a RuntimeError
            if not is_out_of_memory(e):
                raise
            raise out_of_memory(parts, loop, cfg, run, policy) from None
        best = checkpoint_policy.load_final(policy, parts.raw, parts.mode, d)
        if best is not None:
            loop.val_loss = best.state["val_loss"]
            if d.main:
                print(f"train: final weights from {best.path} (val loss {loop.val_loss:.4f})")
        if not weights_finite(parts.raw, parts.mode, d.world):
            raise NonFiniteError("non-finite weights after training: models/trained not written")
        summary = {
            "step": cfg.steps,
            "tokens_seen": loop.tokens_seen,
            "val_loss": loop.val_loss,
            "params_trainable": count_params(parts.raw, trainable_only=True),
        }
        emit(reporters, "on_end", summary)
        return summary
    finally:
        emit(reporters, "on_close")


def validation_batches(
    tokens: np.ndarray | Split, n: int, cfg: TrainArgs, run: Run
) -> list[tuple[torch.Tensor, ...]]:
    """The fixed validation batches: text windows (with their document bounds under
    doc_mask), or the val split's first rows of examples (with a divisor of 1: their loss is
    a sum)."""
    if not isinstance(tokens, Split):
        windows = eval_batches(tokens, run.seed, n, cfg.batch_size, run.context)
        return [masked_text(w, run.eot_id) for w in windows] if cfg.doc_mask else windows
    out = []
    for rows in fixed_rows(tokens, n, cfg.batch_size):
        r = build_rows(tokens, rows)
        out.append((r.inputs, r.labels, r.positions, r.segments, torch.tensor(1.0)))
    return out


def run_steps(
    parts: Parts,
    loop: LoopState,
    policy: checkpoint_policy.Policy,
    train_tokens: np.ndarray | Split,
    val_tokens: np.ndarray | Split,
    cfg: TrainArgs,
    run: Run,
    callbacks: Sequence[Any],
) -> None:
    """Steps loop.step+1 .. cfg.steps, each: train, log, validate, checkpoint, stop?"""
    d = run.dist
    # cfg.eval_batches global batches of windows, the same set whatever the process count
    n_val = cfg.eval_batches * cfg.grad_accum * d.world
    val_data = validation_batches(val_tokens, n_val, cfg, run)

    def validate(step: int) -> None:
        loop.val_loss = validation_loss(parts.evaluator, val_data, d.device, parts.amp)
        loop.val_step = step
        emit(callbacks, "on_validate", step, loop.val_loss)

    if loop.step == 0:
        validate(0)
    tokens_per_step = cfg.batch_size * cfg.grad_accum * d.world * run.context
    rate = Rate(loop.tokens_seen, model_flops_per_token(parts.raw, run.context), device_name(d))
    batches = device_batches(train_tokens, run.seed, loop.step, cfg, run)
    stop = StopFlag(cfg.max_stop_seconds, policy.root)
    last_saved = time.monotonic()
    restore_determinism = deterministic_kernels(d.device)  # around the loop: it compiles
    try:
        for step in range(loop.step, cfg.steps):
            lr = lr_at(step, cfg)
            train_step(parts, batches, loop, lr, cfg, d)
            loop.step, loop.tokens_seen = step + 1, loop.tokens_seen + tokens_per_step
            done = loop.step
            emit(callbacks, "on_step_end", done)
            if done % cfg.log_every == 0 or done == cfg.steps:
                emit(callbacks, "on_log", done, log_metrics(loop, lr, cfg, d, rate))
                rate.restart(loop.tokens_seen)
            since = time.monotonic() - last_saved
            scheduled = checkpoint_policy.scheduled(policy, done, cfg.steps, since)
            if policy.every_seconds is not None and done < cfg.steps:
                scheduled = agreed(scheduled, done, cfg.log_every, d)  # the same step on all
            if done % cfg.eval_every == 0 or scheduled:
                validate(done)  # a scheduled checkpoint carries its own step's loss (`best`)
            stopping = stop.requested(done, cfg.log_every, d)
            if stopping or scheduled:
                seconds, path = write_checkpoint(parts, loop, policy, d, callbacks)
                rate.exclude(seconds)
                last_saved = time.monotonic()
                if stopping and done < cfg.steps:
                    raise Interrupted(stop.signum or signal.SIGTERM, done, path)
    finally:
        restore_determinism()
        stop.restore()
