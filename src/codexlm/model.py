"""Build a model from config or load a local checkpoint; wrap it with LoRA.

Models are plain Hugging Face `transformers` classes, so what we train is what
`AutoModelForCausalLM.from_pretrained` loads. Remote code is never trusted.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Protocol

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    LlamaConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from codexlm.atomic import replace_dir
from codexlm.errors import UserError


def padded_vocab(n: int, multiple: int = 64) -> int:
    """Round the vocabulary up: matmuls with a multiple of 64 columns run faster."""
    return -(-n // multiple) * multiple


class ModelArgs(Protocol):
    """What building a model reads of the `model` params block (`params.Model` has it)."""

    init: str
    arch: str
    n_layer: int
    n_head: int
    d_model: int
    context: int
    dropout: float


class LoraArgs(Protocol):
    enabled: bool
    r: int
    alpha: float
    dropout: float
    target_modules: str | list[str]


def build_model(
    cfg: ModelArgs, vocab_size: int, eos_id: int, pad_id: int, seed: int
) -> PreTrainedModel:
    """A freshly initialised llama or gpt2 with tied input/output embeddings."""
    arch, n_layer, n_head, d_model = cfg.arch, cfg.n_layer, cfg.n_head, cfg.d_model
    context, dropout = cfg.context, cfg.dropout
    common = dict(
        vocab_size=padded_vocab(vocab_size),
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        tie_word_embeddings=True,
    )
    if arch == "llama":
        config = LlamaConfig(
            hidden_size=d_model,
            # SwiGLU's three matrices at 8/3 x width cost what a 4x GELU MLP costs
            intermediate_size=padded_vocab(int(8 * d_model / 3), 64),
            num_hidden_layers=n_layer,
            num_attention_heads=n_head,
            num_key_value_heads=n_head,
            max_position_embeddings=context,
            attention_dropout=dropout,
            rms_norm_eps=1e-5,
            **common,
        )
    elif arch == "gpt2":
        config = GPT2Config(
            n_embd=d_model,
            n_layer=n_layer,
            n_head=n_head,
            n_positions=context,
            resid_pdrop=dropout,
            embd_pdrop=dropout,
            attn_pdrop=dropout,
            **common,
        )
    else:  # the params schema only lets these two through
        raise ValueError(f"unknown arch {arch!r}")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    return model


def load_model(path: Path) -> PreTrainedModel:
    """A local Hugging Face causal LM, in fp32 (training precision is autocast's business)."""
    if not (Path(path) / "config.json").is_file():
        raise UserError(f"model.init: {path} is not a Hugging Face model folder (no config.json)")
    try:
        AutoConfig.from_pretrained(path, trust_remote_code=False)
        return AutoModelForCausalLM.from_pretrained(
            path, trust_remote_code=False, dtype=torch.float32, attn_implementation="sdpa"
        )
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"model.init: cannot load {path}: {str(e).splitlines()[0]}") from None


def model_for(cfg: ModelArgs, lora: LoraArgs, tokens_meta: dict, seed: int) -> torch.nn.Module:
    """The model the train stage trains: built from `cfg` (`init: scratch`) or loaded from
    `cfg.init` (its embeddings grown to the tokenizer's size), wrapped with LoRA if enabled."""
    vocab = tokens_meta["vocab_size"]
    if cfg.init == "scratch":
        model = build_model(cfg, vocab, tokens_meta["eot_id"], tokens_meta["pad_id"], seed)
    else:
        model = load_model(Path(cfg.init))
        limit = context_limit(model)
        if limit is not None and cfg.context > limit:
            raise UserError(
                f"model.context: {cfg.context} exceeds what {cfg.init} supports ({limit})"
            )
        if model.get_input_embeddings().weight.shape[0] < vocab:
            # the tokenizer gained tokens the checkpoint has no embeddings for
            model.resize_token_embeddings(vocab, pad_to_multiple_of=64)
    if lora.enabled:
        model = apply_lora(model, lora.r, lora.alpha, lora.dropout, lora.target_modules)
    return model


def context_limit(model: PreTrainedModel) -> int | None:
    """The longest sequence the model's position embeddings support, if it has a limit."""
    cfg = model.config
    return getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)


def count_params(model: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def uses_dropout(model: torch.nn.Module) -> bool:
    """Whether training draws dropout masks: from a Dropout module (gpt2's, LoRA's) or from
    the attention's rate, which llama-like models keep as a float in their config."""
    if any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules()):
        return True
    return float(getattr(getattr(model, "config", None), "attention_dropout", 0.0) or 0.0) > 0


def lora_targets(model: PreTrainedModel) -> tuple[list[str], bool]:
    """LoRA target modules for an architecture, and whether its layers are Conv1D
    (gpt2 stores weights transposed, which peft must be told with fan_in_fan_out)."""
    kind = model.config.model_type
    if kind == "gpt2":
        return ["c_attn", "c_proj", "c_fc"], True
    names = {
        n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
    }
    wanted = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    found = [n for n in wanted if n in names]
    if not found:
        raise UserError(
            f"lora.target_modules: 'auto' knows no modules for model type {kind!r}; "
            f"list them (Linear layers: {', '.join(sorted(names))})"
        )
    return found, False


def apply_lora(
    model: PreTrainedModel, r: int, alpha: float, dropout: float, target_modules: list[str] | str
) -> torch.nn.Module:
    """Wrap with peft LoRA: only the adapters train; the base weights are frozen."""
    from peft import LoraConfig, get_peft_model

    if target_modules == "auto":
        targets, fan_in_fan_out = lora_targets(model)
    else:
        targets, fan_in_fan_out = list(target_modules), model.config.model_type == "gpt2"
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        fan_in_fan_out=fan_in_fan_out,
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, config)
    except ValueError as e:
        raise UserError(f"lora.target_modules: {str(e).splitlines()[0]}") from None


def save_model(model: torch.nn.Module, tokenizer_dir: Path, out: Path) -> None:
    """Write a Hugging Face folder (safetensors weights, config, tokenizer) atomically.

    Under LoRA this is the peft adapter folder (adapter_config.json names the base model).
    """
    with replace_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        for f in sorted(Path(tokenizer_dir).iterdir()):
            if f.is_file():
                shutil.copy2(f, tmp / f.name)


def load_trained(
    path: Path, lora_base: str | None = None
) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """The train stage's output: a full model, or a peft adapter on top of `lora_base`."""
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    if lora_base is not None:
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(
            lora_base, trust_remote_code=False, dtype=torch.float32
        )
        model = PeftModel.from_pretrained(base, path)
    else:
        model = AutoModelForCausalLM.from_pretrained(
            path, trust_remote_code=False, dtype=torch.float32
        )
    model.eval()
    return model, tok
