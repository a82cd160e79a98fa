"""Checks the CPU test suite cannot make: the training loop's CUDA paths, on one GPU.

    PYTHONPATH=src python3 bench/gpu_check.py               # on a CUDA machine (~1-2 min)
    .venv/bin/python bench/gpu_check.py --device cpu        # the same checks on the CPU

On CUDA this runs what only a GPU runs: bf16 autocast (precision auto), TF32, pinned-memory
prefetch with asynchronous copies, fused AdamW and its on-device skip, torch.compile with
Triton kernels, CUDA graphs (train.compile_mode reduce-overhead), CUDA RNG state in
checkpoints, GPU memory and utilisation metrics and MFU. It needs only torch, transformers,
safetensors, numpy, tqdm and psutil (GPU images may lack pydantic, dvc and dvclive), so it
calls the library directly. The test suite runs it with `--device cpu` so it cannot rot.

One line per check, `ok` or `FAIL` with the figure; exit status 1 if any failed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from tqdm import tqdm

from codexlm import checkpoint
from codexlm import train as codexlm_train
from codexlm.data import train_batch
from codexlm.loss import linear_cross_entropy
from codexlm.metrics import lm_loss, mfu
from codexlm.model import build_model

CONTEXT, VOCAB, STEPS = 64, 512, 8


def tokens(n: int, seed: int) -> np.ndarray:
    """A learnable stream: counting up through the vocabulary, every 8th token random."""
    t = np.arange(n, dtype=np.int64) % VOCAB
    noise = np.random.default_rng(seed).integers(0, VOCAB, size=n)
    return np.where(np.arange(n) % 8 == 7, noise, t).astype(np.uint16)


def tiny() -> torch.nn.Module:
    return build_model("llama", 2, 4, 64, CONTEXT, VOCAB, 0.0, 0, 0, seed=0)


class QuietBar(tqdm):
    """train()'s progress bar, switched off: this script's output is its check lines."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


def train_tiny(
    device: torch.device, root: Path, compile: bool, mode: str = "default", **kw
) -> tuple[torch.nn.Module, dict, str]:
    """The real training loop on a tiny llama, precision auto (bf16 on capable GPUs); the
    model, the summary and what train() printed."""
    model = tiny()
    args = dict(
        train_tokens=tokens(200_000, 1),
        val_tokens=tokens(20_000, 2),
        seed=0,
        context=CONTEXT,
        steps=STEPS,
        batch_size=8,
        grad_accum=2,
        lr=3e-3,
        min_lr=3e-4,
        warmup_steps=2,
        weight_decay=0.1,
        betas=(0.9, 0.95),
        grad_clip=1.0,
        precision="auto",
        compile=compile,
        compile_mode=mode,
        eval_every=4,
        n_eval_batches=2,
        log_every=2,
        checkpoint_every=4,
        keep_checkpoints=3,
        resume="auto",
        final="last",
        max_bad_steps=3,
        ckpt_dir=root / "ckpt",
        run_fingerprint="gpu-check",
        log_dir=None,
        dist_info=codexlm_train.Dist(0, 1, device),
    )
    args.update(kw)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), mock.patch.object(codexlm_train, "tqdm", QuietBar):
        summary = codexlm_train.train(model, **args)
    return model, summary, printed.getvalue()


def max_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    """The largest relative difference, ||a - b|| / ||a||, over the two models' tensors.

    Relative and per tensor: on CUDA, kernels that add with atomics (embedding backward)
    are not bit-reproducible, and Adam turns a near-zero gradient's noise into a full-size
    update of a few elements; that moves a tensor's norm by far less than a real bug does.
    """
    sa, sb = a.state_dict(), b.state_dict()
    return max(
        float((sa[k].float() - sb[k].float()).norm() / sa[k].float().norm().clamp_min(1e-12))
        for k in sa
    )


def check_loss(device: torch.device) -> str:
    """Chunked linear cross-entropy against full fp32 logits (on CUDA at GPT-2's vocabulary;
    smaller on the CPU, where bf16 matmuls may be slow)."""
    g = torch.Generator().manual_seed(0)
    n, d, v = (4096, 256, 50304) if device.type == "cuda" else (1024, 128, 8192)
    hidden = (torch.randn(n, d, generator=g) / d**0.5).to(device).requires_grad_()
    weight = (torch.randn(v, d, generator=g) / d**0.5).to(device).requires_grad_()
    targets = torch.randint(0, v, (n,), generator=g).to(device)

    ref = lm_loss((hidden @ weight.t())[None], targets[None])  # fp32, TF32 off below
    ref_h, ref_w = torch.autograd.grad(ref, (hidden, weight))
    loss = linear_cross_entropy(hidden, weight, targets, 1280)
    got_h, got_w = torch.autograd.grad(loss, (hidden, weight))
    loss, ref = loss.item(), ref.item()
    fp32 = max(
        abs(loss - ref),
        float((got_h - ref_h).abs().max()),
        float((got_w - ref_w).abs().max()),
    )
    assert fp32 < 1e-5, f"fp32: loss or gradient off by {fp32:.2e} (want < 1e-5)"

    with torch.autocast(device.type, dtype=torch.bfloat16):
        loss = linear_cross_entropy(hidden, weight, targets, 1280)
    got_h, got_w = torch.autograd.grad(loss, (hidden, weight))
    loss = loss.item()
    cos = min(
        float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))
        for a, b in ((got_h, ref_h), (got_w, ref_w))
    )
    rel = abs(loss - ref) / ref
    assert rel < 1e-2 and cos > 0.99, f"bf16: loss rel error {rel:.2e}, gradient cosine {cos:.4f}"
    return f"fp32 max error {fp32:.1e}; bf16 loss rel error {rel:.1e}, gradient cosine {cos:.5f}"


