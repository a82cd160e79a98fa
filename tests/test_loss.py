"""The chunked linear cross-entropy equals the cross-entropy of the full logits."""

from __future__ import annotations

import pytest
import torch
from conftest import model_args

from codexlm.loss import (
    CausalLMLoss,
    chunk_budget,
    chunk_tokens,
    linear_cross_entropy,
    split_head,
)
from codexlm.metrics import lm_loss
from codexlm.model import apply_lora, build_model


def tiny(arch: str) -> torch.nn.Module:
    return build_model(
        model_args(arch=arch, n_layer=2, n_head=2, d_model=32, context=16), 100, 0, 0, seed=1
    )


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 100, (4, 16), generator=g), torch.randint(0, 100, (4, 16), generator=g)


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("chunk", [7, 64, 10_000])  # ragged last chunk, exact, one chunk
def test_chunked_loss_and_grads_match_full_logits(arch: str, chunk: int) -> None:
    model = tiny(arch)
    x, y = batch()
    ref = lm_loss(model(input_ids=x).logits, y)
    ref.backward()
    ref_grads = grads(model)

    fn = CausalLMLoss(model)
    assert fn.chunked
    fn.chunk = chunk
    loss = fn(x, y)
    loss.backward()
    got = grads(model)
    assert torch.allclose(loss, ref, atol=1e-6)
    assert set(got) == set(ref_grads)
    for name, g in got.items():
        assert torch.allclose(g, ref_grads[name], atol=1e-6), name


def test_chunked_loss_compiles_to_the_same_gradients() -> None:
    model = tiny("llama")
    x, y = batch(1)
    eager = CausalLMLoss(model)
    eager(x, y).backward()
    ref = grads(model)
    compiled = torch.compile(CausalLMLoss(model))
    loss = compiled(x, y)
    loss.backward()
    for name, g in grads(model).items():
        assert torch.allclose(g, ref[name], atol=1e-6), name


def test_bf16_autocast_is_close_to_fp32() -> None:
    model = tiny("llama")
    x, y = batch(2)
    ref = lm_loss(model(input_ids=x).logits, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = CausalLMLoss(model)(x, y)
    assert loss.dtype == torch.float32  # accumulated in fp32 whatever the matmul dtype
    assert abs(float(loss) - float(ref)) < 2e-2


def test_no_grad_path_matches_and_keeps_no_graph() -> None:
    model = tiny("gpt2")
    x, y = batch(3)
    with torch.no_grad():
        ref = lm_loss(model(input_ids=x).logits, y)
        fn = CausalLMLoss(model)
        fn.chunk = 5
        loss = fn(x, y)
    assert loss.grad_fn is None
    assert torch.allclose(loss, ref, atol=1e-6)


def test_frozen_head_gets_no_gradient_under_lora() -> None:
    model = apply_lora(tiny("llama"), r=4, alpha=8, dropout=0.0, target_modules="auto")
    x, y = batch(4)
    ref = lm_loss(model(input_ids=x).logits, y)
    ref.backward()
    ref_grads = grads(model)
    fn = CausalLMLoss(model)
    assert fn.chunked  # the head is a plain Linear under LoRA of the attention/MLP layers
    loss = fn(x, y)
    loss.backward()
    got = grads(model)
    assert torch.allclose(loss, ref, atol=1e-6)
    assert set(got) == set(ref_grads) and all("lora_" in n for n in got)
    for name, g in got.items():
        assert torch.allclose(g, ref_grads[name], atol=1e-6), name


def test_unknown_model_types_fall_back_to_full_logits() -> None:
    model = tiny("llama")
    model.config.model_type = "gemma2"  # soft-caps its logits: the head must not be skipped
    assert split_head(model) is None
    fn = CausalLMLoss(model)
    assert not fn.chunked
    x, y = batch(5)
    assert torch.allclose(fn(x, y), lm_loss(model(input_ids=x).logits, y))


def test_chunk_size_bounds_the_logits() -> None:
    assert chunk_tokens(50304) * 50304 <= 2**26
    assert chunk_tokens(50304) % 128 == 0
    assert chunk_tokens(4096) == 16384
    assert chunk_tokens(10**9) == 128  # never below one matmul tile


def test_a_cpu_chunks_the_logits_to_fit_its_cache() -> None:
    # the CPU default (24 x 128 tokens, vocab 4096) runs in three chunks, a GPU in one
    cpu, gpu = chunk_budget(torch.device("cpu")), chunk_budget(torch.device("cuda"))
    assert chunk_tokens(4096, cpu) == 1024 and chunk_tokens(4096, gpu) == 16384
    assert chunk_tokens(50304, cpu) == 128
    model = build_model(model_args(d_model=32, n_head=2, context=16), 4096, 0, 0, seed=1)
    assert CausalLMLoss(model).chunk == 1024  # the module picks its weight's device's budget


def test_direct_function_matches_cross_entropy() -> None:
    g = torch.Generator().manual_seed(0)
    h = torch.randn(50, 8, generator=g, requires_grad=True)
    w = torch.randn(30, 8, generator=g, requires_grad=True)
    t = torch.randint(0, 30, (50,), generator=g)
    loss = linear_cross_entropy(h, w, t, chunk=16)
    loss.backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    ref = torch.nn.functional.cross_entropy(h @ w.t(), t)
    ref.backward()
    assert torch.allclose(loss, ref, atol=1e-6)
    assert torch.allclose(gh, h.grad, atol=1e-6) and torch.allclose(gw, w.grad, atol=1e-6)


def test_compiled_under_bf16_autocast_matches_eager() -> None:
    """What the train stage runs on a GPU: the compiled loss module inside bf16 autocast."""
    model = tiny("gpt2")
    x, y = batch(6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        eager = CausalLMLoss(model)(x, y)
    eager.backward()
    ref = grads(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = torch.compile(CausalLMLoss(model))(x, y)
    loss.backward()
    assert abs(float(loss) - float(eager)) < 1e-2
    for name, g in grads(model).items():
        assert torch.allclose(g, ref[name], atol=5e-3), name
