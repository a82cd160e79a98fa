"""Rows of a training window and their attention bounds: instruction examples packed several
to a window (or one to a padded row), and plain text windows' document bounds.

Text windows (`document_rows`, under `train.doc_mask`): position ids restart and attention
stops at each end-of-text inside a window; the rest of this module is about examples.

An example of L tokens (cut to its first context + 1: truncation keeps the start) gives L - 1
inputs and their next-token labels, shifted within the example, so no target is predicted
across a boundary. A row holds whole examples: `position_ids` restart at 0 for each, and
`segments` (1, 2, ... per example, 0 for padding) give the block-diagonal causal mask that
keeps every token's attention inside its own example. Labels are -100 where the token is no
target (prompt, system, user and tool turns under `loss_on: answers`; padding).

Rows are a pure function of (seed, epoch): each epoch orders the examples by its own
permutation and fills rows in that order (next fit), so a batch is a pure function of
(seed, step, micro-step, rank) as the text loader's is, and resume and DDP draw exactly the
rows an uninterrupted single-process run would.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

IGNORE = -100


@dataclass(frozen=True)
class Examples:
    """One split's token ids, target mask and example bounds (tokenize's files)."""

    tokens: np.ndarray
    targets: np.ndarray  # bool per token
    starts: np.ndarray  # int64, one per example and the end


@dataclass
class Split:
    """The examples a run uses, after truncation to the context: what each keeps."""

    examples: Examples
    keep: np.ndarray  # indices of the examples left with a target
    lengths: np.ndarray  # tokens each kept example keeps (at most context + 1)
    n_targets: np.ndarray  # targets each kept example keeps
    dropped: int  # examples left with no target by truncation
    pad_id: int
    context: int
    loss_on: str


@dataclass(frozen=True)
class Rows:
    """A batch of rows, each (context,)."""

    inputs: torch.Tensor
    labels: torch.Tensor
    positions: torch.Tensor
    segments: torch.Tensor


def load_examples(token_dir: Path, split: str) -> Examples:
    meta = json.loads((token_dir / "meta.json").read_text())
    tokens = np.memmap(token_dir / f"{split}.bin", dtype=np.dtype(meta["dtype"]), mode="r")
    mask = np.memmap(token_dir / f"{split}.mask.bin", dtype=np.uint8, mode="r")
    return Examples(tokens, mask.astype(bool), np.load(token_dir / f"{split}.index.npy"))


def prepare_split(ex: Examples, context: int, loss_on: str, pad_id: int) -> Split:
    """Truncate every example to its first context + 1 tokens and keep those with a target."""
    full = np.diff(ex.starts)
    lengths = np.minimum(full, context + 1)
    if loss_on == "all":
        n_targets = lengths - 1
    else:
        n_targets = np.array(
            [ex.targets[s + 1 : s + n].sum() for s, n in zip(ex.starts[:-1], lengths, strict=True)],
            dtype=np.int64,
        )
    keep = np.flatnonzero(n_targets > 0)
    return Split(
        ex, keep, lengths[keep], n_targets[keep], len(full) - len(keep), pad_id, context, loss_on
    )


def pack(lengths: np.ndarray, order: np.ndarray, context: int, packing: bool) -> list[np.ndarray]:
    """Rows of example indices (into `lengths`) in `order`: next fit, each example's L - 1
    inputs, at most `context` a row; or one example a row without packing."""
    if not packing:
        return [order[i : i + 1] for i in range(len(order))]
    rows, row, used = [], [], 0
    for i in order:
        n = int(lengths[i]) - 1
        if row and used + n > context:
            rows.append(np.asarray(row))
            row, used = [], 0
        row.append(i)
        used += n
    if row:
        rows.append(np.asarray(row))
    return rows


def build_rows(split: Split, rows: list[np.ndarray]) -> Rows:
    """The tensors of `rows` (each a list of indices into split.keep)."""
    c, ex = split.context, split.examples
    n = len(rows)
    inputs = np.full((n, c), split.pad_id, dtype=np.int64)
    labels = np.full((n, c), IGNORE, dtype=np.int64)
    positions = np.zeros((n, c), dtype=np.int64)
    segments = np.zeros((n, c), dtype=np.int64)
    for r, row in enumerate(rows):
        at = 0
        for k, i in enumerate(row, 1):
            start, length = int(ex.starts[split.keep[i]]), int(split.lengths[i])
            ids = np.asarray(ex.tokens[start : start + length], dtype=np.int64)
            target = (
                np.ones(length, dtype=bool)
                if split.loss_on == "all"
                else np.asarray(ex.targets[start : start + length])
            )
            m = length - 1
            if at + m > c:
                raise ValueError(f"row {r}: its examples need more than {c} positions")
            inputs[r, at : at + m] = ids[:-1]
            labels[r, at : at + m] = np.where(target[1:], ids[1:], IGNORE)
            positions[r, at : at + m] = np.arange(m)
            segments[r, at : at + m] = k
            at += m
    t = torch.from_numpy
    return Rows(t(inputs), t(labels), t(positions), t(segments))


def attention_mask(
    segments: torch.Tensor, attn_implementation: str, dtype: torch.dtype
) -> torch.Tensor:
    """The (B, 1, T, T) block-diagonal causal mask of a batch of rows, as the attention
    implementation takes a 4-D mask as is: boolean (True: attend) for SDPA, additive for
    eager (transformers adds it to the scores). A padding position attends to itself only
    among padding, so no softmax row is empty."""
    t = segments.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=segments.device).tril()
    allowed = (segments[:, :, None] == segments[:, None, :]) & causal
    allowed = allowed[:, None]
    if attn_implementation == "sdpa":
        return allowed
    zero = torch.zeros((), dtype=dtype, device=segments.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)


def document_rows(inputs: torch.Tensor, eot: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Position ids and segments of text windows whose attention stops at document bounds.

    A window at a random offset of the token stream holds the end of one document, its
    end-of-text id, the next document, and so on. Each end-of-text id starts a segment (it is
    the only context of its document's first token, as evaluation gives the split's first
    document), and the position ids restart at 0 there; the tokens before the window's first
    end-of-text are segment 0. With `attention_mask(segments, ...)` no token attends to
    another document's."""
    t = inputs.shape[1]
    is_eot = inputs == eot
    segments = is_eot.long().cumsum(1)
    index = torch.arange(t, device=inputs.device).expand_as(inputs)
    starts = torch.where(is_eot, index, torch.zeros_like(index)).cummax(1).values
    return index - starts, segments