def check_prefetch(device: torch.device) -> str:
    """device_batches (pinned + non_blocking on CUDA) deliver exactly the host's batches."""
    t = tokens(100_000, 3)
    d = codexlm_train.Dist(0, 1, device)
    got = list(codexlm_train.device_batches(t, 0, 2, 5, 4, 2, CONTEXT, d))
    want = [train_batch(t, 0, s, m, 4, 2, CONTEXT, 0, 1) for s in range(2, 5) for m in range(2)]
    assert len(got) == len(want), f"{len(got)} batches, want {len(want)}"
    for (gx, gy), (wx, wy) in zip(got, want, strict=True):
        assert gx.device.type == device.type, f"batch on {gx.device}, want {device}"
        assert torch.equal(gx.cpu(), wx) and torch.equal(gy.cpu(), wy), "batch differs"
    return f"{len(got)} micro-batches on {device.type} equal the host's"


def check_train_and_resume(device: torch.device, root: Path, compile: bool) -> str:
    """Loss falls; killed after step 4 and resumed, the run ends where the uninterrupted one
    does (bit-identical on CPU; on CUDA within what non-deterministic kernels allow)."""
    full, s_full, _ = train_tiny(device, root / "full", compile)
    first = float(np.log(VOCAB))  # a fresh model predicts about uniformly
    assert s_full["val_loss"] < first - 0.5, f"val loss {s_full['val_loss']:.3f}, from ~{first:.3f}"
    part = root / "part"
    train_tiny(device, part, compile)
    for ckpt in checkpoint.candidates(part / "ckpt"):  # as if killed after step 4
        if checkpoint.verify(ckpt)["step"] > STEPS // 2:
            shutil.rmtree(ckpt)
    resumed, _, printed = train_tiny(device, part, compile)
    assert f"(step {STEPS // 2} of {STEPS})" in printed, f"did not resume: {printed.strip()!r}"
    diff = max_diff(full, resumed)
    limit = 0.0 if device.type == "cpu" and not compile else 1e-3  # exact where it can be
    assert diff <= limit, f"resumed weights off by {diff:.2e} relative (allowed {limit})"
    return (
        f"val loss {first:.2f} -> {s_full['val_loss']:.2f}; resumed at step {STEPS // 2}, "
        f"final weights within {diff:.1e} (relative) of the uninterrupted run"
    )


def check_cuda_graphs(device: torch.device, root: Path) -> str:
    """train.compile_mode reduce-overhead (CUDA graphs) trains what the default mode does."""
    base, _, _ = train_tiny(device, root / "default", True)
    torch._dynamo.reset()
    graphs, _, _ = train_tiny(device, root / "graphs", True, "reduce-overhead")
    torch._dynamo.reset()
    diff = max_diff(base, graphs)
    assert diff < 1e-3, f"weights off by {diff:.2e} (relative) from compile mode default"
    return f"weights within {diff:.1e} (relative) of compile mode default"


def check_metrics(device: torch.device) -> str:
    m = codexlm_train.system_metrics(device)
    want = {"system/cpu_percent", "system/rss_gb"}
    if device.type == "cuda":
        want.add("system/gpu_mem_gb")
        name = torch.cuda.get_device_name(device)
        util = mfu(1.0, 1.0, name)
        assert util is not None, f"no peak FLOP/s for {name!r} (codexlm.metrics)"
    missing = want - set(m)
    assert not missing, f"system metrics lack {sorted(missing)}"
    return ", ".join(f"{k.split('/')[1]} {v:.2f}" for k, v in sorted(m.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--no-compile", action="store_true", help="eager only (faster on CPU)")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device here (use --device cpu to run the checks on the CPU)")
    device = torch.device(args.device, 0) if args.device == "cuda" else torch.device("cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"gpu_check: {name}; torch {torch.__version__}", flush=True)
    compile = not args.no_compile

    failed = 0
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        root = Path(tmp)
        checks: list[tuple[str, Callable[[], str]]] = [
            ("chunked loss", lambda: check_loss(device)),
            ("prefetch", lambda: check_prefetch(device)),
            ("train eager + resume", lambda: check_train_and_resume(device, root / "e", False)),
            ("system metrics", lambda: check_metrics(device)),
        ]
        if compile:
            compiled = lambda: check_train_and_resume(device, root / "c", True)  # noqa: E731
            checks.append(("train compiled + resume", compiled))
        if compile and device.type == "cuda":
            checks.append(("CUDA graphs", lambda: check_cuda_graphs(device, root / "g")))
        for label, check in checks:
            started = time.perf_counter()
            try:
                torch.backends.cuda.matmul.allow_tf32 = False  # train() turns it on: exact refs
                line = f"ok    {label}: {check()}"
            except Exception as e:  # a failed check is reported and the others still run
                failed += 1
                traceback.print_exc()  # to stderr: on a borrowed GPU, every detail counts
                first = (str(e).strip().splitlines() or [""])[0]
                line = f"FAIL  {label}: {type(e).__name__}: {first[:300]}"
            print(f"{line} [{time.perf_counter() - started:.0f} s]", flush=True)
    print(f"gpu_check: {len(checks) - failed} of {len(checks)} checks passed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
