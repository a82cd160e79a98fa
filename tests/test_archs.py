"""Every listed architecture end to end at a tiny size: train, exact resume, export parity,
AutoModelForCausalLM reload with identical logits, LoRA targets found, GGUF where written;
the default build unchanged; options an architecture lacks refused at params time."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import default_params, model_args, train_args
from huggingface_hub import ModelCard
from transformers import AutoModelForCausalLM, AutoTokenizer

from codexlm import params
from codexlm import train as train_mod
from codexlm.errors import UserError
from codexlm.export.gguf import ARCHS as GGUF_ARCHS
from codexlm.export.gguf import arch_unsupported
from codexlm.export.hf import check_gguf, export
from codexlm.model import apply_lora, build_model, check_arch, save_model
from codexlm.tokenizer import save_tokenizer, train_bpe

ROOT = Path(__file__).resolve().parents[1]
ARCHS = ["llama", "gpt2", "qwen3", "mistral", "gemma3_text", "olmo2", "phi3"]
CONTEXT, STEPS = 16, 6
TRAIN = dict(
    optimizer="muon",
    steps=STEPS,
    batch_size=2,
    grad_accum=1,
    warmup_steps=1,
    precision="fp32",
    compile=False,
    eval_every=3,
    eval_batches=1,
    log_every=3,
    checkpoint_every=2,
    keep_checkpoints=2,
)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    texts = [p.read_text() for p in sorted((ROOT / "src" / "codexlm").glob("*.py"))]
    folder = tmp_path_factory.mktemp("tok")
    save_tokenizer(train_bpe(texts, 300, 2), folder)
    return folder


@pytest.fixture(scope="module")
def tokens(tokenizer_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    text = (ROOT / "src" / "codexlm" / "train.py").read_text()
    ids = np.array(tok(text)["input_ids"], dtype=np.uint16)
    return ids[:3000], ids[3000:4000]


def tiny(arch: str) -> params.Model:
    """2 layers, width 32, 4 heads; grouped-query (2 kv heads) where the arch has it."""
    kv = 0 if arch == "gpt2" else 2
    return model_args(arch=arch, n_layer=2, n_head=4, n_kv_head=kv, d_model=32, context=CONTEXT)


class Crash(Exception):
    pass


class CrashAt:
    """Dies at the end of `step`, after the checkpoint of the step before it."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, step: int) -> None:
        if step == self.step:
            raise Crash(step)


def train_tiny(
    arch: str, tok, tokens, ckpt: Path, callbacks: list | None = None
) -> torch.nn.Module:
    model = build_model(tiny(arch), len(tok), tok.eos_token_id, tok.pad_token_id, 0)
    run = train_mod.Run(0, CONTEXT, ckpt, f"archs-{arch}")
    train_mod.train(model, tokens[0], tokens[1], train_args(**TRAIN), run, callbacks or [])
    return model


@pytest.mark.parametrize("arch", ARCHS)
def test_arch_end_to_end(arch: str, tokenizer_dir: Path, tokens, tmp_path: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    untrained = build_model(tiny(arch), len(tok), tok.eos_token_id, tok.pad_token_id, 0)
    assert untrained.config.model_type == arch
    if arch != "gpt2":
        assert untrained.config.num_key_value_heads == 2  # n_kv_head reached the config

    # train, and an interrupted run resumed from its checkpoint ends bit-identical
    model = train_tiny(arch, tok, tokens, tmp_path / "ref")
    moved = [
        k for k, v in untrained.state_dict().items() if not torch.equal(v, model.state_dict()[k])
    ]
    assert moved, "training changed no weight"
    with pytest.raises(Crash):
        train_tiny(arch, tok, tokens, tmp_path / "ckpt", [CrashAt(3)])
    resumed = train_tiny(arch, tok, tokens, tmp_path / "ckpt")
    for k, v in model.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k

    # export: parity checked by the export itself, GGUF where this arch is written
    model.eval()
    save_model(model, tokenizer_dir, tmp_path / "trained")
    gguf = "f32" if arch in GGUF_ARCHS else "none"
    diffs = export(
        tmp_path / "trained", tmp_path / "export", None, False, CONTEXT, 0, 1e-5,
        ModelCard("---\n---\n"), gguf=gguf,
    )  # fmt: skip
    assert diffs["safetensors"] <= 1e-5
    if arch in GGUF_ARCHS:
        assert (tmp_path / "export" / "codexlm-f32.gguf").is_file() and diffs["gguf"] < 1e-4
    else:
        assert arch in arch_unsupported(arch) and "gguf" not in diffs

    # what a user loads: the same class, the same logits, bit for bit
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "export", dtype=torch.float32)
    assert type(reloaded) is type(model)
    ids = torch.tensor(tokens[1][: 2 * CONTEXT].astype(np.int64)).view(2, CONTEXT)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, reloaded.eval()(input_ids=ids).logits)

    # LoRA finds the arch's projections: adapters on every block, only they train
    lora = apply_lora(reloaded, 4, 8.0, 0.0, "auto")
    adapted = {n.split(".lora_A")[0] for n, _ in lora.named_parameters() if ".lora_A" in n}
    assert len(adapted) >= 2 * 3  # at least attention in and out and the MLP, per layer
    trainable = {n for n, p in lora.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)


def weights_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


