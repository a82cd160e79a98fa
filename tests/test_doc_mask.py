"""train.doc_mask: text windows whose attention stops at each end-of-text, in training,
validation and evaluate's scoring alike."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import model_args, train_args

from codexlm import train as T
from codexlm.evaluate import forward
from codexlm.loss import CausalLMLoss
from codexlm.model import build_model
from codexlm.packing import document_rows

EOT, VOCAB, CONTEXT = 0, 64, 16


def tiny(arch: str = "llama") -> torch.nn.Module:
    cfg = model_args(arch=arch, n_layer=2, n_head=2, d_model=32, context=CONTEXT)
    return build_model(cfg, VOCAB, EOT, EOT, seed=1).eval()


def test_positions_restart_and_segments_count_at_each_end_of_text() -> None:
    x = torch.tensor([[5, 6, 0, 7, 8, 9, 0, 0, 3]])
    positions, segments = document_rows(x, EOT)
    assert positions.tolist() == [[0, 1, 0, 1, 2, 3, 0, 0, 1]]
    assert segments.tolist() == [[0, 0, 1, 1, 1, 1, 2, 3, 3]]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_a_document_is_scored_as_if_alone_in_its_window(arch: str) -> None:
    """Logits of the second document (from its end-of-text on) equal those of that document
    scored by itself from position 0; without the mask they depend on the first document."""
    model = tiny(arch)
    first = torch.tensor([11, 12, 13, 14, 15, 16])
    second = torch.tensor([EOT, 21, 22, 23, 24, 25, 26, 27, 28, 29])
    x = torch.cat([first, second])[None]
    alone = forward(model, second[None], 1, CONTEXT, torch.device("cpu"))
    masked = forward(model, x, 1, CONTEXT, torch.device("cpu"), eot=EOT)
    plain = forward(model, x, 1, CONTEXT, torch.device("cpu"))
    torch.testing.assert_close(masked[0, len(first) :], alone[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(masked[0, : len(first)], plain[0, : len(first)])  # no eot yet
    assert (plain[0, len(first) :] - alone[0]).abs().max() > 1e-3


def test_the_training_loss_is_the_mean_over_documents_scored_alone() -> None:
    """CausalLMLoss with document bounds: the mean NLL of every token, each document's own
    tokens its only context; its gradient reaches the weights."""
    model = tiny()
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, VOCAB, (3, CONTEXT), generator=g)
    x[0, 5], x[1, 2], x[1, 9] = EOT, EOT, EOT
    y = torch.randint(1, VOCAB, (3, CONTEXT), generator=g)
    loss = CausalLMLoss(model)(x, y, *document_rows(x, EOT))
    nll = []
    for row, target in zip(x, y, strict=True):
        bounds = [0, *(torch.nonzero(row == EOT).flatten().tolist()), CONTEXT]
        for a, b in itertools.pairwise(bounds):
            if b > a:
                logits = model(input_ids=row[None, a:b]).logits[0]
                nll.append(torch.nn.functional.cross_entropy(logits, target[a:b], reduction="none"))
    torch.testing.assert_close(loss, torch.cat(nll).mean(), atol=1e-5, rtol=1e-5)
    unmasked = CausalLMLoss(model)(x, y)
    assert abs(unmasked.item() - loss.item()) > 1e-4
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


class Validations:
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_validate(self, step: int, loss: float) -> None:
        self.losses.append(loss)


def test_train_uses_document_bounds_when_asked(tmp_path: Path) -> None:
    """The loop feeds the bounds (its batches carry them, the step-0 validation loss is the
    masked one) and trains to other weights than without; the run says which it was."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, VOCAB, size=20_000).astype(np.uint16)
    tokens[rng.integers(0, len(tokens), size=800)] = EOT  # documents of ~25 tokens
    common = dict(steps=3, batch_size=4, eval_every=3, eval_batches=1, log_every=1)
    common.update(checkpoint_every=3, compile=False, resume="never")
    out = {}
    for mask in (False, True):
        cfg = train_args(**common, doc_mask=mask)
        run = T.Run(0, CONTEXT, tmp_path / str(mask), "doc", eot_id=EOT)
        batch = next(T.device_batches(tokens, 0, 0, cfg, run))
        assert len(batch) == (4 if mask else 2)
        if mask:
            assert torch.equal(batch[2], document_rows(batch[0], EOT)[0])
        model, val = tiny(), Validations()
        T.train(model.train(), tokens, tokens[:4000], cfg, run, [val])
        out[mask] = val.losses, torch.cat([p.detach().flatten() for p in model.parameters()])
    assert out[True][0][0] != pytest.approx(out[False][0][0], rel=1e-4)
    assert not torch.allclose(out[True][1], out[False][1])


def test_doc_mask_without_the_end_of_text_id_is_our_bug() -> None:
    cfg = train_args(steps=1, batch_size=2, doc_mask=True)
    run = T.Run(0, CONTEXT, Path("unused"), "doc")
    with pytest.raises(ValueError, match="eot_id"):
        next(T.device_batches(np.arange(1000, dtype=np.uint16) % VOCAB, 0, 0, cfg, run))
