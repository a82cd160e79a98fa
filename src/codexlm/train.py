"""The training loop: AdamW, warmup + cosine, accumulation, clipping, autocast, compile, DDP.

Read top to bottom: `train()` composes small functions. There is no host-device sync inside
a step except at log intervals: losses, gradient norms and non-finite counts accumulate on
the device, and a step with a non-finite gradient is skipped by fused AdamW's `found_inf`
without the host having to look at it.
"""

from __future__ import annotations

import itertools
import math
import os
import signal
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from codexlm import checkpoint, parallel
from codexlm.data import eval_batches, train_batch
from codexlm.loss import CausalLMLoss
from codexlm.metrics import flops_per_token, mfu
from codexlm.parallel import weights_finite


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0


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


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 where the GPU supports it (precision auto), else fp32 (None: no autocast)."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def build_optimizer(
    model: torch.nn.Module, lr: float, weight_decay: float, betas: tuple[float, float]
) -> torch.optim.AdamW:
    """AdamW; biases, norms and other 1-D parameters get no weight decay.

    Fused: one kernel for all parameters, and it honours `found_inf` (skip a step) on the
    device, which is how non-finite steps are skipped without a sync.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=betas, fused=True)


def lr_at(step: int, lr: float, min_lr: float, warmup: int, total: int) -> float:
    """Linear warmup to lr, then cosine decay to min_lr at the last step."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * min(progress, 1.0)))


def seed_everything(seed: int) -> None:
    import random

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


