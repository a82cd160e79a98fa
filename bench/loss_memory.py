"""Peak memory and time of the training loss: full logits (`CausalLMLoss(model, chunked=False)`,
what a plain loop or the Trainer does) against the chunked linear cross-entropy the train stage
runs, on a 2 x 256 gpt2 trunk with GPT-2's vocabulary (the head dominates). Each variant in its
own process: peak RSS minus RSS before the first forward, the median forward + backward."""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
import types

import psutil
import torch

from codexlm.loss import CausalLMLoss
from codexlm.model import build_model

MB = 2**20


def child(args: argparse.Namespace) -> dict[str, float]:
    cfg = types.SimpleNamespace(arch="gpt2", n_layer=2, n_head=4, d_model=256, dropout=0.0)
    cfg.context = args.context
    loss_fn = CausalLMLoss(build_model(cfg, args.vocab, 0, 0, seed=0), args.run == "chunked")
    assert loss_fn.chunked == (args.run == "chunked"), "the chunked path was not taken"
    x, y = torch.randint(0, args.vocab, (2, args.tokens // args.context, args.context))
    before, times = psutil.Process().memory_info().rss / MB, []
    for _ in range(args.repeats + 1):  # the first allocates the gradients: in the peak, untimed
        started = time.perf_counter()
        loss = loss_fn(x, y)
        loss.backward()
        times.append(time.perf_counter() - started)
        loss_fn.zero_grad(set_to_none=False)
    added = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before  # KiB on Linux
    return {"loss": loss.item(), "added_peak_mb": added, "step_s": statistics.median(times[1:])}


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
        print(json.dumps(child(args)))
        return
    logits_mb = args.tokens * args.vocab * 4 / MB
    print(f"gpt2 2 x 256, vocab {args.vocab}, {args.tokens} tokens a batch, context {args.context}")
    print(f"fp32 logits alone: {logits_mb:,.0f} MB\n{'':<10}{'added peak MB':>15}{'fwd+bwd s':>12}")
    r = {}
    for v in ("full", "chunked"):  # each in its own process: its peak is its own
        cmd = [sys.executable, __file__, *sys.argv[1:], "--run", v]
        r[v] = json.loads(subprocess.check_output(cmd, text=True).splitlines()[-1])
        print(f"{v:<10}{r[v]['added_peak_mb']:>15,.0f}{r[v]['step_s']:>12.3f}")
    memory = r["full"]["added_peak_mb"] / r["chunked"]["added_peak_mb"]
    speed = r["full"]["step_s"] / r["chunked"]["step_s"]
    print(f"chunked: {memory:.2f}x less added peak memory, {speed:.2f}x the speed of full logits")
    summary = {"logits_mb": logits_mb, "memory_ratio": memory, "speed_ratio": speed}
    print(json.dumps({**summary, "variants": r}))


if __name__ == "__main__":
    main()
