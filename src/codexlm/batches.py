"""Memory-mapped token files and deterministic, resumable, rank-aware batches.

A batch is a pure function of (seed, step, micro-step, rank): there is no sampler state to
save, a resumed run draws exactly the batches the uninterrupted run would have, and N
processes with batch b draw the same global batch as one process with batch N*b.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from codexlm import datakind
from codexlm.errors import UserError
from codexlm.packing import Split, load_examples, prepare_split


def load_tokens(token_dir: Path, split: str) -> np.ndarray:
    meta = json.loads((token_dir / "meta.json").read_text())
    return np.memmap(token_dir / f"{split}.bin", dtype=np.dtype(meta["dtype"]), mode="r")


def load_split(
    token_dir: Path, meta: dict, split: str, context: int, loss_on: str
) -> np.ndarray | Split:
    """One split as its kind (`codexlm.datakind`) trains and is scored: text as its flat token
    file, examples as those left with a target once cut to the context (`loss_on`: answers |
    all, which tokens are targets)."""
    if datakind.of_meta(meta) == datakind.TEXT:
        return load_tokens(token_dir, split)
    return prepare_split(load_examples(token_dir, split), context, loss_on, meta["pad_id"])


def check_splits(meta: dict, context: int, eval_batches: int, batch_size: int) -> None:
    """Params that only make sense against the token files: refused before any work."""
    need = context + 1
    for split in ("train", "val"):
        if meta["tokens"][split] < need:
            raise UserError(
                f"model.context: {context} needs at least {need} tokens, "
                f"the {split} split has {meta['tokens'][split]}"
            )
    if eval_batches * batch_size > 100 * meta["tokens"]["val"]:
        raise UserError("train.eval_batches: far more validation windows than the val split holds")


def _windows(
    tokens: np.ndarray, starts: np.ndarray, context: int
) -> tuple[torch.Tensor, torch.Tensor]:
    rows = np.stack([tokens[s : s + context + 1] for s in starts]).astype(np.int64)
    t = torch.from_numpy(rows)
    # inputs and next-token targets: the one-token shift happens here, once
    return t[:, :-1], t[:, 1:]


def train_batch(
    tokens: np.ndarray,
    seed: int,
    step: int,
    micro: int,
    batch_size: int,
    grad_accum: int,
    context: int,
    rank: int = 0,
    world: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """This process's share of micro-batch `micro` of optimizer step `step`.

    The step's global batch is batch_size * grad_accum * world windows at random offsets;
    micro-step m of rank r takes slice (m * world + r).
    """
    n = len(tokens) - context  # number of windows of context + 1 tokens
    if n <= 0:
        raise ValueError(f"{len(tokens)} tokens cannot fill one window of {context + 1}")
    rng = np.random.default_rng([seed, step])
    starts = rng.integers(0, n, size=batch_size * grad_accum * world)
    i = (micro * world + rank) * batch_size
    return _windows(tokens, starts[i : i + batch_size], context)


def eval_batches(
    tokens: np.ndarray, seed: int, n_batches: int, batch_size: int, context: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A fixed set of validation batches (the same at every evaluation and every run)."""
    n = len(tokens) - context  # number of windows of context + 1 tokens
    if n <= 0:
        raise ValueError(f"{len(tokens)} tokens cannot fill one window of {context + 1}")
    rng = np.random.default_rng([seed, 2**31 - 1])
    starts = rng.integers(0, n, size=(n_batches, batch_size))
    return [_windows(tokens, s, context) for s in starts]


def sequential_batches(
    tokens: np.ndarray,
    batch_size: int,
    context: int,
    max_tokens: int = 0,
    first: int | None = None,
):
    """Consecutive windows that together predict every token but the first (for evaluation);
    with `first`, every token, the first one given `first` as its only context (evaluation
    passes the end-of-text id: the split's first document then has the context every later
    document has). `max_tokens > 0` scores only the first that many.

    Yields (inputs, targets, mask): the last window is padded and masked. Window w starts at
    position w * context of the stream ([first] + tokens, or tokens), so its target j is
    token (w * context + j) with `first`, token (w * context + j + 1) without.
    """
    lead = 0 if first is None else 1
    stream = len(tokens) + lead
    end = stream if max_tokens <= 0 else min(stream, max_tokens + 1)

    def window(s: int, e: int) -> np.ndarray:  # stream[s:e]
        if lead and s == 0:
            return np.concatenate([[first], np.asarray(tokens[: e - 1])]).astype(np.int64)
        return np.asarray(tokens[s - lead : e - lead], dtype=np.int64)

    starts = list(range(0, end - 1, context))
    for i in range(0, len(starts), batch_size):
        xs, ys, ms = [], [], []
        for s in starts[i : i + batch_size]:
            w = window(s, min(s + context + 1, end))
            k = len(w) - 1
            x = np.zeros(context, dtype=np.int64)
            y = np.zeros(context, dtype=np.int64)
            m = np.zeros(context, dtype=bool)
            x[:k], y[:k], m[:k] = w[:-1], w[1:], True
            xs.append(x)
            ys.append(y)
            ms.append(m)
        yield (
            torch.from_numpy(np.stack(xs)),
            torch.from_numpy(np.stack(ys)),
            torch.from_numpy(np.stack(ms)),
        )