def device_batches(
    tokens: np.ndarray,
    seed: int,
    start: int,
    steps: int,
    batch_size: int,
    grad_accum: int,
    context: int,
    d: Dist,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's micro-batches of steps start..steps-1, in order, one ahead of the loop.

    Each batch is a pure function of (seed, step, micro-step, rank), so prefetching changes
    nothing a resume could see. On CUDA the next batch goes through pinned memory with an
    asynchronous copy, queued before the current one's kernels are waited on.
    """

    def fetch(step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = train_batch(
            tokens, seed, step, micro, batch_size, grad_accum, context, d.rank, d.world
        )
        if d.device.type != "cuda":
            return x, y
        return (
            x.pin_memory().to(d.device, non_blocking=True),
            y.pin_memory().to(d.device, non_blocking=True),
        )

    pending = None
    for step, micro in itertools.product(range(start, steps), range(grad_accum)):
        ready, pending = pending, fetch(step, micro)
        if ready is not None:
            yield ready
    if pending is not None:
        yield pending


@torch.no_grad()
def validation_loss(
    loss_fn: torch.nn.Module, batches: list, device: torch.device, amp: torch.dtype | None
) -> float:
    """Token-weighted mean loss over the fixed validation batches."""
    was_training = loss_fn.training
    loss_fn.eval()
    total = torch.zeros((), device=device, dtype=torch.float64)
    count = 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            total += loss_fn(x, y).double() * y.numel()
        count += y.numel()
    loss_fn.train(was_training)
    return float(total) / count


class StopFlag:
    """SIGINT/SIGTERM set a flag; the loop finishes its step, checkpoints and exits."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum

    def restore(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


class Interrupted(Exception):
    def __init__(self, signum: int, step: int) -> None:
        super().__init__(f"stopped by signal {signum} after step {step}; checkpoint written")
        self.signum = signum


class NonFiniteError(Exception):
    pass


def system_metrics(device: torch.device) -> dict[str, float]:
    """CPU and memory use (GPU memory and utilisation on CUDA) at a log step.

    DVCLive's monitor_system is not used: its thread logs wall-clock timestamps at its own
    steps and fails with a traceback on machines without NVML.
    """
    import psutil

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


def shared_checkpoint(ckpt: checkpoint.Checkpoint | None, d: Dist) -> checkpoint.Checkpoint | None:
    """Rank 0's choice of checkpoint (or None), opened and verified on every rank."""
    if d.world == 1:
        return ckpt
    box = [str(ckpt.path) if ckpt else None]
    dist.broadcast_object_list(box, src=0)
    if box[0] is None or d.main:
        return ckpt
    return checkpoint.Checkpoint(Path(box[0]), checkpoint.verify(Path(box[0])))


def train(
    model: torch.nn.Module,
    *,
    train_tokens: np.ndarray,
    val_tokens: np.ndarray,
    seed: int,
    context: int,
    steps: int,
    batch_size: int,
    grad_accum: int,
    lr: float,
    min_lr: float,
    warmup_steps: int,
    weight_decay: float,
    betas: tuple[float, float],
    grad_clip: float,
    precision: str,
    compile: bool,
    eval_every: int,
    n_eval_batches: int,
    log_every: int,
    checkpoint_every: int,
    keep_checkpoints: int,
    resume: str,
    final: str,
    max_bad_steps: int,
    ckpt_dir: Path,
    run_fingerprint: str,
    log_dir: Path | None,
    dist_info: Dist = Dist(),
    strategy: str = "ddp",
    compile_mode: str = "default",
) -> dict[str, Any]:
    """Train `model` in place; return a summary. Rank 0 alone logs and checkpoints.

    With several processes, `strategy` "ddp" replicates the model and "fsdp" shards it
    (codexlm.parallel); under "fsdp" `model` is left sharded: `parallel.gathered` unshards
    it for saving. `compile_mode` is torch.compile's `mode` (used when `compile` is on).
    """
    from codexlm.model import count_params

    d = dist_info
    device = d.device
    seed_everything(seed)
    raw = model.to(device)
    raw.train()
    amp = autocast_dtype(precision, device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    mode = "fsdp" if strategy == "fsdp" and d.world > 1 else "ddp"  # one process: plain
    fsdp = mode == "fsdp"
    fwd: torch.nn.Module = CausalLMLoss(raw)
    if fsdp:  # sharding turns parameters into DTensors: before the optimizer sees them
        parallel.shard(fwd, raw, compile, compile_mode)
    opt = build_optimizer(raw, lr, weight_decay, betas)
    params = [p for p in raw.parameters() if p.requires_grad]

    # ---- resume
    start, tokens_seen, val_loss = 0, 0, None
    ckpt = None
    if d.main:
        if resume == "auto":
            ckpt = checkpoint.find_resumable(ckpt_dir, run_fingerprint)
        else:
            checkpoint.clear(ckpt_dir)
    ckpt = shared_checkpoint(ckpt, d)
    if ckpt is not None:
        weights, opt_state, rng = checkpoint.load(ckpt, device)
        missing = set(parallel.trainable_names(raw)) - set(weights)
        if missing:
            raise checkpoint.CheckpointError(f"{ckpt.path}: lacks weights {sorted(missing)[:3]}")
        parallel.load_state(raw, opt, weights, opt_state, mode)
        checkpoint.set_rng_state(ckpt.state["rng"], rng)
        start, tokens_seen, val_loss = ckpt.step, ckpt.state["tokens_seen"], ckpt.state["val_loss"]
        if d.main:
            print(f"train: resuming from {ckpt.path} (step {start} of {steps})")
    elif d.main:
        print(f"train: starting from step 0 of {steps}")
    if d.main and d.world > 1:
        print(f"train: {d.world} processes, {mode}")

    live = None
    if d.main and log_dir:  # dvclive is imported only where something is logged
        from codexlm.live import open_live

        live = open_live(
            log_dir, start if ckpt else None, ckpt.path / checkpoint.LOG if ckpt else None
        )
    n_trainable = count_params(raw, trainable_only=True)
    if live is not None:  # what LoRA saves, against full fine-tuning
        live.log_metric("params/trainable", n_trainable, plot=False)
        live.log_metric("params/total", count_params(raw), plot=False)
        optimizer_bytes = 2 * sum(p.numel() * p.element_size() for p in params)  # AdamW m, v
        live.log_metric("params/optimizer_state_bytes", optimizer_bytes, plot=False)

    # Validation runs uncompiled and unwrapped (except under FSDP, whose sharded parameters
    # only the wrapped module can gather): a no-grad graph would be a second compilation
    # (12 s on the CPU default, more on GPUs) for a few batches per evaluation, and every
    # rank scores the same validation windows, so DDP has nothing to synchronise.
    evaluator = fwd if fsdp else CausalLMLoss(raw)
    # ---- compile and wrap (after loading: the checkpoint's names are the raw model's)
    if compile and not fsdp:
        fwd = torch.compile(fwd, mode=compile_mode)
    if d.world > 1 and not fsdp:
        fwd = torch.nn.parallel.DistributedDataParallel(
            fwd, device_ids=[device.index] if device.type == "cuda" else None
        )

    # n_eval_batches global batches of windows, the same set whatever the process count
    val_data = eval_batches(
        val_tokens, seed, n_eval_batches * grad_accum * d.world, batch_size, context
    )
    global_batch = batch_size * grad_accum * d.world
    tokens_per_step = global_batch * context
    cfg = getattr(raw, "config", None)
    flops_tok = flops_per_token(
        count_params(raw),
        getattr(cfg, "num_hidden_layers", 0) or 0,
        getattr(cfg, "hidden_size", 0) or 0,
        context,
    )
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"

    def log(step: int, metrics: dict[str, float]) -> None:
        if live is None:
            return
        live.step = step
        for k, v in metrics.items():
            live.log_metric(k, v)
        live.make_summary()

    def save_checkpoint(step: int) -> None:
        if not weights_finite(raw, mode, d.world):
            raise NonFiniteError(f"non-finite weights at step {step}: checkpoint not written")
        weights = parallel.model_state(raw, mode)  # under FSDP: collectives, on every rank
        opt_state = parallel.optimizer_state(raw, opt, mode)
        if d.main:
            checkpoint.save(
                ckpt_dir,
                step,
                weights,
                opt_state,
                {"tokens_seen": tokens_seen, "val_loss": val_loss, "fingerprint": run_fingerprint},
                log_dir if live is not None else None,
            )
            checkpoint.prune(ckpt_dir, keep_checkpoints)
        if d.world > 1:
            dist.barrier()

    if ckpt is None:
        val_loss = validation_loss(evaluator, val_data, device, amp)
        log(0, {"val/loss": val_loss})

    stop = StopFlag()
    zero = torch.zeros((), device=device)
    loss_acc, good_acc, bad_total, bad_run, bad_max = (
        zero.clone(),
        zero.clone(),
        zero.clone(),
        zero.clone(),
        zero.clone(),
    )
    norm_acc = zero.clone()
    t_last, tokens_last = time.perf_counter(), tokens_seen
    batches = device_batches(train_tokens, seed, start, steps, batch_size, grad_accum, context, d)
    bar = tqdm(total=steps, initial=start, desc="train", unit="step", disable=not d.main)
    restore_determinism = deterministic_kernels(device)  # around the loop: it compiles
    try:
        for step in range(start, steps):
            step_lr = lr_at(step, lr, min_lr, warmup_steps, steps)
            for g in opt.param_groups:
                g["lr"] = step_lr
            step_loss = zero.clone()
            for micro in range(grad_accum):
                x, y = next(batches)
                last_micro = micro == grad_accum - 1
                # DDP and FSDP reduce gradients on the last micro-step only
                with parallel.grad_sync(fwd, mode, d.world, last_micro):
                    with torch.autocast(
                        device.type, dtype=amp or torch.float32, enabled=amp is not None
                    ):
                        loss = fwd(x, y)
                    (loss / grad_accum).backward()
                step_loss += loss.detach() / grad_accum
            norm = parallel.local(  # a replicated DTensor under FSDP
                torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
            )
            bad = ~torch.isfinite(norm)
            opt.found_inf = bad.float()  # fused AdamW skips the update (and its step count)
            opt.step()
            opt.zero_grad(set_to_none=True)
            bad_total += bad
            bad_run = (bad_run + 1) * bad
            bad_max = torch.maximum(bad_max, bad_run)
            loss_acc += torch.where(bad, zero, step_loss)
            norm_acc += torch.where(bad, zero, norm)
            good_acc += ~bad
            done = step + 1
            tokens_seen += tokens_per_step
            bar.update(1)

            if done % log_every == 0 or done == steps:
                if int(bad_max) >= max_bad_steps:  # a sync, at log intervals only
                    raise NonFiniteError(
                        f"{int(bad_max)} consecutive steps with a non-finite loss or gradient "
                        f"(train.max_bad_steps = {max_bad_steps}) before step {done}; "
                        "lower train.lr or check the data"
                    )
                if d.world > 1:  # each rank saw its own share of the batch: average them
                    dist.all_reduce(loss_acc)
                    loss_acc /= d.world
                now = time.perf_counter()
                good = max(float(good_acc), 1.0)
                tps = (tokens_seen - tokens_last) / max(now - t_last, 1e-9)
                metrics = {
                    "train/loss": float(loss_acc) / good,
                    "lr": step_lr,
                    "grad_norm": float(norm_acc) / good,
                    "tokens_per_s": tps,
                    "bad_steps": float(bad_total),
                }
                util = mfu(tps, flops_tok, device_name) if device.type == "cuda" else None
                if util is not None:
                    metrics["mfu"] = util
                metrics.update(system_metrics(device))
                log(done, metrics)
                bar.set_postfix(loss=f"{metrics['train/loss']:.3f}", tok_s=f"{tps:.0f}")
                loss_acc.zero_()
                norm_acc.zero_()
                good_acc.zero_()
                t_last, tokens_last = time.perf_counter(), tokens_seen
            if done % eval_every == 0 or done % checkpoint_every == 0 or done == steps:
                val_loss = validation_loss(evaluator, val_data, device, amp)
                log(done, {"val/loss": val_loss})
            stopping = stop.signum is not None
            if d.world > 1 and (done % log_every == 0):
                flag = torch.tensor([float(stopping)], device=device)
                dist.all_reduce(flag)
                stopping = bool(flag.item())
            elif d.world > 1:
                stopping = False
            if done % checkpoint_every == 0 or done == steps or stopping:
                if stopping and done % checkpoint_every and done != steps:
                    val_loss = validation_loss(evaluator, val_data, device, amp)
                save_checkpoint(done)
                t_last = time.perf_counter()  # checkpoint time is not training throughput
            if stopping and done < steps:
                raise Interrupted(stop.signum or signal.SIGTERM, done)
    finally:
        restore_determinism()
        bar.close()
        stop.restore()

    if final == "best":
        # every rank loads it (under FSDP each keeps its shard)
        best = shared_checkpoint(checkpoint.best(ckpt_dir) if d.main else None, d)
        if best is not None:
            weights, _, _ = checkpoint.load(best, device)
            parallel.load_state(raw, None, weights, None, mode)
            val_loss = best.state["val_loss"]
            if d.main:
                print(f"train: final weights from {best.path} (val loss {val_loss:.4f})")
    if not weights_finite(raw, mode, d.world):
        raise NonFiniteError("non-finite weights after training: models/trained not written")
    summary = {
        "step": steps,
        "tokens_seen": tokens_seen,
        "val_loss": val_loss,
        "params_trainable": n_trainable,
    }
    if live is not None:
        live.end()
    return summary
