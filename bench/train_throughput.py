"""Training throughput: our loop against `transformers.Trainer`, eager and compiled, with the
same initial weights, random tokens, batch, precision, fused AdamW, clipping, schedule and
compile mode, timed from the end of step --warmup to the end of step --warmup + --steps (on
CUDA after a synchronize). The Trainer steps its own fused AdamW, as a user of it would;
hf_trainer_ours* give it our optimizer and schedule instead (train.optimizer: Muon for the
hidden matrices by default), so that the two loops do the same arithmetic a step.
--checkpoints: what a checkpoint costs our loop instead."""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import REPO, Timeline, load_params, matmul_peak, override, random_tokens, run_train
from transformers import Trainer, TrainerCallback, TrainingArguments

from codexlm import machine
from codexlm.errors import run_stage
from codexlm.live import LiveLogger
from codexlm.metrics import mfu
from codexlm.model import build_model, count_params
from codexlm.optim import build_optimizer, lr_at, set_lr
from codexlm.parallel import Dist
from codexlm.train import Run, autocast_dtype, device_batches, model_flops_per_token

try:
    import dvclive  # LiveLogger imports it when a run starts
except ImportError:  # the GPU image: logging time is the system metrics' alone
    dvclive = None

PRESETS = {f"{arch}-124m": arch for arch in ("gpt2", "llama")}  # GPT-2 small's size
VARIANTS = ["ours", "ours_compile", "hf_trainer", "hf_trainer_compile"]
VARIANTS += ["hf_trainer_ours_opt", "hf_trainer_ours_opt_compile"]


def time_ours(s: Any, tokens: np.ndarray, val: np.ndarray, compile: bool) -> dict[str, float]:
    """train() as the stage runs it (DVCLive where installed), the Timeline after the other
    callbacks: its on_log comes when logging is done (the loop syncs at log steps anyway)."""
    total, every = s.warmup + s.steps, s.train.log_every
    logs = {n for n in range(s.warmup, total) if n % every == 0}
    clock = Timeline(s.device, {s.warmup, total} | logs)
    cfg = override(s.train, steps=total, eval_every=total, checkpoint_every=total, compile=compile)
    cfg.compile_mode = s.compile_mode if compile else "default"
    with tempfile.TemporaryDirectory() as log_dir:
        live = [LiveLogger(Path(log_dir))] if dvclive else []
        run_train(build(s), (tokens, val), cfg, s.run, [*live, clock])
    started = time.perf_counter()  # the window's batches, built the loop's way, on their own
    for _ in device_batches(tokens, s.seed, s.warmup, cfg, s.run):
        pass
    return {
        "seconds": clock.at("step", total) - clock.at("step", s.warmup),
        "data_s": time.perf_counter() - started,  # host time: what building costs the loop
        "log_s": sum(clock.at("log", n) - clock.at("step", n) for n in logs),
    }


class OurSchedule:
    """codexlm's lr schedule (optim.lr_at) as the Trainer steps a scheduler."""

    def __init__(self, opt: Any, cfg: Any) -> None:
        self.opt, self.cfg, self.n = opt, cfg, 0
        set_lr(opt, lr_at(0, cfg))

    def step(self) -> None:
        self.n += 1
        set_lr(self.opt, lr_at(self.n, self.cfg))

    def get_last_lr(self) -> list[float]:
        return [lr_at(self.n, self.cfg)]

    def state_dict(self) -> dict[str, int]:
        return {"n": self.n}


