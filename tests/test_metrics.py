"""Loss and friends: hand-checked, and equal to what Hugging Face computes for the same model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from codexlm.batches import train_batch
from codexlm.metrics import (
    PEAK_BF16_FLOPS,
    bits_per_byte,
    flops_per_token,
    mfu,
    peak_flops,
    token_nll,
)

VOCAB = 64


def hand_nll(logits: torch.Tensor, targets: torch.Tensor) -> list[float]:
    """-log softmax(logits)[target] per position, in plain Python floats."""
    out = []
    for row, tgt in zip(
        logits.reshape(-1, logits.shape[-1]).tolist(), targets.flatten().tolist(), strict=True
    ):
        top = max(row)
        log_z = top + math.log(sum(math.exp(v - top) for v in row))
        out.append(log_z - row[tgt])
    return out


@pytest.fixture(scope="module")
def tiny_llama() -> torch.nn.Module:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


def test_token_nll_matches_hand_computation() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=g) * 3
    targets = torch.randint(0, 7, (2, 5), generator=g)
    nll, n, correct = token_nll(logits, targets)
    assert int(n) == 10
    assert float(nll) == pytest.approx(sum(hand_nll(logits, targets)), rel=1e-5)
    hits = sum(
        int(max(range(7), key=lambda v: logits[b, t, v]) == targets[b, t])
        for b in range(2)
        for t in range(5)
    )
    assert int(correct) == hits


def test_uniform_logits_cost_log_vocab() -> None:
    logits = torch.zeros(3, 4, 50)
    targets = torch.randint(0, 50, (3, 4))
    nll, n, _ = token_nll(logits, targets)
    assert float(nll) / int(n) == pytest.approx(math.log(50), rel=1e-6)


def test_bf16_logits_are_scored_in_float32() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 6, 11, generator=g)
    targets = torch.randint(0, 11, (2, 6), generator=g)
    nll16, _, _ = token_nll(logits.bfloat16(), targets)
    assert nll16.dtype == torch.float32
    expected = sum(hand_nll(logits.bfloat16().float(), targets))
    assert float(nll16) == pytest.approx(expected, rel=1e-5)


def test_mask_counts_only_masked_positions() -> None:
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 6, 9, generator=g)
    targets = torch.randint(0, 9, (2, 6), generator=g)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[0, :4] = True
    mask[1, 2] = True
    nll, n, correct = token_nll(logits, targets, mask)
    per_pos = hand_nll(logits, targets)
    keep = mask.flatten().tolist()
    assert int(n) == 5
    assert float(nll) == pytest.approx(sum(v for v, k in zip(per_pos, keep, strict=True) if k))
    # what sits at unmasked positions (padding) does not matter
    garbage = logits.clone()
    garbage[~mask] = 1e4 * torch.randn(int((~mask).sum()), 9, generator=g)
    targets2 = targets.clone()
    targets2[~mask] = 0
    nll2, n2, correct2 = token_nll(garbage, targets2, mask)
    assert float(nll2) == pytest.approx(float(nll)) and int(n2) == 5
    assert int(correct2) == int(correct)


def test_accuracy_counts_argmax_hits() -> None:
    targets = torch.tensor([[1, 2, 3, 0]])
    logits = torch.full((1, 4, 5), -1.0)
    predicted = [1, 2, 0, 0]  # three hits
    for t, p in enumerate(predicted):
        logits[0, t, p] = 5.0
    _, n, correct = token_nll(logits, targets)
    assert int(correct) == 3 and int(n) == 4
    mask = torch.tensor([[True, False, True, True]])
    _, n, correct = token_nll(logits, targets, mask)
    assert int(correct) == 2 and int(n) == 3


@torch.no_grad()
def test_shift_matches_hugging_face_loss(tiny_llama: torch.nn.Module) -> None:
    """The one-token-shift regression test: our (x, y) split scores what HF's labels= does."""
    window = torch.randint(0, VOCAB, (3, 17), generator=torch.Generator().manual_seed(3))
    hf_loss = tiny_llama(input_ids=window, labels=window).loss  # shifts internally
    x, y = window[:, :-1], window[:, 1:]
    nll, n, _ = token_nll(tiny_llama(input_ids=x).logits, y)
    assert int(n) == 3 * 16
    assert float(nll / n) == pytest.approx(float(hf_loss), abs=1e-5)
    # a missing or doubled shift would be caught
    unshifted, _, _ = token_nll(tiny_llama(input_ids=x).logits, x)
    assert abs(float(unshifted / n) - float(hf_loss)) > 1e-3
    twice, m, _ = token_nll(tiny_llama(input_ids=x).logits[:, :-1], y[:, 1:])
    assert abs(float(twice / m) - float(hf_loss)) > 1e-3


