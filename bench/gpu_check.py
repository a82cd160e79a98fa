"""Checks the CPU test suite cannot make: the training loop's CUDA paths, on one GPU (bf16
autocast, TF32, pinned prefetch, fused AdamW, Triton kernels, CUDA graphs, CUDA RNG state in
checkpoints, GPU metrics, MFU). `--device cpu` runs the same checks on the CPU. One line per
check, `ok` or `FAIL` with its figures; exit status 1 if any failed."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import traceback
import types
from pathlib import Path

import numpy as np
import torch
from common import Timeline, override, run_train

from codexlm.batches import train_batch
from codexlm.checkpoint import files as checkpoint_files
from codexlm.loss import linear_cross_entropy
from codexlm.metrics import lm_loss, mfu
from codexlm.model import build_model
from codexlm.parallel import Dist
from codexlm.train import Run, device_batches, system_metrics

CONTEXT, VOCAB, STEPS = 64, 512, 8
MODEL = types.SimpleNamespace(arch="llama", n_layer=2, n_head=4, d_model=64, dropout=0.0)
MODEL.context = CONTEXT
TRAIN = dict(steps=STEPS, batch_size=8, grad_accum=2, lr=6e-3, min_lr=3e-4, warmup_steps=2)
TRAIN.update(optimizer="muon", schedule="wsd", decay_fraction=0.4, embed_lr_scale=3.0)  # default
TRAIN.update(weight_decay=0.1, beta1=0.8, beta2=0.99, grad_clip=1.0, precision="auto")
TRAIN.update(eval_every=4, eval_batches=2, log_every=2, checkpoint_every=4, keep_checkpoints=3)
TRAIN.update(resume="auto", final="last", max_bad_steps=3, nproc=1, strategy="ddp")
TRAIN.update(max_stop_seconds=60.0, loss_on="answers", packing=True, doc_mask=False)
TRAIN.update(loggers=["dvclive"])  # read by the train stage, not the loop


def tokens(n: int, seed: int) -> np.ndarray:
    """A learnable stream: counting up through the vocabulary, every 8th token random."""
    noise = np.random.default_rng(seed).integers(0, VOCAB, size=n)
    return np.where(np.arange(n) % 8 == 7, noise, np.arange(n) % VOCAB).astype(np.uint16)


def train_tiny(device: torch.device, root: Path, compile: bool, mode: str = "default") -> tuple:
    """The real training loop on a tiny llama, precision auto (bf16 on capable GPUs)."""
    model = build_model(MODEL, VOCAB, 0, 0, seed=0)
    cfg = override({**TRAIN, "compile": compile, "compile_mode": mode})
    clock, run = Timeline(device), Run(0, CONTEXT, root, "gpu-check", Dist(0, 1, device))
    summary = run_train(model, (tokens(200_000, 1), tokens(20_000, 2)), cfg, run, [clock])
    return model, summary, min(n for hook, n, _ in clock.events if hook == "step") - 1


def max_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    """The largest ||a - b|| / ||a||: on CUDA, atomic adds are not bit-reproducible, and Adam
    makes a near-zero gradient's noise a full-size update of a few elements (a norm moves less)."""
    sa, sb = a.state_dict(), b.state_dict()
    return max(
        float((sa[k] - sb[k]).float().norm() / sa[k].float().norm().clamp_min(1e-12)) for k in sa
    )


def check_loss(device: torch.device) -> str:
    """Chunked linear cross-entropy against full fp32 logits (GPT-2's vocabulary on CUDA)."""
    g = torch.Generator().manual_seed(0)
    n, d, v = (4096, 256, 50304) if device.type == "cuda" else (1024, 128, 8192)
    hidden = (torch.randn(n, d, generator=g) / d**0.5).to(device).requires_grad_()
    weight = (torch.randn(v, d, generator=g) / d**0.5).to(device).requires_grad_()
    targets = torch.randint(0, v, (n,), generator=g).to(device)
    ref = lm_loss((hidden @ weight.t())[None], targets[None])  # fp32: TF32 off in main()
    grads = torch.autograd.grad(ref, (hidden, weight))
    loss = linear_cross_entropy(hidden, weight, targets, 1280)
    got = torch.autograd.grad(loss, (hidden, weight))
    errors = [float((a - b).abs().max()) for a, b in zip(got, grads, strict=True)]
    fp32 = max(abs(loss.item() - ref.item()), *errors)
    assert fp32 < 1e-5, f"fp32: loss or gradient off by {fp32:.2e} (want < 1e-5)"
    with torch.autocast(device.type, dtype=torch.bfloat16):
        loss = linear_cross_entropy(hidden, weight, targets, 1280)
    got = torch.autograd.grad(loss, (hidden, weight))
    pairs = zip(got, grads, strict=True)
    cos = min(float(torch.cosine_similarity(a.flatten(), b.flatten(), 0)) for a, b in pairs)
    rel = abs(loss.item() - ref.item()) / ref.item()
    assert rel < 1e-2 and cos > 0.99, f"bf16: loss rel error {rel:.2e}, gradient cosine {cos:.4f}"
    return f"fp32 max error {fp32:.1e}; bf16 loss rel error {rel:.1e}, gradient cosine {cos:.5f}"


