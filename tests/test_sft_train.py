"""The real training loop on instruction rows: however the step's batch is split over
micro-batches, the weights after each step are the same (the loss is Σ NLL / Σ targets of
the whole step), and a run stopped by a crash resumes to bit-identical weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import train_args
from test_sft import conversations, split_of, tiny_model

from codexlm import chat, tokenizer
from codexlm import train as train_mod

TRAIN = dict(
    optimizer="adamw",
    embed_lr_scale=1.0,
    steps=4,
    lr=1e-2,
    min_lr=1e-3,
    warmup_steps=1,
    precision="fp32",
    compile=False,
    eval_every=2,
    eval_batches=1,
    log_every=1,
    checkpoint_every=2,
    keep_checkpoints=2,
    grad_clip=0.0,
)


@pytest.fixture(scope="module")
def splits():
    tok = tokenizer.train_bpe(
        ["a + b is the sum of a and b. " * 6, "def f(q):\n    pass\n"], 300, 2
    )
    chat.ensure_template(tok)
    return split_of(tok, conversations(12), context=96), split_of(tok, conversations(3), 96), tok


def run(tmp: Path, splits, **overrides) -> dict[str, torch.Tensor]:
    train, val, tok = splits
    model = tiny_model(len(tok), "sdpa")
    cfg = train_args(**{**TRAIN, **overrides})
    train_mod.train(model, train, val, cfg, train_mod.Run(0, 96, tmp / "ckpt", "fp"))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def max_diff(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_the_step_is_the_same_however_it_is_split(tmp_path: Path, splits) -> None:
    whole = run(tmp_path / "a", splits, batch_size=4, grad_accum=1)
    halves = run(tmp_path / "b", splits, batch_size=2, grad_accum=2)
    singles = run(tmp_path / "c", splits, batch_size=1, grad_accum=4)
    assert max_diff(whole, halves) < 1e-5
    assert max_diff(whole, singles) < 1e-5
    # one example a padded row draws other rows: a different run, which the check can see
    padded = run(tmp_path / "d", splits, batch_size=4, grad_accum=1, packing=False)
    assert max_diff(whole, padded) > 1e-4


class Crash(Exception):
    pass


def test_a_crashed_run_resumes_to_identical_weights(
    tmp_path: Path, splits, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = run(tmp_path / "ref", splits, batch_size=2, grad_accum=2)
    real = train_mod.row_batch

    def dies_at_step_3(rows_of, step, *a, **k):
        if step == 3:
            raise Crash("killed")
        return real(rows_of, step, *a, **k)

    monkeypatch.setattr(train_mod, "row_batch", dies_at_step_3)
    with pytest.raises(Crash):
        run(tmp_path / "part", splits, batch_size=2, grad_accum=2)
    monkeypatch.undo()
    resumed = run(tmp_path / "part", splits, batch_size=2, grad_accum=2)
    for k in reference:
        assert torch.equal(reference[k], resumed[k]), k


def test_two_ranks_average_to_the_one_process_gradient(splits) -> None:
    """What DDP computes from each rank's `row_batch` (the mean of the ranks' gradients,
    emulated here without processes) is the one-process gradient of the same global batch:
    each rank divides by the step's targets over world, counted for every rank on the host."""
    train, _, tok = splits
    cfg = train_args(**{**TRAIN, "batch_size": 2, "grad_accum": 1})
    sched = train_mod.Schedule(train, 0, True)
    model = tiny_model(len(tok), "sdpa")
    fwd = train_mod.CausalLMLoss(model)

    def grad_of(batch: tuple) -> torch.Tensor:
        fwd(*batch).backward()
        g = torch.cat([p.grad.flatten() for p in model.parameters()])
        model.zero_grad(set_to_none=True)
        return g

    ranks = [
        grad_of(train_mod.row_batch(sched, 1, 0, cfg, train_mod.Dist(rank=r, world=2)))
        for r in range(2)
    ]
    one = train_args(**{**TRAIN, "batch_size": 4, "grad_accum": 1})
    single = grad_of(train_mod.row_batch(sched, 1, 0, one, train_mod.Dist()))
    assert ((ranks[0] + ranks[1]) / 2 - single).abs().max() < 1e-6
    assert (ranks[0] - single).abs().max() > 1e-4  # one rank alone is not the step


def test_lora_trains_the_rows_of_the_tokens_the_template_added() -> None:
    """Under LoRA the chat template's new tokens get trainable embedding rows (the tied head
    follows them), or the model could never learn to emit <|im_end|>."""
    from conftest import model_args

    from codexlm.model import apply_lora, build_model

    model = build_model(model_args(n_layer=1, n_head=2, d_model=32, context=16), 64, 0, 1, 0)
    model.resize_token_embeddings(66, pad_to_multiple_of=64)
    lora = apply_lora(model, 4, 8, 0.0, "auto", [64, 65])
    fwd = train_mod.CausalLMLoss(lora)
    x, y = torch.tensor([[1, 64, 5, 65, 2]]), torch.tensor([[64, 5, 65, 2, -100]])
    fwd(x, y, torch.arange(5)[None], torch.ones_like(x), 4.0).backward()
    grads = {n: p.grad for n, p in lora.named_parameters() if p.requires_grad and "token" in n}
    assert len(grads) == 1 and next(iter(grads.values())).abs().sum() > 0
    # the base embedding itself stays frozen
    assert (
        not lora.get_base_model()
        .get_input_embeddings()
        .token_adapter.base_layer.weight.requires_grad
    )