@torch.no_grad()
def test_train_batch_and_token_nll_match_hugging_face(tiny_llama: torch.nn.Module) -> None:
    tokens = np.random.default_rng(4).integers(0, VOCAB, size=500).astype(np.uint16)
    context = 12
    x, y = train_batch(tokens, seed=0, step=2, micro=0, batch_size=4, grad_accum=1, context=context)
    window = torch.cat([x, y[:, -1:]], dim=1)  # the context + 1 tokens the batch was cut from
    hf_loss = tiny_llama(input_ids=window, labels=window).loss
    nll, n, _ = token_nll(tiny_llama(input_ids=x).logits, y)
    assert float(nll / n) == pytest.approx(float(hf_loss), abs=1e-5)


def test_bits_per_byte() -> None:
    # one bit per byte: ln 2 nats per byte
    assert bits_per_byte(math.log(2) * 1000, 1000) == pytest.approx(1.0)
    assert bits_per_byte(math.log(2) * 8 * 10, 10) == pytest.approx(8.0)
    # from a mean token loss: nats/token * tokens/byte / ln 2
    loss, tokens, n_bytes = 1.7, 400, 1300
    assert bits_per_byte(loss * tokens, n_bytes) == pytest.approx(
        loss / math.log(2) * tokens / n_bytes
    )
    assert bits_per_byte(0.0, 5) == 0.0


def test_flops_per_token() -> None:
    n_params, n_layer, d_model, context = 1_000_000, 4, 128, 256
    f = flops_per_token(n_params, n_layer, d_model, context)
    # 6 FLOPs per parameter (forward 2, backward 4) plus the attention scores and values
    assert f == 6 * n_params + 12 * n_layer * d_model * context
    assert flops_per_token(2 * n_params, n_layer, d_model, context) - f == 6 * n_params
    assert flops_per_token(n_params, n_layer, d_model, 2 * context) > f
    assert flops_per_token(n_params, 0, d_model, context) == 6 * n_params


def test_peak_flops() -> None:
    assert peak_flops("NVIDIA H200") == PEAK_BF16_FLOPS["H200"] > 0
    assert peak_flops("NVIDIA H100 80GB HBM3") == PEAK_BF16_FLOPS["H100"]
    assert peak_flops("NVIDIA H100 PCIe") == PEAK_BF16_FLOPS["H100 PCIe"] < PEAK_BF16_FLOPS["H100"]
    assert peak_flops("NVIDIA A100-SXM4-80GB") == PEAK_BF16_FLOPS["A100"]
    assert peak_flops("NVIDIA L40S") == PEAK_BF16_FLOPS["L40S"]  # not the L4's
    assert peak_flops("NVIDIA L4") == PEAK_BF16_FLOPS["L4"]
    assert peak_flops("cpu") is None
    assert peak_flops("Some Unknown Accelerator") is None
    assert peak_flops("") is None


def test_mfu() -> None:
    assert mfu(1000.0, 6e9, "NVIDIA H200") == pytest.approx(1000.0 * 6e9 / PEAK_BF16_FLOPS["H200"])
    assert mfu(1000.0, 6e9, "cpu") is None
