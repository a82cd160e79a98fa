"""GGUF writing, read back by transformers' own GGUF loader (an independent reader), for both
architectures and every export.gguf type; what cannot be written is refused up front."""

from __future__ import annotations

import copy
from pathlib import Path

import gguf
import pytest
import torch
from conftest import default_params, fake_checkpoint, model_args
from transformers import AutoTokenizer

from codexlm import params
from codexlm.errors import UserError
from codexlm.export.gguf import TOLERANCE, load_gguf, unsupported, write_gguf
from codexlm.export.hf import check_gguf
from codexlm.model import build_model
from codexlm.tokenizer import save_tokenizer, train_bpe

ROOT = Path(__file__).resolve().parents[1]


TINY = model_args(arch="llama", n_layer=1, n_head=2, d_model=32, context=16)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    texts = [p.read_text() for p in sorted((ROOT / "src" / "codexlm").glob("*.py"))]
    folder = tmp_path_factory.mktemp("tok")
    save_tokenizer(train_bpe(texts, 400, 2), folder)
    return folder


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0"])
def test_gguf_reads_back_within_tolerance(
    arch: str, dtype: str, tokenizer_dir: Path, tmp_path: Path
) -> None:
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = build_model(
        model_args(arch=arch, n_layer=2, n_head=4, d_model=64, context=48),
        len(tok),
        tok.eos_token_id,
        tok.pad_token_id,
        0,
    )
    # weights of a trained model's spread, so the logits span a few nats as a real model's do
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(p.numel()))
    model.eval()
    model.save_pretrained(tmp_path)  # config.json beside it must not be what is read
    save_tokenizer(tok, tmp_path)
    write_gguf(model, tok, tmp_path, tmp_path / "m.gguf", dtype, "codexlm")

    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    assert reader.fields["general.name"].contents() == "codexlm"
    assert reader.fields["tokenizer.ggml.pre"].contents() == "gpt-2"
    assert reader.fields["tokenizer.ggml.add_bos_token"].contents() is False
    # the vocabulary is padded to the embedding rows, as llama.cpp requires
    n_rows = model.get_input_embeddings().weight.shape[0]
    assert len(reader.fields["tokenizer.ggml.tokens"].contents()) == n_rows > len(tok)

    loaded = load_gguf(tmp_path, "m.gguf")
    assert type(loaded) is type(model)
    assert loaded.config.num_hidden_layers == 2 and loaded.config.hidden_size == 64
    ids = torch.randint(0, len(tok), (2, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = model(input_ids=ids).logits, loaded(input_ids=ids).logits
    diff = float((want - got).abs().max())
    assert diff <= TOLERANCE[dtype], (diff, float(want.abs().max()))
    if dtype == "f32":
        assert diff < 1e-4
    else:
        assert diff > 0  # really rounded: the check would see a broken writer


def test_gguf_is_byte_identical_run_to_run(tokenizer_dir: Path, tmp_path: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = build_model(TINY, len(tok), tok.eos_token_id, 1, 0)
    for name in ("a.gguf", "b.gguf"):
        write_gguf(model, tok, tokenizer_dir, tmp_path / name, "q8_0", "codexlm")
    assert (tmp_path / "a.gguf").read_bytes() == (tmp_path / "b.gguf").read_bytes()


def test_gguf_tokenizer_matches_the_exported_one(tokenizer_dir: Path, tmp_path: Path) -> None:
    """transformers rebuilds a tokenizer from the GGUF's vocabulary and merges alone."""
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = build_model(TINY, len(tok), tok.eos_token_id, 1, 0)
    write_gguf(model, tok, tokenizer_dir, tmp_path / "m.gguf", "f32", "codexlm")
    from_gguf = AutoTokenizer.from_pretrained(tmp_path, gguf_file="m.gguf")
    for text in ["def f(x):\n\treturn x  # café 🚀\r\n", "    return self.items[-1]\n"]:
        assert from_gguf(text)["input_ids"] == tok(text)["input_ids"]


def test_unsupported_tokenizers_and_models_are_named() -> None:
    bytelevel = {
        "model": {"type": "BPE"},
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True},
    }
    assert unsupported("llama", bytelevel) is None
    assert unsupported("gpt2", bytelevel) is None
    assert unsupported("mistral", bytelevel) is None  # written as llama, as llama.cpp does
    assert "olmo2" in unsupported("olmo2", bytelevel)
    sentencepiece = {**bytelevel, "pre_tokenizer": {"type": "Metaspace"}}
    assert "byte-level BPE" in unsupported("llama", sentencepiece)
    prefix = copy.deepcopy(bytelevel)
    prefix["pre_tokenizer"]["add_prefix_space"] = True
    assert unsupported("llama", prefix) is not None


def test_gguf_param_is_validated(tmp_path: Path) -> None:
    p = default_params()
    assert params.parse(p).export.gguf == "f16"
    p["export"]["gguf"] = "q4_k"
    with pytest.raises(UserError, match=r"export\.gguf: Input should be 'none', 'f32'"):
        params.parse(p)
    p = default_params()
    init = fake_checkpoint(tmp_path / "base", max_position_embeddings=512)
    p["model"]["init"] = str(init)
    p["lora"]["enabled"] = True
    p["train"]["optimizer"] = "adamw"  # Muon is refused with LoRA
    p["export"]["merge_lora"] = False
    with pytest.raises(UserError, match=r"export\.gguf: an adapter export"):
        params.parse(p)
    p["export"]["gguf"] = "none"
    assert params.parse(p).export.gguf == "none"


def test_the_export_stage_refuses_an_unsupported_gguf_before_any_work(
    tokenizer_dir: Path, tmp_path: Path
) -> None:
    """export.check_gguf: the config of `weights` and the tokenizer of `trained` decide; one
    UserError naming export.gguf, nothing checked with export.gguf: none."""
    (tmp_path / "config.json").write_text('{"model_type": "olmo2"}')
    # an architecture the GGUF export does not cover: no GGUF, said in one line, no error
    assert check_gguf("f16", tmp_path, tokenizer_dir) == "none"
    assert check_gguf("none", tmp_path, tokenizer_dir) == "none"  # not even read
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    check_gguf("f16", tmp_path, tokenizer_dir)
