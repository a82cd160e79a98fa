"""GRPO's correctness, checked the way the field checks it (docs/rl.md): advantages sum to
zero in each group; with one inner step the ratio is exactly 1; the loss's gradient is the
hand-computed REINFORCE gradient with a group baseline; the sampler's log-probs are the
training forward's; prompt tokens and padding carry no loss; and the rewards of known-good
and known-bad programs."""

from __future__ import annotations

import pytest
import torch
from rl_fixtures import model, tokenizer

from codexlm.rl import grpo
from codexlm.rl.logprobs import Rows, rows_of, token_logprobs
from codexlm.rl.rollout import sample

# fp32 on CPU: the KV-cached sampler and the full forward sum in other orders
LOGPROB_ATOL = 1e-5


def test_advantages_sum_to_zero_per_group_and_equal_groups_are_skipped() -> None:
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.2, 0.2, 0.2, 0.2], [0.0, 0.5, 1.0, 0.25]])
    for scale in (False, True):
        adv, keep = grpo.advantages(rewards, scale)
        assert keep.tolist() == [True, False, True]
        torch.testing.assert_close(adv.sum(1), torch.zeros(3), atol=1e-6, rtol=0)
        assert adv[1].abs().sum() == 0  # an all-equal group: no gradient at all
    adv, _ = grpo.advantages(rewards, scale=False)
    assert adv[0].tolist() == [0.5, -0.5, -0.5, 0.5]  # reward minus the group's mean
    adv, _ = grpo.advantages(rewards, scale=True)
    std = rewards[2].std()
    torch.testing.assert_close(adv[2], (rewards[2] - rewards[2].mean()) / (std + grpo.EPS))


def toy_rows() -> tuple[Rows, list[list[int]], list[list[int]]]:
    """Two prompts of other lengths, each with completions of other lengths: padding both
    sides."""
    tok = tokenizer()
    prompts = [tok("def add_3(x: int) -> int:\n").input_ids, tok("def f(s):\n").input_ids]
    completions = [tok("\n    return x + 3\n").input_ids, tok("    return 0").input_ids]
    ps = [prompts[0], prompts[0], prompts[1], prompts[1]]
    cs = [completions[0], completions[1], completions[1], completions[0][:3]]
    return rows_of(ps, cs, tok.pad_token_id), ps, cs


def test_one_inner_step_has_ratio_exactly_one_and_the_reinforce_gradient() -> None:
    rows, ps, cs = toy_rows()
    m = model()
    adv = torch.tensor([0.5, -0.5, 1.0, -1.0])
    logp = token_logprobs(m, rows)
    loss, stats = grpo.loss(logp, logp.detach(), adv, rows.targets[:, 1:], clip=0.2)
    assert stats.ratio.item() == 1.0 and stats.clipped.item() == 0.0
    ours = torch.autograd.grad(loss, list(m.parameters()), allow_unused=True)

    # by hand: each row alone, unpadded, its completion tokens' log-probs from the logits;
    # REINFORCE with a baseline: -(1/N) Σ_i A_i Σ_t log p(y_it), N all completion tokens
    total, n = torch.zeros(()), sum(len(c) for c in cs)
    for a, p, c in zip(adv, ps, cs, strict=True):
        ids = torch.tensor([p + c])
        logits = m(input_ids=ids).logits[0]
        lp = torch.log_softmax(logits, -1)
        total = total + a * sum(lp[len(p) - 1 + t, c[t]] for t in range(len(c)))
    hand = torch.autograd.grad(-total / n, list(m.parameters()), allow_unused=True)
    # its value is -Σ A_i |y_i| / N (the ratio is 1): only its gradient is REINFORCE's
    lengths = torch.tensor([len(c) for c in cs], dtype=torch.float32)
    torch.testing.assert_close(loss.detach(), -(adv * lengths).sum() / n)
    for g, h in zip(ours, hand, strict=True):
        if g is None:
            assert h is None
            continue
        torch.testing.assert_close(g, h, atol=1e-6, rtol=1e-4)


def test_prompt_and_padding_tokens_carry_no_loss() -> None:
    rows, _, _ = toy_rows()
    m = model()
    logp = token_logprobs(m, rows)
    assert (logp[rows.targets[:, 1:] == 0] == 0).all()
    # a change to a prompt token's log-prob or a pad's changes nothing: only targets count
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])
    mask = rows.targets[:, 1:]
    base, _ = grpo.loss(logp, logp, adv, mask, clip=0.2)
    moved, _ = grpo.loss(logp + 7.0 * (1 - mask), logp, adv, mask, clip=0.2)  # ratio e^7 there
    assert moved.item() == base.item()


def test_clipped_ratio_and_kl() -> None:
    logp = torch.tensor([[0.0, -1.0, -2.0]])
    old = torch.tensor([[0.0, -1.5, -1.0]])
    mask = torch.tensor([[0, 1, 1]])
    loss, stats = grpo.loss(logp, old, torch.tensor([1.0]), mask, clip=0.2)
    r1, r2 = torch.exp(torch.tensor(0.5)), torch.exp(torch.tensor(-1.0))
    # A > 0: min(r A, clip(r) A): token 1 clipped at 1.2, token 2 unclipped (r < 0.8 is lower)
    torch.testing.assert_close(loss, -(torch.tensor(1.2) + r2) / 2)
    assert stats.clipped.item() == 1.0  # both tokens lie outside [0.8, 1.2]
    assert r1 > 1.2
    ref = torch.tensor([[0.0, -1.0, -1.0]])
    with_kl, stats = grpo.loss(logp, old, torch.tensor([1.0]), mask, 0.2, ref, kl_coef=0.5)
    d = torch.tensor(1.0)  # ref - logp on token 2; token 1 has d = 0: no KL
    k3 = torch.exp(d) - d - 1
    torch.testing.assert_close(with_kl - loss, 0.5 * k3 / 2)
    torch.testing.assert_close(stats.kl, k3 / 2)


@pytest.mark.parametrize(("arch", "temperature"), [("llama", 1.0), ("llama", 0.7), ("gpt2", 1.0)])
def test_sampler_logprobs_equal_the_training_forward(arch: str, temperature: float) -> None:
    # gpt2's absolute positions: left padding must be numbered as generate numbers it
    tok = tokenizer()
    m = model(seed=3, arch=arch)
    prompts = ["def add_3(x: int) -> int:\n", 'def f(s: str) -> int:\n    """Count.\n'] * 3
    r = sample(
        m, tok, prompts, max_new_tokens=12, stops=["\ndef"], temperature=temperature,
        top_p=1.0, seed=5, batch_size=4, device=torch.device("cpu"),
    )  # fmt: skip
    assert m.training  # sampling left the mode as it was
    mask = r.rows.targets[:, 1:].bool()
    assert mask.sum().item() == sum(r.lengths) > 0
    with torch.no_grad():
        forward = token_logprobs(m, r.rows, temperature)
    torch.testing.assert_close(forward[mask], r.sampler_logprobs[mask], atol=LOGPROB_ATOL, rtol=0)
    assert (r.sampler_logprobs[~mask] == 0).all()
    again = sample(
        m, tok, prompts, max_new_tokens=12, stops=["\ndef"], temperature=temperature,
        top_p=1.0, seed=5, batch_size=4, device=torch.device("cpu"),
    )  # fmt: skip
    assert again.texts == r.texts and torch.equal(again.rows.input_ids, r.rows.input_ids)
