"""DPO's correctness (docs/rl.md): at step 0 (policy = reference) the loss is ln 2 with zero
margins; on a fixed batch it is the paper's formula, as eric-mitchell/direct-preference-
optimization's `preference_loss` computes it, for the sigmoid and IPO losses; padding and
prompt tokens never count; records are read as strings or message lists, and a record
missing `chosen` is one line."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from rl_fixtures import model, tokenizer

from codexlm.chat import ensure_template
from codexlm.errors import UserError
from codexlm.rl import dpo
from codexlm.rl.logprobs import rows_of, sequence_logprobs
from codexlm.rl.pairs import from_verdicts, load_pairs, read_pairs

PAIRS = str(ROOT / "tasks" / "pairs.jsonl")


def batch_logps(m, pairs):
    prompts = [p.prompt for p in pairs]
    chosen = rows_of(prompts, [p.chosen for p in pairs], tokenizer().pad_token_id)
    rejected = rows_of(prompts, [p.rejected for p in pairs], tokenizer().pad_token_id)
    return sequence_logprobs(m, chosen), sequence_logprobs(m, rejected)


@pytest.mark.parametrize("beta", [0.1, 2.0])
def test_step_zero_loss_is_ln2_with_zero_margins(beta: float) -> None:
    pairs = load_pairs(tokenizer(), PAIRS, 128)[:6]
    policy = model(seed=1)
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    pi_c, pi_r = batch_logps(policy, pairs)
    with torch.no_grad():
        ref_c, ref_r = batch_logps(reference, pairs)
    loss, m = dpo.preference_loss(pi_c, pi_r, ref_c, ref_r, beta, "sigmoid")
    assert abs(loss.item() - math.log(2)) < 1e-6
    assert m["rewards/margins"].item() == 0 and m["rewards/chosen"].item() == 0
    assert m["rewards/accuracies"].item() == 0  # chosen > rejected nowhere: they are equal


def test_loss_on_a_fixed_batch_is_the_papers_formula() -> None:
    g = torch.Generator().manual_seed(0)
    pi_c, pi_r, ref_c, ref_r = (
        -30 * torch.rand(8, generator=g, dtype=torch.float64) for _ in range(4)
    )
    for beta in (0.1, 0.5):
        # re-derived, in plain floats: h = log-ratio of chosen over rejected, policy minus
        # reference; DPO eq. 7: -log sigmoid(beta h) = log(1 + exp(-beta h)); IPO eq. 17:
        # (h - 1/(2 beta))^2; both averaged over the batch
        rows = zip(pi_c.tolist(), pi_r.tolist(), ref_c.tolist(), ref_r.tolist(), strict=True)
        h = [(a - b) - (c - d) for a, b, c, d in rows]
        sigmoid = sum(math.log1p(math.exp(-beta * x)) for x in h) / len(h)
        ipo = sum((x - 1 / (2 * beta)) ** 2 for x in h) / len(h)
        for kind, want in (("sigmoid", sigmoid), ("ipo", ipo)):
            got, m = dpo.preference_loss(pi_c, pi_r, ref_c, ref_r, beta, kind)
            assert abs(got.item() - want) < 1e-6, (kind, beta)
        margins = [beta * x for x in h]
        assert abs(m["rewards/margins"].item() - sum(margins) / len(h)) < 1e-9
        assert m["rewards/accuracies"].item() == sum(x > 0 for x in margins) / len(h)
        chosen = beta * (pi_c - ref_c)
        assert torch.allclose(m["rewards/chosen"], chosen.mean())


def test_padding_and_prompt_tokens_never_count() -> None:
    tok = tokenizer()
    pairs = load_pairs(tok, PAIRS, 128)[:5]
    m = model(seed=2)
    with torch.no_grad():
        batched, _ = batch_logps(m, pairs)  # other lengths: padding on both sides
        for i, p in enumerate(pairs):
            logits = m(input_ids=torch.tensor([p.prompt + p.chosen])).logits[0]
            lp = torch.log_softmax(logits.float(), -1)
            alone = sum(lp[len(p.prompt) - 1 + t, p.chosen[t]] for t in range(len(p.chosen)))
            assert abs(batched[i].item() - alone.item()) < 1e-4


def write(tmp_path: Path, *records: dict) -> str:
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_records_missing_chosen_are_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, {"prompt": "def f():\n", "chosen": "  return 1\n", "rejected": "x"},
                 {"prompt": "def g():\n", "rejected": "    return 2\n"})  # fmt: skip
    with pytest.raises(UserError, match=r"^dpo.pairs: .*pairs.jsonl:2: missing chosen \(a pair"):
        read_pairs(path)
    path = write(tmp_path, {"prompt": "p", "chosen": 3, "rejected": "x"})
    with pytest.raises(UserError, match=r":1: chosen is a int, not a string or messages"):
        read_pairs(path)


def test_message_lists_go_through_the_chat_template(tmp_path: Path) -> None:
    tok = copy.deepcopy(tokenizer())
    ensure_template(tok)
    user = [{"role": "user", "content": "Add 3 to x."}]
    rejected = [{"role": "assistant", "content": "return x"}]
    path = write(tmp_path, {"prompt": user, "chosen": "return x + 3", "rejected": rejected})
    (p,) = load_pairs(tok, path, 128)
    text = tok.decode(p.prompt + p.chosen)
    assert text.endswith("return x + 3<|im_end|>\n") and "Add 3 to x." in tok.decode(p.prompt)
    assert tok.decode(p.rejected).startswith("return x<|im_end|>")
    assert "Add 3" not in tok.decode(p.chosen)  # the answer's tokens only


def test_pairs_from_verdicts() -> None:
    samples = [("a", "x"), ("a", "y"), ("a", "y"), ("a", "z"), ("b", "q"), ("b", "r")]
    passed = [True, False, False, True, False, False]
    out = from_verdicts({"a": "pa", "b": "pb"}, samples, passed)
    assert out == [{"prompt": "pa", "chosen": "x", "rejected": "y", "task_id": "a"}]