@dataclass
class Schedule:
    """The rows of every epoch of a split (computed when first needed), in draw order."""

    split: Split
    seed: int
    packing: bool
    epochs: list[list[np.ndarray]] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)  # rows up to the end of each epoch

    def _epoch(self, e: int) -> list[np.ndarray]:
        while len(self.epochs) <= e:
            k = len(self.epochs)
            order = np.random.default_rng([self.seed, k, 7]).permutation(len(self.split.keep))
            self.epochs.append(pack(self.split.lengths, order, self.split.context, self.packing))
            self.ends.append((self.ends[-1] if self.ends else 0) + len(self.epochs[-1]))
        return self.epochs[e]

    def rows(self, first: int, n: int) -> list[np.ndarray]:
        """Global rows first .. first + n - 1."""
        out = []
        for g in range(first, first + n):
            e = 0
            while True:
                self._epoch(e)
                if g < self.ends[e]:
                    break
                e += 1
            out.append(self.epochs[e][g - (self.ends[e] - len(self.epochs[e]))])
        return out

    def targets(self, rows: list[np.ndarray]) -> int:
        return int(sum(self.split.n_targets[row].sum() for row in rows))


def step_rows(
    sched: Schedule, step: int, micro: int, batch_size: int, grad_accum: int, rank: int, world: int
) -> tuple[list[np.ndarray], int]:
    """This rank's rows of micro-batch `micro` of `step` (micro-step m of rank r takes slice
    m * world + r, as the text loader does), and the targets of the whole step, every
    micro-batch and rank: computed here, on the host, without any collective."""
    per_step = batch_size * grad_accum * world
    every = sched.rows(step * per_step, per_step)
    i = (micro * world + rank) * batch_size
    return every[i : i + batch_size], sched.targets(every)


def fixed_rows(split: Split, n: int, batch_size: int) -> list[list[np.ndarray]]:
    """Validation: the first n batches of rows in example order (the same at every
    evaluation and every run), fewer when the split holds fewer."""
    rows = pack(split.lengths, np.arange(len(split.keep)), split.context, True)
    return [rows[i : i + batch_size] for i in range(0, min(len(rows), n * batch_size), batch_size)]