# The build of params.yaml's model block before model.arch took any model type (commit
# dd73e69), at vocabulary 4096 and seed 0: the new options' defaults must reproduce it.
BEFORE = {
    "llama": (
        # pragma: allowlist nextline secret
        "eb5a9c0673ac356703eee7e250a69a11b80c807adcaaa887c910f1072e269c9b",
        {
            "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 0,
            "eos_token_id": 0, "head_dim": 32, "hidden_act": "silu", "hidden_size": 128,
            "initializer_range": 0.02, "intermediate_size": 384,
            "max_position_embeddings": 128, "mlp_bias": False, "model_type": "llama",
            "num_attention_heads": 4, "num_hidden_layers": 4, "num_key_value_heads": 4,
            "pad_token_id": 1, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
            "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
            "tie_word_embeddings": True, "use_cache": True, "vocab_size": 4096,
        },
    ),
    "gpt2": (
        # pragma: allowlist nextline secret
        "58cc842996435ac5bca472ae3cd4c252baec7de6fa9b0ccb076b7d316f2df796",
        {
            "activation_function": "gelu_new", "attn_pdrop": 0.0, "embd_pdrop": 0.0,
            "n_embd": 128, "n_head": 4, "n_inner": None, "n_layer": 4, "n_positions": 128,
            "resid_pdrop": 0.0, "tie_word_embeddings": True, "vocab_size": 4096,
        },
    ),
}  # fmt: skip


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_default_build_is_unchanged(arch: str) -> None:
    digest, config = BEFORE[arch]
    model = build_model(model_args(arch=arch), 4096, 0, 1, 0)
    got = model.config.to_diff_dict()
    assert {k: got.get(k) for k in config} == config
    if arch == "llama":  # every key, so a new one (an option's side effect) is seen too
        assert set(got) - {"transformers_version"} == set(config)
    assert weights_digest(model) == digest


def test_options_reach_the_config() -> None:
    model = build_model(
        model_args(arch="qwen3", n_kv_head=1, ffn_mult=4.0, activation="relu2",
                   tie_embeddings=False), 300, 0, 1, 0,
    )  # fmt: skip
    cfg = model.config
    assert (cfg.num_key_value_heads, cfg.intermediate_size, cfg.hidden_act) == (1, 512, "relu2")
    assert cfg.head_dim == 32 and not cfg.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()
    gemma = build_model(model_args(arch="gemma3_text", logit_softcap=30.0), 300, 0, 1, 0)
    assert gemma.config.final_logit_softcapping == 30.0
    with torch.no_grad():
        for p in gemma.parameters():
            p.normal_(0, 1.0)
        assert float(gemma(input_ids=torch.zeros(1, 4, dtype=torch.long)).logits.abs().max()) <= 30
    gpt2 = build_model(model_args(arch="gpt2", ffn_mult=2.0, activation="relu2"), 300, 0, 1, 0)
    assert gpt2.config.n_inner == 256 and gpt2.config.activation_function == "relu2"


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"arch": "gpt2", "n_kv_head": 2}, r"model\.n_kv_head: gpt2 has no such option"),
        ({"arch": "llama", "logit_softcap": 30.0}, r"model\.logit_softcap: llama has no such"),
        ({"arch": "t5"}, r"model\.arch: 't5' is not a transformers causal-LM model type"),
        ({"arch": "llama", "n_kv_head": 3}, r"model\.n_kv_head: 3 does not divide model\.n_head"),
        ({"activation": "swish9"}, r"model\.activation: 'swish9' is not one of transformers'"),
        ({"ffn_mult": 0.0}, r"model\.ffn_mult: must be 'auto' or a multiple"),
        ({"arch": "qwen3", "n_head": 4, "d_model": 36}, r"qwen3's rotary embeddings need an even"),
    ],
)
def test_options_an_arch_lacks_are_refused(changes: dict, message: str) -> None:
    """One line naming the key (and the arch), from the params check `make repro` runs first
    (stages/check_params.py: params.parse, then model.check_arch for what needs transformers)."""
    p = default_params()
    p["model"].update(changes)
    with pytest.raises(UserError, match=message) as e:
        check_arch(params.parse(p).model)
    assert "\n" not in str(e.value)


def test_export_stage_says_when_no_gguf_is_written() -> None:
    line = arch_unsupported("olmo2")
    assert line is not None and "olmo2" in line and "\n" not in line
    assert arch_unsupported("qwen3") is None and arch_unsupported("mistral") is None
    # a model type llama.cpp does not have at all is named too
    assert "bloom" in arch_unsupported("bloom")


def test_export_stage_skips_the_gguf_in_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    """export.check_gguf on an olmo2: export.gguf left on, no GGUF, one line, no error."""
    trained = tmp_path / "models" / "trained"
    trained.mkdir(parents=True)
    (trained / "config.json").write_text(json.dumps({"model_type": "olmo2"}))
    (tmp_path / "corpus").symlink_to(ROOT / "corpus")  # the default data.source
    monkeypatch.chdir(tmp_path)
    p = params.parse(default_params())
    assert p.export.gguf == "f16"
    assert check_gguf(p.export.gguf, trained, trained) == "none"
    out = capsys.readouterr().out.strip()
    assert out.startswith("export: no GGUF written: model type 'olmo2'") and "\n" not in out
    (trained / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (trained / "tokenizer.json").write_text(json.dumps({"model": {"type": "Unigram"}}))
    with pytest.raises(UserError, match=r"export\.gguf: cannot write a tokenizer"):
        check_gguf(p.export.gguf, trained, trained)  # a misread tokenizer is still refused
