"""Checkpoint overhead: one checkpoint's cost against the training steps between two of them.

    .venv/bin/python bench/checkpoint_overhead.py               # params.yaml's model and train.*
    .venv/bin/python bench/checkpoint_overhead.py --steps 30 --compare     # quicker, + cross-check
    .venv/bin/python bench/checkpoint_overhead.py | tail -n 1 | python -m json.tool

Trains the model of params.yaml (vocab 4096, `codexlm.model.build_model`) with the real
`codexlm.train.train` and params.yaml's train.* settings, except `--steps` (default: two
checkpoint intervals), on random tokens, with log_dir=None, resume="never" and a temporary
checkpoint folder.

What is timed. train() calls `checkpoint.save` and `checkpoint.prune` through the
`codexlm.checkpoint` module and `weights_finite` (the check that guards every save) through
`codexlm.train`, so those three names are wrapped, not copied: one checkpoint's cost is the
wall time of the three calls it makes. The save is also split into its parts (safetensors
weights, torch.save of the optimizer and RNG states, the sha256 manifest, fsync). A step's
cost is the wall time between two consecutive ends of optimizer steps (train()'s progress bar
is wrapped to mark them) less the validation and checkpoint time that fell between them, so
logging and batch construction count as training, as they do for users. `step_s` is the
median over the steps after the first `--warmup` (allocator and first-call warm-up): steps
slowed by other work on a shared machine do not count, and a smaller step_s only makes the
overhead figure larger (the mean is printed too).

    overhead % = 100 x checkpoint_s / (checkpoint_every x step_s)

i.e. the share one checkpoint adds to the training time of the interval it closes. train()
always checkpoints the last step too; that checkpoint is timed like the others.

Cross-check (--compare, doubles the run time): the same training with checkpoint_every >
steps writes only the final checkpoint, so the difference in train()'s wall time (less its
validations) between the two runs, per extra checkpoint, is the end-to-end cost of a
checkpoint, including whatever it does to the steps after it (page cache writeback). It is a
difference of two long timings, so on a shared CPU it is noisy: a fraction of a second per
checkpoint is lost in run-to-run noise of the steps.

On 2 CPU cores a step of the default model takes about 0.7 s, so the default run (200 steps)
takes about 3 minutes; the figure is per-checkpoint cost against per-step cost, so
`--steps 30` gives the same answer faster (the last step's checkpoint is timed like any).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch
from tqdm import tqdm

from codexlm import checkpoint as codexlm_checkpoint
from codexlm import params as codexlm_params
from codexlm import train as codexlm_train
from codexlm.model import build_model, count_params

REPO = Path(__file__).resolve().parent.parent
VOCAB = 4096
MB = 1e6  # bytes


class Timings:
    """Wall-clock records of one train() run, filled by the wrappers of `instrument`."""

    def __init__(self) -> None:
        self.step_ends: list[float] = []  # perf_counter at the end of each optimizer step
        self.events: list[tuple[str, float, float]] = []  # (kind, start, seconds)
        self.checkpoints: list[dict[str, float]] = []  # per checkpoint: part -> seconds
        self.save_parts: dict[str, float] = defaultdict(float)  # inside the current save
        self.pending_check = 0.0  # weights_finite() just before a save
        self.in_save = False

    def non_step_seconds(self, start: float, end: float) -> float:
        return sum(s for _, t, s in self.events if start <= t < end)


def _timed(fn: Callable[..., Any], record: Callable[[float, float], None]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            record(t, time.perf_counter() - t)

    return wrapper


def instrument(stack: contextlib.ExitStack, tm: Timings) -> None:
    """Wrap the names train() and checkpoint.save() call, to time them where they run."""
    for module, name in (
        (codexlm_train, "tqdm"),
        (codexlm_train, "validation_loss"),
        (codexlm_train, "weights_finite"),
        (codexlm_checkpoint, "save"),
        (codexlm_checkpoint, "prune"),
        (codexlm_checkpoint, "save_file"),
        (codexlm_checkpoint, "sha256_file"),
    ):
        if not hasattr(module, name):
            raise RuntimeError(
                f"{module.__name__} no longer has {name!r}; the bench's timing hooks need "
                "updating (bench/checkpoint_overhead.py)"
            )

    class ClockBar(tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True  # keep the bench's output to its table
            super().__init__(*args, **kwargs)
            tm.step_ends.append(time.perf_counter())  # the loop starts right after this

        def update(self, n: float | None = 1) -> bool | None:
            tm.step_ends.append(time.perf_counter())
            return super().update(n)

    def on_validation(t: float, s: float) -> None:
        tm.events.append(("validation", t, s))

    def on_check(t: float, s: float) -> None:
        tm.pending_check = s  # belongs to the save that follows (or to no checkpoint)
        tm.events.append(("weights_finite", t, s))

    def on_save(t: float, s: float) -> None:
        parts = dict(tm.save_parts)
        parts["save_other"] = s - sum(parts.values())
        tm.checkpoints.append({"weights_finite": tm.pending_check, "save": s, **parts})
        tm.save_parts.clear()
        tm.pending_check = 0.0
        tm.events.append(("save", t, s))

    def on_prune(t: float, s: float) -> None:
        tm.checkpoints[-1]["prune"] = s
        tm.events.append(("prune", t, s))

    def part(name: str) -> Callable[[float, float], None]:
        def record(t: float, s: float) -> None:
            if tm.in_save:
                tm.save_parts[name] += s

        return record

    real_save = codexlm_checkpoint.save

    def save(*args: Any, **kwargs: Any) -> Any:
        tm.in_save = True
        try:
            return real_save(*args, **kwargs)
        finally:
            tm.in_save = False

    patches: list[tuple[Any, str, Any]] = [
        (codexlm_train, "tqdm", ClockBar),
        (codexlm_train, "validation_loss", _timed(codexlm_train.validation_loss, on_validation)),
        (codexlm_train, "weights_finite", _timed(codexlm_train.weights_finite, on_check)),
        (codexlm_checkpoint, "save", _timed(save, on_save)),
        (codexlm_checkpoint, "prune", _timed(codexlm_checkpoint.prune, on_prune)),
        # parts of a save; os.fsync and torch.save are global names, timed only inside a save
        (codexlm_checkpoint, "save_file", _timed(codexlm_checkpoint.save_file, part("weights"))),
        (codexlm_checkpoint, "sha256_file", _timed(codexlm_checkpoint.sha256_file, part("sha256"))),
        (torch, "save", _timed(torch.save, part("torch_save"))),
        (os, "fsync", _timed(os.fsync, part("fsync"))),
    ]
    for module, name, new in patches:
        stack.enter_context(mock.patch.object(module, name, new))


def run(
    p: codexlm_params.Params,
    steps: int,
    checkpoint_every: int,
    tokens: np.ndarray,
    val: np.ndarray,
    device: torch.device,
    tmp_root: Path | None,
) -> dict[str, Any]:
    """One train() run; its timings and the size of the checkpoint it left."""
    m, t = p.model, p.train
    model = build_model(
        m.arch,
        m.n_layer,
        m.n_head,
        m.d_model,
        m.context,
        VOCAB,
        dropout=m.dropout,
        eos_id=0,
        pad_id=1,
        seed=p.seed,
    )
    tm = Timings()
    with contextlib.ExitStack() as stack:
        ckpt_dir = Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-ckpt-", dir=tmp_root))
        )
        instrument(stack, tm)
        stack.enter_context(contextlib.redirect_stdout(sys.stderr))  # stdout: table + JSON
        started = time.perf_counter()
        codexlm_train.train(
            model,
            train_tokens=tokens,
            val_tokens=val,
            seed=p.seed,
            context=m.context,
            steps=steps,
            batch_size=t.batch_size,
            grad_accum=t.grad_accum,
            lr=t.lr,
            min_lr=t.min_lr,
            warmup_steps=t.warmup_steps,
            weight_decay=t.weight_decay,
            betas=(t.beta1, t.beta2),
            grad_clip=t.grad_clip,
            precision=t.precision,
            compile=t.compile,
            eval_every=t.eval_every,
            n_eval_batches=t.eval_batches,
            log_every=t.log_every,
            checkpoint_every=checkpoint_every,
            keep_checkpoints=t.keep_checkpoints,
            resume="never",
            final=t.final,
            max_bad_steps=t.max_bad_steps,
            ckpt_dir=ckpt_dir,
            run_fingerprint="bench",
            log_dir=None,
            dist_info=codexlm_train.Dist(0, 1, device),
        )
        wall = time.perf_counter() - started
        newest = codexlm_checkpoint.candidates(ckpt_dir)[0]
        files = {f.name: f.stat().st_size for f in sorted(newest.iterdir()) if f.is_file()}
    if len(tm.step_ends) != steps + 1:
        raise RuntimeError(
            f"saw {len(tm.step_ends) - 1} step ends for {steps} steps; train()'s progress bar "
            "no longer marks every step (update bench/checkpoint_overhead.py)"
        )
    per_step = [b - a - tm.non_step_seconds(a, b) for a, b in itertools.pairwise(tm.step_ends)]
    validations = [s for kind, _, s in tm.events if kind == "validation"]
    return {
        "wall_s": wall,
        "step_seconds": per_step,
        "checkpoints": tm.checkpoints,
        "validation_s": float(np.mean(validations)) if validations else None,
        "validation_total_s": float(np.sum(validations)),
        "files": files,
        "n_params": count_params(model, trainable_only=True),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--steps", type=int, default=0, help="optimizer steps (default: 2 x checkpoint_every)"
    )
    ap.add_argument("--warmup", type=int, default=5, help="first steps left out of step_s")
    ap.add_argument(
        "--checkpoint-every", type=int, default=0, help="default: train.checkpoint_every"
    )
    ap.add_argument(
        "--compare", action="store_true", help="also run with only the final checkpoint"
    )
    ap.add_argument(
        "--dir", type=Path, default=None, help="where the temporary checkpoint folder goes"
    )
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument(
        "--params", type=Path, default=REPO / "params.yaml", help="model and train.* come from here"
    )
    args = ap.parse_args()

    p = codexlm_params.load(args.params)
    every = args.checkpoint_every or p.train.checkpoint_every
    steps = args.steps or 2 * every
    if steps <= args.warmup or every < 1 or args.warmup < 0:
        ap.error("need --steps > --warmup >= 0 and --checkpoint-every >= 1")
    if steps < every:
        ap.error(f"--steps {steps} < checkpoint_every {every}: no periodic checkpoint to time")
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    where = (
        torch.cuda.get_device_name(device) if cuda else f"cpu ({torch.get_num_threads()} threads)"
    )

    # random tokens: what they say does not change what a step or a checkpoint costs
    m, t = p.model, p.train
    rng = np.random.default_rng(p.seed)
    need = steps * t.batch_size * t.grad_accum * (m.context + 1)
    tokens = rng.integers(0, VOCAB, size=max(need, 1 << 20), dtype=np.uint16)
    val = rng.integers(0, VOCAB, size=64 * (m.context + 1), dtype=np.uint16)

    print(f"device: {where}; torch {torch.__version__}")
    print(
        f"model: {m.arch} {m.n_layer} layers x {m.d_model} ({m.n_head} heads), context "
        f"{m.context}, vocab {VOCAB}; batch {t.batch_size} x {t.grad_accum} accum; "
        f"{steps} steps, checkpoint_every {every}, eval_every {t.eval_every}, "
        f"keep_checkpoints {t.keep_checkpoints}",
        flush=True,
    )

    a = run(p, steps, every, tokens, val, device, args.dir)
    b = run(p, steps, steps + 1, tokens, val, device, args.dir) if args.compare else None

    step_times = a["step_seconds"][args.warmup :]
    # the median, not the mean: on a shared machine a few steps slowed by other work would
    # inflate the mean, and a smaller step_s can only make the overhead figure larger
    step_s = float(np.median(step_times))
    step_mean = float(np.mean(step_times))
    ckpts = a["checkpoints"]
    totals = [c["weights_finite"] + c["save"] + c.get("prune", 0.0) for c in ckpts]
    checkpoint_s = float(np.mean(totals))
    overhead = 100 * checkpoint_s / (every * step_s)
    size = sum(a["files"].values())
    # train() validates at every checkpoint step (train.py, `done % checkpoint_every`), so a
    # checkpoint_every that is not a multiple of eval_every adds validations of its own
    forced_val = every % t.eval_every != 0
    val_pct = (
        100 * a["validation_s"] / (every * step_s) if forced_val and a["validation_s"] else 0.0
    )

    print(f"{'':<28}{'seconds':>10}{'ms':>10}")
    print(
        f"{'step (median)':<28}{step_s:>10.4f}{1000 * step_s:>10.1f}"
        f"   mean {1000 * step_mean:.1f} ms over {len(step_times)} steps"
    )
    for i, c in enumerate(ckpts):
        parts = ", ".join(
            f"{k} {1000 * v:.1f}"
            for k, v in c.items()
            if k not in ("save", "weights_finite", "prune")
        )
        total = totals[i]
        print(f"{f'checkpoint {i + 1}':<28}{total:>10.4f}{1000 * total:>10.1f}   ({parts} ms)")
        print(
            f"{'':<28}{'':>10}{'':>10}   weights_finite {1000 * c['weights_finite']:.1f}, "
            f"save {1000 * c['save']:.1f}, prune {1000 * c.get('prune', 0.0):.1f} ms"
        )
    print(f"{'checkpoint (mean)':<28}{checkpoint_s:>10.4f}{1000 * checkpoint_s:>10.1f}")
    if a["validation_s"] is not None:
        v = a["validation_s"]
        print(f"{'validation (mean)':<28}{v:>10.4f}{1000 * v:>10.1f}")
    files = ", ".join(f"{k} {v / MB:.2f}" for k, v in a["files"].items())
    print(f"checkpoint size: {size / MB:.2f} MB ({files} MB); {a['n_params'] / 1e6:.2f}M params")
    print(
        f"overhead: {checkpoint_s:.3f} s per checkpoint / ({every} steps x {step_s:.4f} s) "
        f"= {overhead:.2f}% of training time at checkpoint_every {every}"
    )
    if forced_val:
        print(
            f"plus {val_pct:.2f}% for the validation train() runs at each checkpoint step "
            f"(checkpoint_every {every} is not a multiple of eval_every {t.eval_every})"
        )

    e2e_s = None
    if b is not None:
        extra = len(a["checkpoints"]) - len(b["checkpoints"])
        if extra > 0:
            loop_a = a["wall_s"] - a["validation_total_s"]
            loop_b = b["wall_s"] - b["validation_total_s"]
            e2e_s = (loop_a - loop_b) / extra
            print(
                f"cross-check: train() wall less validation {loop_a:.2f} s with "
                f"{len(a['checkpoints'])} checkpoints, {loop_b:.2f} s with "
                f"{len(b['checkpoints'])}: "
                f"{e2e_s:.3f} s per extra checkpoint "
                f"({100 * e2e_s / (every * step_s):.2f}%; noisy on a shared CPU)"
            )

    summary = {
        "checkpoint_s": round(checkpoint_s, 4),
        "step_s": round(step_s, 5),
        "checkpoint_every": every,
        "overhead_pct": round(overhead, 3),
        "checkpoint_mb": round(size / MB, 3),
        "checkpoint_files_mb": {k: round(v / MB, 3) for k, v in a["files"].items()},
        "checkpoints_timed": len(ckpts),
        "checkpoint_s_each": [round(x, 4) for x in totals],
        "checkpoint_parts_s": {
            k: round(float(np.mean([c.get(k, 0.0) for c in ckpts])), 4) for k in ckpts[0]
        },
        "step_s_mean": round(step_mean, 5),
        "validation_s": round(a["validation_s"], 4) if a["validation_s"] is not None else None,
        "forced_validation_pct": round(val_pct, 3),
        "e2e_checkpoint_s": round(e2e_s, 4) if e2e_s is not None else None,
        "train_wall_s": round(a["wall_s"], 2),
        "final_only_wall_s": round(b["wall_s"], 2) if b is not None else None,
        "steps": steps,
        "warmup_steps_excluded": args.warmup,
        "device": device.type,
        "model": {
            "arch": m.arch,
            "n_layer": m.n_layer,
            "n_head": m.n_head,
            "d_model": m.d_model,
            "context": m.context,
            "vocab": VOCAB,
            "params": a["n_params"],
        },
        "batch_size": t.batch_size,
        "grad_accum": t.grad_accum,
        "keep_checkpoints": t.keep_checkpoints,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
