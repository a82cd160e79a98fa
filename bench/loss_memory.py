"""Peak memory and time of the training loss: full logits against the chunked linear CE.

    .venv/bin/python bench/loss_memory.py                         # vocab 50304, 4096 tokens
    .venv/bin/python bench/loss_memory.py --vocab 4096 --tokens 4096

A small gpt2 trunk (2 layers x 256) with GPT-2's padded vocabulary, so the head and loss
dominate memory, as they do for real models at large vocabularies. Each variant runs in its
own process (its peak is its own): build the model, one warm-up forward + backward, then
`--repeats` timed ones. Memory is the process's peak RSS (ru_maxrss) minus its RSS just
before the first forward, i.e. what the forward and backward add on top of the model; time
is the median forward + backward. Prints a table and, last, one JSON object.

- full: `codexlm.metrics.lm_loss` on `model(input_ids).logits`, what a plain loop (or the
  Trainer) does: fp32 logits of tokens x vocab, kept with their softmax for the backward.
- chunked: `codexlm.loss.CausalLMLoss`, what the train stage runs.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

MB = 2**20


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / MB


def child(variant: str, vocab: int, tokens: int, context: int, repeats: int) -> dict[str, Any]:
    import torch

    from codexlm.loss import CausalLMLoss
    from codexlm.metrics import lm_loss
    from codexlm.model import build_model

    torch.manual_seed(0)
    model = build_model("gpt2", 2, 4, 256, context, vocab, 0.0, 0, 0, seed=0)
    batch = tokens // context
    x = torch.randint(0, vocab, (batch, context))
    y = torch.randint(0, vocab, (batch, context))
    if variant == "full":

        def step() -> float:
            loss = lm_loss(model(input_ids=x, use_cache=False).logits, y)
            loss.backward()
            return float(loss)
    else:
        fn = CausalLMLoss(model)
        assert fn.chunked, "the chunked path was not taken"

        def step() -> float:
            loss = fn(x, y)
            loss.backward()
            return float(loss)

    before = rss_mb()
    loss = step()  # warm-up: gradient buffers are allocated here, counted in the peak
    model.zero_grad(set_to_none=False)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
        model.zero_grad(set_to_none=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux
    return {
        "loss": loss,
        "added_peak_mb": round(peak - before, 1),
        "step_s": round(statistics.median(times), 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=50304)
    ap.add_argument("--tokens", type=int, default=4096, help="tokens per batch")
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--run", choices=["full", "chunked"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.tokens % args.context:
        ap.error("--tokens must be a multiple of --context")
    if args.run:
        r = child(args.run, args.vocab, args.tokens, args.context, args.repeats)
        print(json.dumps(r))
        return

    logits_mb = args.tokens * args.vocab * 4 / MB
    print(
        f"gpt2 2 x 256, vocab {args.vocab}, {args.tokens} tokens a batch (context "
        f"{args.context}); fp32 logits alone would be {logits_mb:,.0f} MB"
    )
    print(f"{'variant':<10}{'added peak MB':>15}{'fwd+bwd s':>12}{'loss':>10}")
    results: dict[str, dict[str, Any]] = {}
    for variant in ("full", "chunked"):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--run", variant]
        cmd += ["--vocab", str(args.vocab), "--tokens", str(args.tokens)]
        cmd += ["--context", str(args.context), "--repeats", str(args.repeats)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        results[variant] = r
        print(f"{variant:<10}{r['added_peak_mb']:>15,.0f}{r['step_s']:>12.3f}{r['loss']:>10.4f}")
    full, chunked = results["full"], results["chunked"]
    summary = {
        "vocab": args.vocab,
        "tokens": args.tokens,
        "logits_mb": round(logits_mb, 1),
        "memory_ratio": round(full["added_peak_mb"] / chunked["added_peak_mb"], 2),
        "speed_ratio": round(full["step_s"] / chunked["step_s"], 2),
        "variants": results,
    }
    print(
        f"chunked: {summary['memory_ratio']:.2f}x less added peak memory, "
        f"{summary['speed_ratio']:.2f}x the speed of full logits"
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
