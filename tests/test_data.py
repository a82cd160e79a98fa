"""Batches: next-token targets, a pure function of (seed, step, micro, rank), rank-invariant."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from codexlm.batches import eval_batches, load_tokens, sequential_batches, train_batch

CONTEXT = 16


@pytest.fixture
def tokens() -> np.ndarray:
    # distinct values, so a window tells where it was cut from
    return np.random.default_rng(0).permutation(5000).astype(np.uint16)


def where(tokens: np.ndarray, row: torch.Tensor) -> int:
    start = int(np.flatnonzero(tokens == row[0].item())[0])
    return start


def test_targets_are_inputs_shifted_by_one(tokens: np.ndarray) -> None:
    x, y = train_batch(tokens, seed=1, step=3, micro=0, batch_size=8, grad_accum=1, context=CONTEXT)
    assert x.shape == y.shape == (8, CONTEXT)
    assert x.dtype == y.dtype == torch.int64
    assert torch.equal(y[:, :-1], x[:, 1:])
    for xr, yr in zip(x, y, strict=True):
        s = where(tokens, xr)
        assert xr.tolist() == tokens[s : s + CONTEXT].tolist()
        assert yr.tolist() == tokens[s + 1 : s + CONTEXT + 1].tolist()


def test_batches_are_a_function_of_seed_step_micro(tokens: np.ndarray) -> None:
    def batch(seed: int, step: int, micro: int) -> torch.Tensor:
        x, _ = train_batch(tokens, seed, step, micro, batch_size=4, grad_accum=2, context=CONTEXT)
        return x

    assert torch.equal(batch(0, 5, 1), batch(0, 5, 1))
    assert not torch.equal(batch(0, 5, 1), batch(0, 6, 1))
    assert not torch.equal(batch(0, 5, 1), batch(0, 5, 0))
    assert not torch.equal(batch(0, 5, 1), batch(1, 5, 1))
    # no hidden state: drawing other batches in between changes nothing
    first = batch(7, 100, 0)
    for step in range(5):
        batch(7, step, 0)
    assert torch.equal(first, batch(7, 100, 0))


def rows(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])


@pytest.mark.parametrize("step", [0, 1, 17])
def test_two_ranks_draw_the_global_batch_of_one(tokens: np.ndarray, step: int) -> None:
    b = 4
    one = train_batch(tokens, 3, step, 0, batch_size=2 * b, grad_accum=1, context=CONTEXT)
    ranks = [
        train_batch(
            tokens, 3, step, 0, batch_size=b, grad_accum=1, context=CONTEXT, rank=r, world=2
        )
        for r in range(2)
    ]
    x, y = rows(ranks)
    assert torch.equal(x, one[0]) and torch.equal(y, one[1])
    # the ranks' shares are disjoint draws, not copies
    assert not torch.equal(ranks[0][0], ranks[1][0])


def test_accumulation_and_ranks_are_interchangeable(tokens: np.ndarray) -> None:
    b, step = 3, 9
    accum = [train_batch(tokens, 5, step, m, b, grad_accum=2, context=CONTEXT) for m in range(2)]
    world = [
        train_batch(tokens, 5, step, 0, b, grad_accum=1, context=CONTEXT, rank=r, world=2)
        for r in range(2)
    ]
    assert torch.equal(rows(accum)[0], rows(world)[0])
    # 2 ranks x 2 micro-steps: together exactly the rows of one process with batch 4b
    single = train_batch(tokens, 5, step, 0, 4 * b, grad_accum=1, context=CONTEXT)
    both = [
        train_batch(tokens, 5, step, m, b, grad_accum=2, context=CONTEXT, rank=r, world=2)
        for m in range(2)
        for r in range(2)
    ]
    assert torch.equal(rows(both)[0], single[0]) and torch.equal(rows(both)[1], single[1])


def test_smallest_token_file_fills_one_window() -> None:
    tokens = np.arange(CONTEXT + 1, dtype=np.uint16)
    x, y = train_batch(tokens, 0, 0, 0, 2, 1, CONTEXT)
    assert x[0].tolist() == list(range(CONTEXT)) and y[0].tolist() == list(range(1, CONTEXT + 1))
    ((ex, ey),) = eval_batches(tokens, 0, 1, 1, CONTEXT)
    assert torch.equal(ex[0], x[0]) and torch.equal(ey[0], y[0])
    with pytest.raises(ValueError, match="cannot fill one window"):
        train_batch(tokens[:-1], 0, 0, 0, 2, 1, CONTEXT)
    with pytest.raises(ValueError, match="cannot fill one window"):
        eval_batches(tokens[:-1], 0, 1, 1, CONTEXT)


def test_every_window_can_be_drawn() -> None:
    # 3 possible windows; the last token of the file is a target too
    tokens = np.arange(CONTEXT + 3, dtype=np.uint16)
    starts = set()
    for step in range(50):
        x, y = train_batch(tokens, 0, step, 0, 4, 1, CONTEXT)
        starts.update(x[:, 0].tolist())
        assert int(y.max()) <= CONTEXT + 2
    assert starts == {0, 1, 2}


def test_eval_batches_are_fixed(tokens: np.ndarray) -> None:
    a = eval_batches(tokens, seed=1, n_batches=3, batch_size=5, context=CONTEXT)
    b = eval_batches(tokens, seed=1, n_batches=3, batch_size=5, context=CONTEXT)
    assert len(a) == 3
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert xa.shape == (5, CONTEXT)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert torch.equal(ya[:, :-1], xa[:, 1:])
        for xr, yr in zip(xa, ya, strict=True):
            s = where(tokens, xr)
            assert yr.tolist() == tokens[s + 1 : s + CONTEXT + 1].tolist()
    c = eval_batches(tokens, seed=2, n_batches=3, batch_size=5, context=CONTEXT)
    assert not torch.equal(a[0][0], c[0][0])
    # the validation windows are not the first training batch of the same seed
    assert not torch.equal(a[0][0], train_batch(tokens, 1, 0, 0, 5, 1, CONTEXT)[0])


@pytest.mark.parametrize("n", [2, 9, 16, 17, 33, 100, 161])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_sequential_batches_score_every_token_once(n: int, batch_size: int) -> None:
    tokens = np.arange(1000, 1000 + n, dtype=np.uint16)
    xs, ys, ms = zip(*sequential_batches(tokens, batch_size, CONTEXT), strict=True)
    for x, y, m in zip(xs, ys, ms, strict=True):
        assert x.shape == y.shape == m.shape and x.shape[1] == CONTEXT
        assert x.shape[0] <= batch_size and m.dtype == torch.bool
        # within a window the target is the next token
        assert torch.equal(y[m], x[m] + 1)
    x, y, m = torch.cat(xs), torch.cat(ys), torch.cat(ms)
    assert int(m.sum()) == n - 1
    assert y[m].tolist() == tokens[1:].tolist()
    assert x[m].tolist() == tokens[:-1].tolist()
    # padding only at the end of the last window
    flat = m.flatten().tolist()
    assert flat == sorted(flat, reverse=True)


@pytest.mark.parametrize(("max_tokens", "scored"), [(1, 1), (16, 16), (50, 50), (99, 99)])
def test_sequential_batches_max_tokens(max_tokens: int, scored: int) -> None:
    tokens = np.arange(100, dtype=np.uint16)
    _, ys, ms = zip(*sequential_batches(tokens, 2, CONTEXT, max_tokens), strict=True)
    y, m = torch.cat(ys), torch.cat(ms)
    assert int(m.sum()) == scored
    assert y[m].tolist() == list(range(1, scored + 1))


def test_sequential_batches_max_tokens_beyond_the_file() -> None:
    tokens = np.arange(40, dtype=np.uint16)
    _, ys, ms = zip(*sequential_batches(tokens, 4, CONTEXT, max_tokens=10_000), strict=True)
    m = torch.cat(ms)
    assert int(m.sum()) == 39
    assert torch.cat(ys)[m].tolist() == list(range(1, 40))


@pytest.mark.parametrize("n", [1, 15, 16, 17, 100])
@pytest.mark.parametrize("max_tokens", [0, 1, 16, 40])
def test_sequential_batches_with_a_first_context_token_score_every_token(
    n: int, max_tokens: int
) -> None:
    # evaluation gives the first token an end-of-text as context: then every token is scored
    tokens = np.arange(1000, 1000 + n, dtype=np.uint16)
    xs, ys, ms = zip(*sequential_batches(tokens, 3, CONTEXT, max_tokens, first=7), strict=True)
    x, y, m = torch.cat(xs), torch.cat(ys), torch.cat(ms)
    scored = n if max_tokens == 0 else min(n, max_tokens)
    assert int(m.sum()) == scored
    assert y[m].tolist() == tokens[:scored].tolist()
    assert x[m].tolist() == [7, *tokens[: scored - 1].tolist()]
    # window w's target j is token w * CONTEXT + j
    rows = torch.arange(len(x))[:, None] * CONTEXT + torch.arange(CONTEXT)
    assert rows[m].tolist() == list(range(scored))


def test_load_tokens_memory_maps_with_the_meta_dtype(tmp_path: Path) -> None:
    ids = np.arange(70_000, dtype=np.uint32)[::-1].copy()
    ids.tofile(tmp_path / "train.bin")
    (tmp_path / "meta.json").write_text(json.dumps({"dtype": "uint32"}))
    tokens = load_tokens(tmp_path, "train")
    assert isinstance(tokens, np.memmap) and tokens.dtype == np.uint32
    assert np.array_equal(tokens, ids)
    x, y = train_batch(tokens, 0, 0, 0, 4, 1, CONTEXT)
    assert torch.equal(y[:, :-1], x[:, 1:])
    assert torch.equal(x[:, 1:] - x[:, :-1], torch.full((4, CONTEXT - 1), -1))