def check_prefetch(device: torch.device) -> str:
    """device_batches (pinned + non_blocking on CUDA) deliver exactly the host's batches."""
    t = tokens(100_000, 3)
    cfg = types.SimpleNamespace(steps=5, batch_size=4, grad_accum=2, doc_mask=False)
    run = Run(0, CONTEXT, Path("unused"), "", Dist(0, 1, device))
    got = list(device_batches(t, 0, 2, cfg, run))
    want = [train_batch(t, 0, s, m, 4, 2, CONTEXT) for s in range(2, 5) for m in range(2)]
    assert len(got) == len(want), f"{len(got)} batches, want {len(want)}"
    for (gx, gy), (wx, wy) in zip(got, want, strict=True):
        assert gx.device.type == device.type, f"batch on {gx.device}, want {device}"
        assert torch.equal(gx.cpu(), wx) and torch.equal(gy.cpu(), wy), "batch differs"
    return f"{len(got)} micro-batches on {device.type} equal the host's"


def check_train_and_resume(device: torch.device, root: Path, compile: bool) -> str:
    """Loss falls; killed after step 4 and resumed, the run ends where the uninterrupted one
    does (bit-identical on CPU eager; elsewhere within what non-deterministic kernels allow)."""
    full, summary, _ = train_tiny(device, root / "full", compile)
    first, val = float(np.log(VOCAB)), summary["val_loss"]  # at first about uniform
    assert val < first - 0.5, f"val loss {val:.3f}, from ~{first:.3f}"
    train_tiny(device, root / "part", compile)
    for ckpt in checkpoint_files.complete(root / "part"):  # as if killed after step 4
        if checkpoint_files.verify(ckpt)["step"] > STEPS // 2:
            shutil.rmtree(ckpt)
    resumed, _, start = train_tiny(device, root / "part", compile)
    assert start == STEPS // 2, f"trained from step {start}, not from the checkpoint of step 4"
    diff = max_diff(full, resumed)
    limit = 0.0 if device.type == "cpu" and not compile else 1e-3  # exact where it can be
    assert diff <= limit, f"resumed weights off by {diff:.2e} relative (allowed {limit})"
    return (
        f"val loss {first:.2f} -> {val:.2f}; resumed at step {start}, "
        f"final weights within {diff:.1e} (relative) of the uninterrupted run"
    )


def check_cuda_graphs(device: torch.device, root: Path) -> str:
    """train.compile_mode reduce-overhead (CUDA graphs) trains what the default mode does."""
    base = train_tiny(device, root / "default", True)[0]
    torch._dynamo.reset()
    diff = max_diff(base, train_tiny(device, root / "graphs", True, "reduce-overhead")[0])
    assert diff < 1e-3, f"weights off by {diff:.2e} (relative) from compile mode default"
    return f"weights within {diff:.1e} (relative) of compile mode default"


def check_metrics(device: torch.device) -> str:
    m, want = system_metrics(device), {"system/cpu_percent", "system/rss_gb"}
    if device.type == "cuda":
        want.add("system/gpu_mem_gb")
        name = torch.cuda.get_device_name(device)
        assert mfu(1.0, 1.0, name) is not None, f"no peak FLOP/s for {name!r} (codexlm.metrics)"
    assert want <= set(m), f"system metrics lack {sorted(want - set(m))}"
    return ", ".join(f"{k.split('/')[1]} {v:.2f}" for k, v in sorted(m.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device here (use --device cpu to run the checks on the CPU)")
    device = torch.device(args.device, 0) if args.device == "cuda" else torch.device("cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"gpu_check: {name}; torch {torch.__version__}", flush=True)
    root = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    checks = {
        "chunked loss": lambda: check_loss(device),
        "prefetch": lambda: check_prefetch(device),
        "train eager + resume": lambda: check_train_and_resume(device, root / "e", False),
        "system metrics": lambda: check_metrics(device),
    }
    checks["train compiled + resume"] = lambda: check_train_and_resume(device, root / "c", True)
    if device.type == "cuda":
        checks["CUDA graphs"] = lambda: check_cuda_graphs(device, root / "g")
    failed = 0
    for label, check in checks.items():
        started = time.perf_counter()
        try:
            torch.backends.cuda.matmul.allow_tf32 = False  # train() turns it on: exact refs
            line = f"ok    {label}: {check()}"
        except Exception as e:  # a failed check is reported and the others still run
            failed += 1
            traceback.print_exc()  # to stderr: on a borrowed GPU, every detail counts
            line = f"FAIL  {label}: {type(e).__name__}: {' '.join(str(e).split())[:300]}"
        print(f"{line} [{time.perf_counter() - started:.0f} s]", flush=True)
    shutil.rmtree(root, ignore_errors=True)
    print(f"gpu_check: {len(checks) - failed} of {len(checks)} checks passed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