def time_hf(s: Any, tokens: np.ndarray, compile: bool, ours_opt: bool) -> dict[str, float]:
    """transformers.Trainer.train(); a TrainerCallback marks the end of each step. With
    `ours_opt`, the Trainer steps our optimizer and schedule (`optimizers=`)."""
    total, t, ctx = s.warmup + s.steps, s.train, s.model.context
    clock = Timeline(s.device, {s.warmup, total})

    class Marks(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            clock.on_step_end(state.global_step)

    # windows of ctx tokens, labels = inputs (HF shifts): the model runs on (batch, ctx) as ours
    starts = np.random.default_rng([s.seed, 1]).integers(0, len(tokens) - ctx, total * t.batch_size)
    windows = [torch.from_numpy(tokens[i : i + ctx].astype(np.int64)) for i in starts]
    # ours's optimizer, schedule, precision and compile mode; nothing saved, logged or shown
    hp = dict(learning_rate=t.lr, weight_decay=t.weight_decay, adam_beta1=t.beta1)
    hp.update(adam_beta2=t.beta2, max_grad_norm=t.grad_clip, optim="adamw_torch_fused")
    hp.update(lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr": t.min_lr})
    hp.update(warmup_steps=t.warmup_steps, max_steps=total, seed=s.seed)
    hp.update(bf16=autocast_dtype(t.precision, s.device) == torch.bfloat16, torch_compile=compile)
    hp.update(torch_compile_mode=s.compile_mode if compile else None)
    hp.update(use_cpu=s.device.type == "cpu", save_strategy="no", report_to="none")
    hp.update(logging_strategy="no", disable_tqdm=True)
    with tempfile.TemporaryDirectory(prefix="bench-hf-") as out:
        args = TrainingArguments(out, per_device_train_batch_size=t.batch_size, **hp)
        data = [{"input_ids": w, "labels": w} for w in windows]
        model = build(s)
        opt = build_optimizer(model, t) if ours_opt else None
        both = (opt, OurSchedule(opt, t)) if ours_opt else (None, None)
        kw = dict(args=args, train_dataset=data, callbacks=[Marks()], optimizers=both)
        trainer = Trainer(model=model, **kw)
        with contextlib.redirect_stdout(sys.stderr):
            trainer.train()
    return {"seconds": clock.at("step", total) - clock.at("step", s.warmup)}


def build(s: Any) -> torch.nn.Module:
    return build_model(s.model, s.vocab, eos_id=0, pad_id=0, seed=s.seed)


def time_variant(name: str, s: Any, tokens: np.ndarray, val: np.ndarray) -> dict | str:
    """A variant's timings, or why it could not run here (no compiler, out of memory)."""
    compile = name.endswith("_compile")
    errors: tuple[type[BaseException], ...] = (torch.OutOfMemoryError,)
    errors += (torch._dynamo.exc.TorchDynamoException,) if compile else ()
    try:
        if name.startswith("ours"):
            return time_ours(s, tokens, val, compile)
        return time_hf(s, tokens, compile, ours_opt="_ours_opt" in name)
    except errors as e:
        return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"
    finally:
        gc.collect()
        torch.cuda.empty_cache()  # a no-op where CUDA is not in use
        torch._dynamo.reset()  # each compiled variant starts from a cold cache


def checkpoint_costs(s: argparse.Namespace) -> dict[str, Any]:
    """One checkpoint's cost against the steps between two: train.* as the stage runs them, the
    model and batch of the flags (on CUDA each step ends with a synchronize, to be timed)."""
    every, m, t = s.checkpoints or s.p.train.checkpoint_every, s.model, s.train
    cfg = override(s.p.train, steps=s.steps or 2 * every, checkpoint_every=every, resume="never")
    vars(cfg).update(batch_size=t.batch_size, precision=t.precision)
    clock = Timeline(s.device, set(range(cfg.steps + 1)))
    need = max(cfg.steps * t.batch_size * cfg.grad_accum * (m.context + 1), 1 << 20)
    tokens = random_tokens(s.vocab, need, 0), random_tokens(s.vocab, 64 * m.context, 1)
    run_train(build(s), tokens, cfg, s.run, [clock])
    ends = {n: at for hook, n, at in clock.events if hook == "step"}
    busy = {n for hook, n, _ in clock.events if hook in ("validate", "checkpoint")}
    # a step: from the end of the one before, unless a validation or checkpoint came between
    steps = [ends[n] - ends[n - 1] for n in range(s.warmup + 1, cfg.steps + 1) if n - 1 not in busy]
    step_s = statistics.median(steps)
    ckpt_s = statistics.mean(c["seconds"] for c in clock.checkpoints)
    files = clock.checkpoints[-1]["files"]
    mb = sum(files.values()) / 1e6
    pct, n = 100 * ckpt_s / (every * step_s), len(clock.checkpoints)
    print(
        f"step: {step_s:.4f} s (median of {len(steps)}); checkpoint: {ckpt_s:.3f} s (mean of {n})"
    )
    print(f"overhead = checkpoint / ({every} steps x step) = {pct:.2f}% of training time")
    print(f"checkpoint: {mb:.2f} MB: " + ", ".join(f"{k} {v / 1e6:.2f}" for k, v in files.items()))
    summary = dict(checkpoint_s=ckpt_s, step_s=step_s, checkpoint_every=every, checkpoint_mb=mb)
    return {**summary, "overhead_pct": pct, "checkpoints": clock.checkpoints}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", dest="preset", choices=["default", *PRESETS], default="default")
    ap.add_argument("--steps", type=int, default=0, help="timed steps (10; --checkpoints: 2 x N)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps before them (>= 1)")
    ap.add_argument("--rounds", type=int, default=2, help="runs of each; the fastest counts")
    ap.add_argument("--batch-size", type=int, default=0, help="override the model's batch")
    ap.add_argument("--precision", choices=["auto", "fp32", "bf16"], help="override")
    ap.add_argument("--no-compile", action="store_true", help="skip the compiled variants")
    modes = ["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
    ap.add_argument("--compile-mode", choices=modes, help="default: train.compile_mode")
    ap.add_argument("--variants", default="", help=f"a comma-separated subset of {VARIANTS}")
    what = "time a checkpoint every N steps (train.checkpoint_every) instead"
    ap.add_argument("--checkpoints", type=int, nargs="?", const=0, metavar="N", help=what)
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml")
    s = ap.parse_args()
    if min(s.warmup, s.rounds) < 1 or min(s.steps, s.batch_size, s.checkpoints or 0) < 0:
        ap.error("--steps, --warmup and --rounds must be >= 1 (warm-up ends with the first mark)")
    if s.checkpoints is not None and 0 < s.steps <= s.warmup + 1:
        ap.error("--checkpoints: --steps must exceed --warmup + 1 (no step left to time)")
    wanted = s.variants.split(",") if s.variants else VARIANTS
    wanted = [v for v in wanted if not (s.no_compile and v.endswith("_compile"))]
    if not wanted or set(wanted) - set(VARIANTS):
        ap.error(f"--variants: choose among {', '.join(VARIANTS)} (no *_compile with --no-compile)")
    s.names = [v for v in VARIANTS if v in wanted]
    # the model, train settings and sizes: params.yaml's, or a preset's
    s.p = p = load_params(s.params)
    cuda = s.device == "cuda" or (s.device == "auto" and torch.cuda.is_available())
    s.seed, s.vocab = p.seed, p.tokenizer.vocab_size
    s.device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    s.train = override(p.train, grad_accum=1, eval_batches=1, resume="never", final="last")
    s.train.strategy, s.compile_mode = "ddp", s.compile_mode or p.train.compile_mode
    s.model = override(p.model, dropout=0.0)
    if s.preset != "default":
        vars(s.model).update(arch=PRESETS[s.preset], n_layer=12, n_head=12, d_model=768)
        s.model.context, s.vocab, s.train.batch_size, s.train.precision = 1024, 50304, 32, "bf16"
    s.train.batch_size = s.batch_size or s.train.batch_size
    s.train.precision = s.precision or s.train.precision
    s.run = Run(s.seed, s.model.context, None, "bench", Dist(0, 1, s.device))
    return s


def report(
    s: argparse.Namespace, best: dict[str, Any], flops_tok: float, name: str, peak: float
) -> dict:
    """Prints the table; returns each variant's figures and the ratio of the fastest of each.
    `mfu %` is against the datasheet's peak (GPUs only), `peak %` against the matmul peak
    measured in this run (`peak`, FLOP/s): on a CPU, the only peak there is."""
    head = f"{'variant':<20}{'tokens/s':>12}{'ms/step':>10}{'GFLOP/s':>10}{'peak %':>8}"
    print(f"{head}{'mfu %':>8}{'data %':>8}{'log %':>8}")
    rows: dict[str, Any] = {}
    for n, b in best.items():
        if isinstance(b, str):
            rows[n] = {"skipped": b}
            print(f"{n:<20}skipped: {b}")
            continue
        tps = s.steps * s.train.batch_size * s.model.context / b["seconds"]
        r = rows[n] = {"tokens_per_s": tps, "ms_per_step": 1000 * b["seconds"] / s.steps}
        r["model_flops_per_s"] = tps * flops_tok
        r["peak_utilisation"] = tps * flops_tok / peak
        r["mfu"] = mfu(tps, flops_tok, name) if s.device.type == "cuda" else None
        if "data_s" in b:
            r["data_overhead_pct"] = 100 * b["data_s"] / b["seconds"]
            r["log_overhead_pct"] = 100 * b["log_s"] / b["seconds"]
            r["log_includes_dvclive"] = dvclive is not None
        pcts = [r["mfu"] and 100 * r["mfu"], r.get("data_overhead_pct"), r.get("log_overhead_pct")]
        pcts = "".join(f"{'-':>8}" if c is None else f"{c:>8.2f}" for c in pcts)
        gf, used = r["model_flops_per_s"] / 1e9, 100 * r["peak_utilisation"]
        print(f"{n:<20}{tps:>12,.0f}{r['ms_per_step']:>10.1f}{gf:>10.1f}{used:>8.1f}{pcts}")
    ok = {n: r["tokens_per_s"] for n, r in rows.items() if "tokens_per_s" in r}
    ours = max((n for n in ok if n.startswith("ours")), key=ok.get, default=None)
    hf = max((n for n in ok if n in ("hf_trainer", "hf_trainer_compile")), key=ok.get, default=None)
    same = max((n for n in ok if "_ours_opt" in n), key=ok.get, default=None)
    ratio = ok[ours] / ok[hf] if ours and hf else None
    print(f"ratio: {ratio and round(ratio, 3)} (ours = {ours}, hf = {hf}, the fastest of each)")
    same_ratio = ok[ours] / ok[same] if ours and same else None
    if same:
        print(
            f"ratio, the Trainer stepping our optimizer ({s.train.optimizer}): "
            f"{same_ratio and round(same_ratio, 3)} (ours = {ours}, hf = {same})"
        )
    pcts = {k: rows.get(ours, {}).get(k) for k in ("data_overhead_pct", "log_overhead_pct")}
    summary = {"ours_tokens_per_s": ok.get(ours), "hf_tokens_per_s": ok.get(hf), "ratio": ratio}
    summary.update(hf_ours_opt_tokens_per_s=ok.get(same), ratio_same_optimizer=same_ratio)
    pairs = (("ours", ours), ("hf", hf))
    used = {f"{k}_peak_utilisation": rows[v]["peak_utilisation"] for k, v in pairs if v}
    return {**summary, **pcts, **used, "matmul_peak_flops": peak, "variants": rows}


def main() -> None:
    s = parse_args()
    m, t, cuda = s.model, s.train, s.device.type == "cuda"
    name = torch.cuda.get_device_name(s.device) if cuda else "cpu"
    print(f"device: {name} ({torch.get_num_threads()} threads); torch {torch.__version__}")
    print(machine.line())  # the CPU's ISA and bf16 support decide its figures: always shown
    if s.checkpoints is not None:
        print(json.dumps({**checkpoint_costs(s), "device": s.device.type}))
        return
    if cuda:  # train() turns TF32 on for itself; on for everyone so the order is moot
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    s.steps = s.steps or 10
    need = (s.warmup + s.steps) * t.batch_size * (m.context + 1)
    tokens = random_tokens(s.vocab, max(need, 1 << 20), s.seed)
    val = random_tokens(s.vocab, 4 * (m.context + 1), s.seed + 1)
    probe = build(s)
    n_params, flops_tok = count_params(probe), model_flops_per_token(probe, m.context)
    bf16 = autocast_dtype(t.precision, s.device) == torch.bfloat16
    print(
        f"model: {m.arch} {m.n_layer} x {m.d_model} ({m.n_head} heads), context {m.context}, "
        f"vocab {s.vocab}, {n_params / 1e6:.1f}M params; batch {t.batch_size}, "
        f"{'bf16 autocast' if bf16 else 'fp32'}; {s.warmup} warm-up + {s.steps} timed steps, "
        f"best of {s.rounds} rounds in alternating order; compile mode {s.compile_mode}; "
        f"ours logs every {t.log_every} steps ({'DVCLive + ' * bool(dvclive)}system metrics)"
    )
    dtype = torch.bfloat16 if bf16 else torch.float32
    size = 8192 if cuda else 2048  # large enough to reach the machine's peak, not its memory
    peak = matmul_peak(s.device, dtype, size)
    print(
        f"measured matmul peak: {peak / 1e9:,.1f} GFLOP/s ({size} x {size} @ {size} x {size}, "
        f"{str(dtype).removeprefix('torch.')}, {torch.get_num_threads()} threads, fastest of 1 s)"
    )
    # Rounds alternate the order (the first to run pays for cold caches); each variant keeps
    # its fastest round, as timeit does: noise on a shared machine only slows a run down.
    best: dict[str, Any] = {}
    for r in range(s.rounds):
        for n in s.names if r % 2 == 0 else s.names[::-1]:
            if not isinstance(best.get(n), str):  # a failed variant is not retried
                got = time_variant(n, s, tokens, val)
                if n not in best or isinstance(got, str) or got["seconds"] < best[n]["seconds"]:
                    best[n] = got
    summary = report(s, {n: best[n] for n in s.names}, flops_tok, name, peak)
    model = {**vars(m), "vocab": s.vocab, "params": n_params}
    setup = dict(batch_size=t.batch_size, precision="bf16" if bf16 else "fp32", model=model)
    where = {"device": s.device.type, "device_name": name, "machine": machine.describe()}
    print(json.dumps({**summary, **where, **setup}))


if __name__ == "__main__":
    run_stage(main)  # a mistake in params or data: one line, exit status 2
