"""The single-process side of codexlm.parallel (the multi-process side: test_distributed)."""

from __future__ import annotations

import pytest
import torch
from conftest import model_args

from codexlm import parallel
from codexlm.errors import UserError
from codexlm.loss import CausalLMLoss
from codexlm.model import apply_lora, build_model


def tiny(arch: str, n_layer: int = 2) -> torch.nn.Module:
    return build_model(
        model_args(arch=arch, n_layer=n_layer, n_head=2, d_model=32, context=16), 100, 0, 0, seed=1
    )


@pytest.mark.parametrize(("arch", "kind"), [("llama", "LlamaDecoderLayer"), ("gpt2", "GPT2Block")])
def test_blocks_are_the_transformer_layers(arch: str, kind: str) -> None:
    found = parallel.blocks(tiny(arch, n_layer=3))
    assert [type(b).__name__ for b in found] == [kind] * 3


def test_blocks_of_a_peft_model_are_the_base_models() -> None:
    model = apply_lora(tiny("llama"), r=4, alpha=8, dropout=0.0, target_modules="auto")
    assert len(parallel.blocks(model)) == 2


def test_fsdp_refuses_a_model_without_named_blocks() -> None:
    model = tiny("llama")
    model._no_split_modules = None
    with pytest.raises(UserError, match=r"train\.strategy: fsdp"):
        parallel.shard(CausalLMLoss(model), model, compile=False)


def test_one_process_state_is_the_trainable_parameters() -> None:
    model = apply_lora(tiny("llama"), r=4, alpha=8, dropout=0.0, target_modules="auto")
    state = parallel.model_state(model, "ddp")
    assert state and all("lora_" in n for n in state)
    assert set(state) == set(parallel.trainable_names(model))


def test_load_state_round_trip() -> None:
    a, b = (
        tiny("gpt2"),
        build_model(
            model_args(arch="gpt2", n_layer=2, n_head=2, d_model=32, context=16), 100, 0, 0, seed=2
        ),
    )
    opt = torch.optim.AdamW(b.parameters())
    parallel.load_state(b, opt, parallel.model_state(a, "ddp"), None, "ddp")
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q), name


def test_weights_finite_sees_one_nan() -> None:
    model = tiny("llama")
    assert parallel.weights_finite(model, "ddp", 1)
    with torch.no_grad():
        next(model.parameters())[0, 0] = float("nan")
    assert not parallel.weights_finite(model, "ddp", 1)


def test_single_process_needs_no_grad_sync() -> None:
    model = tiny("llama")
    with parallel.grad_sync(model, "ddp", 1, last_micro=False):
        pass  # no DDP wrapper, no no_sync: a plain context
    t = torch.ones(3)
    assert parallel.local(t) is t
