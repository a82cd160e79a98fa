"""The chat template travels with the export: transformers 5 and 4.57 render and tokenize a
conversation as training did, the pipeline answers a list of messages and stops at the end
of turn, generation_config and the GGUF know the end-of-turn token."""

from __future__ import annotations

import json
import os
from pathlib import Path

import gguf
import pytest
import torch
from conftest import run
from huggingface_hub import ModelCard
from test_export import JINJA2, TOKENIZERS_4, TRANSFORMERS_4, venv_with
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, pipeline

from codexlm import chat, sft_eval, tokenizer
from codexlm.export import hf as export
from codexlm.model import save_model

MESSAGES = [
    {"role": "system", "content": "call: answer with a call."},
    {"role": "user", "content": "Call `getcwd`."},
    {"role": "assistant", "content": "getcwd()"},
    {"role": "user", "content": "Call `f` <not special>."},
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """A tiny llama with a ChatML tokenizer, through the export stage's own function."""
    root = tmp_path_factory.mktemp("sft-export")
    tok = tokenizer.train_bpe(["def getcwd():\n    return '/'\n" * 5, "Call it now. " * 9], 300, 2)
    chat.ensure_template(tok)
    tokenizer.save_tokenizer(tok, root / "tok")
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    save_model(LlamaForCausalLM(cfg), root / "tok", root / "trained")
    export.export(
        root / "trained", root / "export", None, True, 64, 0, 1e-5, ModelCard("x"), gguf="f32"
    )
    return root / "export", tok


def test_the_exported_tokenizer_renders_and_encodes_as_training_did(exported) -> None:
    folder, tok = exported
    loaded = AutoTokenizer.from_pretrained(folder)
    rendered = loaded.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert rendered == chat.render(tok, MESSAGES, True)
    ids = loaded.apply_chat_template(MESSAGES, tokenize=True, add_generation_prompt=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    assert ids == chat.encoder(tok).encode(rendered, add_special_tokens=False).ids
    assert not chat._GENERATION_TAGS.search(loaded.chat_template)
    generation = json.loads((folder / "generation_config.json").read_text())
    assert loaded.convert_tokens_to_ids(chat.IM_END) in generation["eos_token_id"]


def test_the_gguf_carries_the_template_and_the_end_of_turn(exported) -> None:
    folder, tok = exported
    (file,) = folder.glob("*.gguf")
    reader = gguf.GGUFReader(file)
    field = reader.fields["tokenizer.chat_template"]
    assert bytes(field.parts[field.data[0]]).decode() == chat.CHATML
    eot = reader.fields["tokenizer.ggml.eot_token_id"]
    assert int(eot.parts[eot.data[0]][0]) == tok.convert_tokens_to_ids(chat.IM_END)


def test_the_pipeline_answers_messages_as_evaluation_does(exported) -> None:
    folder, tok = exported
    generate = pipeline("text-generation", model=str(folder))
    out = generate(MESSAGES, do_sample=False, max_new_tokens=12)[0]["generated_text"]
    assert out[:-1] == MESSAGES and out[-1]["role"] == "assistant"
    model = generate.model
    (mine,) = sft_eval.answers(
        model,
        tok,
        [{"messages": [*MESSAGES, {"role": "assistant", "content": ""}]}],
        12,
        1,
        torch.device("cpu"),
    )
    assert out[-1]["content"] == mine.answer


TEMPLATE_SCRIPT = """
import json, sys, transformers
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(sys.argv[1])
messages = json.loads(sys.stdin.read())
print(json.dumps({
    "version": transformers.__version__,
    "text": tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True),
    "ids": list(tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)),
}))
"""


@pytest.mark.slow
def test_transformers_4_renders_the_template_as_training_did(exported, tmp_path: Path) -> None:
    """Under transformers 4.57 (its own environment, cached as test_export's is)."""
    folder, tok = exported
    cache = Path(os.environ.get("CODEXLM_TEST_CACHE", Path.home() / ".cache" / "codexlm-tests"))
    python = venv_with(cache, TRANSFORMERS_4, TOKENIZERS_4, JINJA2)
    proc = run(
        [str(python), "-c", TEMPLATE_SCRIPT, str(folder)], tmp_path, input=json.dumps(MESSAGES)
    )
    old = json.loads(proc.stdout.strip().splitlines()[-1])
    assert old["version"] == TRANSFORMERS_4.split("==")[1]
    assert old["text"] == chat.render(tok, MESSAGES, True)
    assert old["ids"] == chat.encoder(tok).encode(old["text"], add_special_tokens=False).ids
