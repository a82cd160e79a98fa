"""What Muon costs per step, side by side with AdamW and with `torch.optim.Muon`, on
params.yaml's model.

The compiled forward + backward + clipping of one batch (the same whichever optimizer
steps), and each optimizer's step, medians over the timed steps after warm-up ones: AdamW,
this project's Muon (`codexlm.optim.Muon` for the hidden matrices, AdamW for the rest) and
the same with `torch.optim.Muon`. Then the Newton-Schulz iterations alone over the hidden
matrices, as torch runs them (one matrix at a time, bf16) and as `codexlm.optim` does
(stacked by shape, one batched iteration per shape) in bf16 and in fp32, the precision it
picks on a CPU. Timing is on random tokens; the costs do not depend on what the tokens say.
The machine line says what the figures are of: on a CPU without native bf16 (AVX2 only)
bf16 matmuls are emulated and the bf16 rows are 20-100x the fp32 ones.

    .venv/bin/python bench/optimizer_step.py            # the default model, ~2 min on 2 cores
    .venv/bin/python bench/optimizer_step.py --profile 12  # ... and where a step's time goes
    .venv/bin/python bench/optimizer_step.py --chunks 3072  # ... and the loss in other chunks
    TORCHINDUCTOR_CACHE_DIR=/tmp/inductor-avx2 ATEN_CPU_CAPABILITY=avx2 \
        ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
        .venv/bin/python bench/optimizer_step.py
                                                        # an AVX2-only CPU, on a newer one (its
                                                        # own compile cache: bench/RESULTS.md)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from common import REPO, load_params, override, random_tokens
from torch.optim._muon import _zeropower_via_newtonschulz

from codexlm import machine
from codexlm.errors import run_stage
from codexlm.loss import CausalLMLoss, chunk_budget, chunk_tokens
from codexlm.model import build_model
from codexlm.optim import (
    NS_COEFFICIENTS,
    MuonAdamW,
    build_optimizer,
    hidden_matrices,
    newton_schulz_dtype,
    orthogonalise,
    wide,
)


def median_ms(fn: Callable[[], object], warmup: int, steps: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def interleaved_ms(
    fns: dict[int, Callable[[], object]], rounds: int, calls: int
) -> dict[int, float]:
    """The median ms a call of each of `fns`, timed in turns (`calls` a turn) so that the
    machine's drift, which is larger than the differences measured, falls on all alike."""
    for fn in fns.values():  # warm-up, compiling included
        for _ in range(3):
            fn()
    times: dict[int, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            started = time.perf_counter()
            for _ in range(calls):
                fn()
            times[k].append((time.perf_counter() - started) / calls)
    return {k: 1000 * statistics.median(v) for k, v in times.items()}


def profile(fn: Callable[[], object], steps: int, top: int) -> dict[str, float]:
    """The `top` ops and kernels by their own CPU time, ms a call of `fn` (printed too)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            fn()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    costs = {e.key: e.self_cpu_time_total / 1000 / steps for e in events[:top]}
    print(f"the {top} costliest ops and kernels of forward+backward+clip, own ms a step:")
    for name, ms in costs.items():
        print(f"  {ms:8.2f}  {name}")
    return costs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml")
    ap.add_argument("--steps", type=int, default=20, help="timed steps (after 5 warm-up)")
    ap.add_argument("--vocab", type=int, default=0, help="0: tokenizer.vocab_size")
    ap.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="then the N costliest ops and compiled kernels of the forward + backward + clip, "
        "ms a step (torch.profiler)",
    )
    ap.add_argument(
        "--chunks",
        type=lambda v: [int(c) for c in v.split(",")],
        default=[],
        metavar="N,...",
        help="then forward+backward+clip with the loss in chunks of N tokens, beside the "
        "default's chunk (codexlm.loss.chunk_budget), in interleaved rounds",
    )
    s = ap.parse_args()
    # inductor's kernels show in the profile by name only when compiled to record themselves
    torch._inductor.config.cpp.enable_kernel_profile = s.profile > 0
    p = load_params(s.params)
    vocab = s.vocab or p.tokenizer.vocab_size
    batch, context = p.train.batch_size, p.model.context
    ids = torch.from_numpy(random_tokens(vocab, batch * context, p.seed).astype("int64"))
    x = ids.view(batch, context)
    print(machine.line())
    chosen = newton_schulz_dtype(torch.device("cpu"))
    print(f"optimizer_step: batch {batch} x {context}; newton-schulz on this device in {chosen}")
    model = build_model(p.model, vocab, 0, 0, p.seed)
    params = [q for q in model.parameters() if q.requires_grad]

    def with_chunk(chunk: int | None) -> Callable[[], None]:
        plain = CausalLMLoss(model)
        plain.chunk = chunk or plain.chunk
        loss_fn = torch.compile(plain)

        def backward() -> None:
            model.zero_grad(set_to_none=True)
            loss_fn(x, x).backward()
            torch.nn.utils.clip_grad_norm_(params, p.train.grad_clip)

        return backward

    backward = with_chunk(None)

    # the same forward and backward whichever optimizer steps: timed once
    forward_backward = median_ms(backward, 5, s.steps)
    optimizer = {}
    for name in ("adamw", "muon"):
        opt = build_optimizer(model, override(p.train, optimizer=name))
        optimizer[name] = median_ms(opt.step, 5, s.steps)  # on the last backward's gradients
    assert isinstance(opt, MuonAdamW)
    theirs = torch.optim.Muon(
        [q for g in opt.muon.param_groups for q in g["params"]],
        lr=p.train.lr,
        weight_decay=p.train.weight_decay,
        adjust_lr_fn="match_rms_adamw",
    )
    optimizer["torch muon"] = median_ms(MuonAdamW(theirs, opt.rest).step, 5, s.steps)
    hidden = [q.detach() for q in hidden_matrices(model)]
    shapes: dict[tuple[int, ...], list[torch.Tensor]] = {}
    for g in map(wide, hidden):  # tall ones transposed, as codexlm.optim.Muon stacks them
        shapes.setdefault(tuple(g.shape), []).append(g)
    stacks = [torch.stack(gs) for gs in shapes.values()]

    def one_at_a_time() -> None:
        for g in hidden:
            _zeropower_via_newtonschulz(g, NS_COEFFICIENTS, 5, 1e-7)

    def stacked(dtype: torch.dtype) -> Callable[[], None]:
        return lambda: [orthogonalise(st, dtype=dtype) for st in stacks]

    # the same iteration both ways: stacked agrees with torch's to bf16's rounding
    first = shapes[next(iter(shapes))]
    ours = orthogonalise(torch.stack(first), dtype=torch.bfloat16).float()
    theirs = torch.stack(
        [_zeropower_via_newtonschulz(g, NS_COEFFICIENTS, 5, 1e-7) for g in first]
    ).float()
    ns = {
        "max_abs_diff": (ours - theirs).abs().max().item(),
        "matrices": len(hidden),
        "shapes": len(stacks),
        "one_at_a_time_ms": median_ms(one_at_a_time, 3, s.steps),
        "stacked_ms": median_ms(stacked(torch.bfloat16), 3, s.steps),
        "stacked_fp32_ms": median_ms(stacked(torch.float32), 3, s.steps),
    }

    def ratio(name: str) -> float:
        return (forward_backward + optimizer[name]) / (forward_backward + optimizer["adamw"])

    step_ratio = ratio("muon")
    print(f"forward+backward+clip {forward_backward:.1f} ms")
    for name, ms in optimizer.items():
        print(f"{name} step {ms:.1f} ms")
    print(
        f"a step with muon / with adamw: {step_ratio:.3f} "
        f"(with torch.optim.Muon: {ratio('torch muon'):.3f})"
    )
    print(
        f"newton-schulz, {ns['matrices']} matrices: one at a time (bf16, torch's) "
        f"{ns['one_at_a_time_ms']:.1f} ms; stacked in {ns['shapes']} shapes: bf16 "
        f"{ns['stacked_ms']:.1f} ms, fp32 {ns['stacked_fp32_ms']:.1f} ms"
    )
    summary = {"forward_backward_ms": forward_backward, "optimizer_ms": optimizer}
    if s.profile:
        summary["profile_ms"] = profile(backward, s.steps, s.profile)
    if s.chunks:
        default = chunk_tokens(vocab, chunk_budget(torch.device("cpu")))
        chunks = {c: with_chunk(c) for c in dict.fromkeys([default, *s.chunks])}
        summary["chunk_ms"] = interleaved_ms(chunks, 6, 4)
        print("forward+backward+clip by the loss's chunk, tokens (interleaved rounds):")
        for c, ms in summary["chunk_ms"].items():
            print(f"  {c:>6}  {ms:.1f} ms{'  (the default)' if c == default else ''}")
    summary |= {"newton_schulz_dtype": str(chosen), "machine": machine.describe()}
    print(json.dumps({**summary, "step_ratio": step_ratio, "newton_schulz": ns}))
    sys.stdout.flush()


if __name__ == "__main__":
    run_stage(main)
