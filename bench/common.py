"""What the training benchmarks share: params with or without pydantic, random tokens, a
callback that timestamps the training loop, and a run of the real `codexlm.train.train`."""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch

from codexlm import paramsfile
from codexlm.errors import UserError
from codexlm.train import Run, train

try:
    from codexlm import params as schema
except ImportError as e:  # the GPU image has no pydantic: see load_params
    schema, NO_SCHEMA = None, e

REPO = Path(__file__).resolve().parent.parent


def load_params(path: Path) -> Any:
    """params.yaml validated by `codexlm.params`; where pydantic is missing, its blocks as
    they are written, read by the same YAML reader (`codexlm.paramsfile`): every key the
    schema declares is there (the schema forbids a missing or unknown one), so the loop and
    build_model find the attributes they read, and floats are floats."""
    if schema is not None:
        return schema.load(path)
    print(f"params: {NO_SCHEMA}; {path} read without validation", file=sys.stderr)
    try:
        raw = paramsfile.load_yaml(path)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    blocks = {k: types.SimpleNamespace(**v) for k, v in raw.items() if isinstance(v, dict)}
    return types.SimpleNamespace(**{k: v for k, v in raw.items() if k not in blocks}, **blocks)


def override(block: Any, **changes: Any) -> types.SimpleNamespace:
    """A params block (a dict, a schema object or a namespace) as a namespace of all its
    keys, some changed: what the loop and build_model take."""
    if isinstance(block, dict):
        values = dict(block)
    elif hasattr(block, "model_dump"):
        values = block.model_dump()
    else:
        values = vars(block)
    return types.SimpleNamespace(**{**values, **changes})


def random_tokens(vocab: int, n: int, seed: int) -> np.ndarray:
    """Throughput and checkpoint costs do not depend on what the tokens say."""
    dtype = np.uint16 if vocab <= 2**16 else np.uint32
    return np.random.default_rng(seed).integers(0, vocab, size=n, dtype=dtype)


class Timeline:
    """A training-loop callback: `(hook, step, perf_counter)` of each call; on CUDA, where the
    loop does not wait for the GPU, after a synchronize at the step ends in `sync_at` only."""

    def __init__(self, device: torch.device, sync_at: set[int] = frozenset()) -> None:
        self.device, self.sync_at = device, sync_at
        self.events: list[tuple[str, int, float]] = []
        self.checkpoints: list[dict[str, Any]] = []  # seconds and file sizes of each

    def mark(self, hook: str, step: int) -> None:
        if self.device.type == "cuda" and hook == "step" and step in self.sync_at:
            torch.cuda.synchronize(self.device)
        self.events.append((hook, step, time.perf_counter()))

    def at(self, hook: str, step: int) -> float:
        return next(t for h, s, t in self.events if (h, s) == (hook, step))

    def on_step_end(self, step: int) -> None:
        self.mark("step", step)

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        self.mark("log", step)

    def on_validate(self, step: int, loss: float) -> None:
        self.mark("validate", step)

    def on_checkpoint(self, step: int, path: Path | None, seconds: float) -> None:
        self.mark("checkpoint", step)
        files = {f.name: f.stat().st_size for f in sorted(path.iterdir())} if path else {}
        self.checkpoints.append({"seconds": seconds, "files": files})


def run_train(model: torch.nn.Module, tokens: tuple, cfg: Any, run: Run, callbacks: list) -> dict:
    """train() as the train stage calls it (train and val tokens); `run.ckpt_dir` None: a
    temporary folder. Its prints go to stderr: a bench's stdout is its table and JSON line."""
    with tempfile.TemporaryDirectory(prefix="bench-ckpt-") as tmp:
        run = dataclasses.replace(run, ckpt_dir=run.ckpt_dir or Path(tmp))
        with contextlib.redirect_stdout(sys.stderr):
            return train(model, *tokens, cfg, run, callbacks)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, seconds: float = 1.0) -> float:
    """The machine's own matmul FLOP/s, measured: the fastest of repeated n x n @ n x n
    products in `dtype`, with the threads the loops use (`torch.get_num_threads()`), for at
    least `seconds` after a warm-up. The fastest, as timeit keeps: a shared machine's noise
    only slows a product down. A model's FLOP/s over this is its utilisation of the machine."""
    gen = torch.Generator(device=device).manual_seed(0)
    a, b = (torch.randn(n, n, device=device, dtype=dtype, generator=gen) for _ in range(2))
    out = torch.empty(n, n, device=device, dtype=dtype)

    def once() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        torch.mm(a, b, out=out)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - started

    for _ in range(3):
        once()
    best, until = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < until:
        best = min(best, once())
    return 2 * n**3 / best
