"""Instruction tuning's invariants: the golden loss mask, no gradient from masked positions,
packing without contamination, and the step's loss Σ NLL / Σ targets however it is split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from codexlm import chat, packing, records, sft_eval, tokenizer
from codexlm.errors import UserError
from codexlm.loss import CausalLMLoss, rows_nll

SYSTEM = {"role": "system", "content": "You answer in one word."}
SINGLE = [
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris"},
]
MULTI = [
    SYSTEM,
    {"role": "user", "content": "2 + 2?"},
    {"role": "assistant", "content": "four"},
    {"role": "user", "content": "and 3 + 3?"},
    {"role": "assistant", "content": "six, of course\n"},
]


@pytest.fixture(scope="module")
def tok():
    texts = ["def add(a, b):\n    return a + b\n", "Paris is the capital of France. " * 4] * 3
    t = tokenizer.train_bpe(texts, 320, 2)
    assert chat.ensure_template(t)  # the ChatML tokens are added to the BPE vocabulary
    return t


def targets_text(tok, messages: list[dict], train_from: int = 0) -> str:
    eot = chat.end_of_turn(tok)
    text, spans = chat.answer_spans(tok, messages, train_from, eot)
    enc = chat.encode(chat.encoder(tok), text, spans)
    assert tok.decode(enc.ids) == text  # tokenized once, as rendered, losslessly
    return tok.decode(np.asarray(enc.ids)[enc.targets])


def test_golden_mask_single_turn(tok) -> None:
    assert targets_text(tok, SINGLE) == "Paris<|im_end|>"
    assert targets_text(tok, [SYSTEM, *SINGLE]) == "Paris<|im_end|>"


def test_golden_mask_multi_turn_with_system(tok) -> None:
    assert targets_text(tok, MULTI) == "four<|im_end|>six, of course\n<|im_end|>"
    # a prompt-completion conversation trains only the completion's turn
    assert targets_text(tok, MULTI, train_from=3) == "six, of course\n<|im_end|>"


def test_the_end_of_turn_is_a_target_though_pad_is_eos(tok) -> None:
    """The mask comes from offsets, not token ids: pad == eos cannot mask the end of turn."""
    pad = tok.pad_token
    tok.pad_token = chat.IM_END  # the configuration that masked EOS in TRL (#3200)
    try:
        split = split_of(tok, [SINGLE])
        rows = packing.build_rows(split, [np.array([0])])
        eot_id = tok.convert_tokens_to_ids(chat.IM_END)
        assert tok.pad_token_id == eot_id
        assert (rows.labels == eot_id).sum() == 1  # the answer's end of turn, a target
    finally:
        tok.pad_token = pad


def save(tok, folder: Path) -> Path:
    tokenizer.save_tokenizer(tok, folder)
    return folder


def test_a_template_that_hides_the_answer_is_a_hard_error(tok) -> None:
    # renders the conversation backwards: no rendering of a beginning is its prefix
    tok.chat_template = (
        "{% for m in messages | reverse %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
        "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    try:
        with pytest.raises(
            UserError, match=r"chat template sha256:[0-9a-f]{12}: the answer of message \d"
        ):
            chat.answer_spans(tok, MULTI[1:], 0, chat.IM_END)
        tok.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
        with pytest.raises(UserError, match="no special token follows an assistant answer"):
            chat.end_of_turn(tok)
    finally:
        tok.chat_template = chat.CHATML


def test_the_exported_template_renders_as_training_did(tok, tmp_path: Path) -> None:
    folder = save(tok, tmp_path / "tok")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert config["chat_template"] == chat.CHATML
    assert not chat._GENERATION_TAGS.search(config["chat_template"])
    loaded = AutoTokenizer.from_pretrained(folder)
    prompt = loaded.apply_chat_template(MULTI[:-1], tokenize=False, add_generation_prompt=True)
    full, spans = chat.answer_spans(tok, MULTI, 0, chat.IM_END)
    assert prompt == full[: spans[-1][0]]
    # and the template's markup encodes as the special tokens the model was trained on
    ids = loaded.apply_chat_template(MULTI[:-1], tokenize=True, add_generation_prompt=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert list(ids) == chat.encode(chat.encoder(tok), prompt, []).ids


# ---------------------------------------------------------------- model-side invariants


def tiny_model(vocab: int, impl: str = "sdpa", seed: int = 0) -> LlamaForCausalLM:
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=256,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM._from_config(cfg, attn_implementation=impl)


def split_of(tok, conversations: list[list[dict]], context: int = 256) -> packing.Split:
    backend, ids, mask, starts = chat.encoder(tok), [], [], [0]
    for m in conversations:
        text, spans = chat.answer_spans(tok, m, 0, chat.IM_END)
        enc = chat.encode(backend, text, spans)
        ids += enc.ids
        mask += enc.targets.tolist()
        starts.append(len(ids))
    ex = packing.Examples(np.asarray(ids), np.asarray(mask), np.asarray(starts))
    return packing.prepare_split(ex, context, "answers", tok.pad_token_id)


def conversations(n: int) -> list[list[dict]]:
    """Examples with very different numbers of targets (1-word to many-word answers)."""
    out = []
    for i in range(n):
        answer = " ".join(["a + b"] * (1 + 3 * i))
        out.append(
            [{"role": "user", "content": f"q{i}?"}, {"role": "assistant", "content": answer}]
        )
    return out


def test_masked_positions_get_exactly_zero_gradient(tok) -> None:
    split = split_of(tok, [MULTI])
    rows = packing.build_rows(split, [np.array([0])])
    model = tiny_model(len(tok), "eager")
    mask = packing.attention_mask(rows.segments, "eager", torch.float32)
    logits = model(input_ids=rows.inputs, position_ids=rows.positions, attention_mask=mask).logits
    logits.retain_grad()
    loss = rows_nll(logits, rows.labels) / (rows.labels != -100).sum()
    loss.backward()
    per_position = logits.grad.abs().sum(-1)[0]
    target = rows.labels[0] != -100
    assert target.sum() > 0 and (~target).sum() > 0
    assert torch.all(per_position[~target] == 0)
    assert torch.all(per_position[target] > 0)
    # a prompt position's label value does not enter the loss, to the bit; a target's does
    with torch.no_grad():
        base = rows_nll(logits, rows.labels)
        changed = rows.labels.clone()
        prompt_at = int(torch.nonzero(~target)[0])
        changed[0, prompt_at] = 7
        assert (
            rows_nll(logits, changed.where(target[None], torch.tensor(-100))).item() == base.item()
        )
        other = rows.labels.clone()
        at = int(torch.nonzero(target)[0])
        other[0, at] = (other[0, at] + 1) % len(tok)
        assert rows_nll(logits, other).item() != base.item()


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_packed_logits_equal_unpacked_and_the_control_sees_contamination(tok, impl: str) -> None:
    convs = conversations(3)
    split = split_of(tok, convs)
    model = tiny_model(len(tok), impl).eval()
    packed = packing.build_rows(split, [np.array([0, 1, 2])])
    mask = packing.attention_mask(packed.segments, impl, torch.float32)
    with torch.no_grad():
        lp = model(
            input_ids=packed.inputs, position_ids=packed.positions, attention_mask=mask
        ).logits
        control = model(input_ids=packed.inputs, position_ids=packed.positions).logits
        worst = contaminated = 0.0
        for k in range(3):
            alone = packing.build_rows(split, [np.array([k])])
            n = int((alone.segments > 0).sum())
            la = model(input_ids=alone.inputs[:, :n]).logits[0]
            at = packed.segments[0] == k + 1
            assert int(at.sum()) == n
            worst = max(worst, (lp[0, at] - la).abs().max().item())
            contaminated = max(contaminated, (control[0, at] - la).abs().max().item())
    assert worst < 1e-5
    assert contaminated > 1e-3
    # no target across a boundary: each example's first input predicts its own second token
    firsts = torch.nonzero(packed.positions[0] == 0).flatten()[:3]
    for k, f in enumerate(firsts):
        alone = packing.build_rows(split, [np.array([k])])
        assert packed.labels[0, f] == alone.labels[0, 0]


def grads(model: torch.nn.Module) -> torch.Tensor:
    g = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    model.zero_grad(set_to_none=True)
    return g


def test_gradients_agree_however_the_step_is_split(tok) -> None:
    """(batch N, accumulation 1), (batch 1, accumulation N) and packed rows: one gradient,
    that of Σ NLL / Σ targets; the mean of micro-batch means is another."""
    n = 4
    split = split_of(tok, conversations(n))
    assert len(set(split.n_targets.tolist())) == n  # very different numbers of targets
    model = tiny_model(len(tok), "sdpa")
    fwd = CausalLMLoss(model)
    assert fwd.chunked  # the chunked loss, as training runs it
    total = int(split.n_targets.sum())
    sched = packing.Schedule(split, seed=3, packing=False)
    _, step_targets = packing.step_rows(sched, 0, 0, n, 1, 0, 1)
    assert step_targets == total  # the loop's divisor: every micro-batch of the step

    def run(rows: packing.Rows, denom: float) -> torch.Tensor:
        return fwd(rows.inputs, rows.labels, rows.positions, rows.segments, denom)

    run(packing.build_rows(split, [np.array([i]) for i in range(n)]), total).backward()
    big = grads(model)
    for i in range(n):
        run(packing.build_rows(split, [np.array([i])]), total).backward()
    accumulated = grads(model)
    run(packing.build_rows(split, [np.arange(n)]), total).backward()
    packed = grads(model)
    assert (big - accumulated).abs().max() < 1e-6
    assert (big - packed).abs().max() < 1e-6
    for i in range(n):  # the late-2024 accumulation bug: each micro-batch's own mean
        (run(packing.build_rows(split, [np.array([i])]), float(split.n_targets[i])) / n).backward()
    mean_of_means = grads(model)
    assert (big - mean_of_means).abs().max() > 1e-4


def test_truncation_keeps_the_start_and_drops_examples_left_without_target(tok) -> None:
    long_prompt = [
        {"role": "user", "content": "word " * 80},
        {"role": "assistant", "content": "ok"},
    ]
    split = split_of(tok, [SINGLE, long_prompt], context=40)
    assert split.dropped == 1 and split.keep.tolist() == [0]
    rows = packing.build_rows(split, [np.array([0])])
    full, _ = chat.answer_spans(tok, SINGLE, 0, chat.IM_END)
    ids = chat.encode(chat.encoder(tok), full, []).ids
    assert len(ids) <= 41 and rows.inputs[0, : len(ids) - 1].tolist() == ids[:-1]
    cut = split_of(tok, [[*long_prompt, {"role": "assistant", "content": "x"}]], context=40)
    assert cut.dropped == 1  # its answers lie beyond the context: dropped, counted


def test_batches_are_a_pure_function_of_the_step(tok) -> None:
    split = split_of(tok, conversations(7))
    a = packing.Schedule(split, seed=1, packing=True)
    b = packing.Schedule(split, seed=1, packing=True)
    late = packing.step_rows(a, 5, 1, 2, 2, 0, 1)
    for s in range(6):  # b reaches step 5 through every earlier one: the same rows
        packing.step_rows(b, s, 0, 2, 2, 0, 1)
    assert [r.tolist() for r in packing.step_rows(b, 5, 1, 2, 2, 0, 1)[0]] == [
        r.tolist() for r in late[0]
    ]
    # two ranks of batch 1 draw what one rank of batch 2 draws
    one = packing.step_rows(a, 2, 0, 2, 1, 0, 1)[0]
    two = [packing.step_rows(a, 2, 0, 1, 1, r, 2)[0][0] for r in range(2)]
    assert [r.tolist() for r in one] == [r.tolist() for r in two]
    assert records.loads(records.dumps({"a": 1})) == {"a": 1}


def answered(
    model: torch.nn.Module, tok, messages: list[dict], new: int
) -> tuple[list[int], sft_eval.Answer]:
    """sft_eval's greedy answer, and the prompt ids the model's embedding read first."""
    inputs: list[list[int]] = []
    hook = model.get_input_embeddings().register_forward_hook(
        lambda m, args, out: inputs.append(args[0][0].tolist())
    )
    try:
        (answer,) = sft_eval.answers(
            model, tok, [{"messages": messages}], new, 1, torch.device("cpu")
        )
    finally:
        hook.remove()
    return inputs[0], answer


def test_chat_prompts_are_cut_only_where_the_positions_end(tok) -> None:
    """Evaluation's greedy answers read the whole rendered conversation on a rotary model,
    even past its positions (cutting its start would drop the system message that names
    the task); on gpt2, whose absolute positions end (the whole prompt: an index error),
    its last tokens, the generation prompt kept, so that prompt and answer fit."""
    messages = [
        SYSTEM,
        {"role": "user", "content": "Capital of France? " * 8},
        {"role": "assistant", "content": "Paris"},
    ]
    rendered = chat.render(tok, messages[:-1], True)
    ids = chat.encoder(tok).encode(rendered, add_special_tokens=False).ids
    positions, new = 32, 6
    assert len(ids) > positions
    llama = LlamaForCausalLM._from_config(
        LlamaConfig(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            max_position_embeddings=positions,
        )
    )
    gpt2 = GPT2LMHeadModel._from_config(
        GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=4, n_positions=positions)
    )
    header = chat.encoder(tok).encode("<|im_start|>assistant\n", add_special_tokens=False).ids
    for model, seen in ((llama, ids), (gpt2, ids[-(positions - new) :])):
        prompt, answer = answered(model, tok, messages, new)
        assert prompt == seen, type(model).__name__
        assert seen[-len(header) :] == header and answer.reference == "Paris"


LLAMA3 = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>"
    "\n\n{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def test_a_checkpoints_own_template_is_kept_and_masked_alike() -> None:
    """model.init's tokenizer with a template of its own (Llama 3's shape, whose end of turn
    is <|eot_id|>, content trimmed, a BOS in front) keeps it, and the mask follows it."""
    own = tokenizer.train_bpe(["Paris is the capital of France. " * 4], 300, 2)
    own.add_special_tokens(
        {"additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]}
    )
    own.chat_template = LLAMA3
    assert not chat.ensure_template(own) and own.chat_template == LLAMA3
    assert chat.end_of_turn(own) == "<|eot_id|>"
    text, spans = chat.answer_spans(own, MULTI, 0, "<|eot_id|>")
    enc = chat.encode(chat.encoder(own), text, spans)
    assert own.decode(np.asarray(enc.ids)[enc.targets]) == "four<|eot_id|>six, of course<|eot_id|>"
    assert enc.ids[0] == own.bos_token_id and not enc.targets[0]  # one BOS, from the template
