"""Build a model from config or load a local checkpoint; wrap it with LoRA.

Models are plain Hugging Face `transformers` classes, so what we train is what
`AutoModelForCausalLM.from_pretrained` loads. Remote code is never trusted.
"""

from __future__ import annotations

import functools
import shutil
from pathlib import Path
from typing import Any, Protocol

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.activations import ACT2CLS
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

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
    # read with `_option`, which falls back to today's behaviour: bench/gpu_check.py's
    # hand-made block has none of them
    n_kv_head: int
    ffn_mult: str | float
    activation: str
    tie_embeddings: bool
    logit_softcap: float


class LoraArgs(Protocol):
    enabled: bool
    r: int
    alpha: float
    dropout: float
    target_modules: str | list[str]


# A from-scratch option and the config attribute it sets, for configs that use transformers'
# usual names (llama's); ARCH_KEYS lists the architectures that name them otherwise. An
# option whose attribute an architecture's config lacks (None here) is refused for it.
CONFIG_KEYS: dict[str, str | None] = {
    "n_kv_head": "num_key_value_heads",
    "ffn_mult": "intermediate_size",
    "activation": "hidden_act",
    "logit_softcap": "final_logit_softcapping",
    "dropout": "attention_dropout",
}
ARCH_KEYS: dict[str, dict[str, str | None]] = {
    "gpt2": {
        "n_kv_head": None,
        "ffn_mult": "n_inner",
        "activation": "activation_function",
        "dropout": "attn_pdrop",  # and resid_pdrop, embd_pdrop: model.build_model sets all
    },
    "gemma3_text": {"activation": "hidden_activation"},
    "gemma2": {"activation": "hidden_activation"},
}
# The option values that leave an architecture as transformers defines it (today's build)
OPTION_DEFAULTS: dict[str, Any] = {
    "n_kv_head": 0,
    "ffn_mult": "auto",
    "activation": "auto",
    "logit_softcap": 0.0,
    "dropout": 0.0,
}


def config_key(arch: str, option: str) -> str | None:
    return ARCH_KEYS.get(arch, {}).get(option, CONFIG_KEYS[option])


@functools.cache
def arch_defaults(arch: str) -> dict[str, Any] | None:
    """transformers' default config of a causal-LM model type as a dict, or None if it has
    none that builds without remote code."""
    if arch not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return None
    try:
        return AutoConfig.for_model(arch).to_dict()
    except (ValueError, KeyError, ImportError):
        return None


# Architectures whose MLP is gated (three matrices): "auto" width is 8/3 x d_model, which
# costs what a 4x two-matrix MLP costs. Others get 4x.
GATED_MLP = frozenset(
    {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "olmo", "olmo2"}
    | {"phi3", "granite", "cohere", "starcoder2_gated"}
)


def _option(cfg: ModelArgs, name: str) -> Any:
    """An option of the model block, or the value that keeps today's build when the block
    (one of bench's namespaces) does not have it."""
    fallback = {"tie_embeddings": True, **OPTION_DEFAULTS}
    return getattr(cfg, name, fallback[name])


def ffn_width(arch: str, d_model: int, ffn_mult: str | float) -> int:
    """The MLP's hidden width, rounded up to a multiple of 64 like the vocabulary."""
    mult = ffn_mult if ffn_mult != "auto" else (8 / 3 if arch in GATED_MLP else 4)
    return padded_vocab(int(mult * d_model), 64)


def check_arch(cfg: ModelArgs) -> None:
    """A from-scratch model block's arch exists and has each option set away from its
    default: one line naming the key and the arch, before any work (stages/check.py, and
    the train stage before it builds)."""
    if getattr(cfg, "init", "scratch") != "scratch":
        return
    defaults = arch_defaults(cfg.arch)
    if defaults is None:
        raise UserError(
            f"model.arch: {cfg.arch!r} is not a transformers causal-LM model type that builds "
            "from a config without remote code (e.g. llama, gpt2, qwen3, mistral, gemma3_text, "
            "olmo2, phi3)"
        )
    for option, default in OPTION_DEFAULTS.items():
        value = _option(cfg, option)
        key = config_key(cfg.arch, option)
        if value != default and (key is None or key not in defaults):
            raise UserError(
                f"model.{option}: {cfg.arch} has no such option (its config has no "
                f"{key or 'equivalent'}); set model.{option}: {default} or another model.arch"
            )
    activation = _option(cfg, "activation")
    if activation != "auto" and activation not in ACT2CLS:
        raise UserError(
            f"model.activation: {activation!r} is not one of transformers' activations "
            f"({', '.join(sorted(ACT2CLS))})"
        )


def model_config(cfg: ModelArgs, vocab_size: int, eos_id: int, pad_id: int) -> PretrainedConfig:
    """The transformers config of `cfg.arch` with the block's sizes and options: every
    option left at its default keeps the architecture's own (gpt2 and llama: today's)."""
    arch, d_model, n_head = cfg.arch, cfg.d_model, cfg.n_head
    kw: dict[str, Any] = dict(
        vocab_size=padded_vocab(vocab_size),
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        tie_word_embeddings=_option(cfg, "tie_embeddings"),
    )
    ffn_mult, act = _option(cfg, "ffn_mult"), _option(cfg, "activation")
    if arch == "gpt2":
        kw.update(n_embd=d_model, n_layer=cfg.n_layer, n_head=n_head, n_positions=cfg.context)
        kw.update(resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout)
        if ffn_mult != "auto":
            kw["n_inner"] = ffn_width(arch, d_model, ffn_mult)
        if act != "auto":
            kw["activation_function"] = act
        return GPT2Config(**kw)
    check_arch(cfg)
    defaults = arch_defaults(arch)
    assert defaults is not None  # check_arch refused it otherwise
    kw.update(
        hidden_size=d_model,
        num_hidden_layers=cfg.n_layer,
        num_attention_heads=n_head,
        max_position_embeddings=cfg.context,
    )
    optional = {
        "n_kv_head": _option(cfg, "n_kv_head") or n_head,
        "ffn_mult": ffn_width(arch, d_model, ffn_mult),
        "activation": act,
        "logit_softcap": _option(cfg, "logit_softcap") or None,
        "dropout": cfg.dropout,
    }
    for option, value in optional.items():
        key = config_key(arch, option)
        # what the arch lacks was refused at params time unless left at its default
        if key in defaults and value not in ("auto", None):
            kw[key] = value
    if "head_dim" in defaults:
        # qwen3, mistral and gemma default to 128 or 256 channels whatever the width
        kw["head_dim"] = d_model // n_head
    if "query_pre_attn_scalar" in defaults:
        kw["query_pre_attn_scalar"] = d_model // n_head  # gemma: scores scaled by 1/sqrt(head)
    if arch == "llama":
        kw["rms_norm_eps"] = 1e-5  # llama's build before model.arch took any model type
    return AutoConfig.for_model(arch, **kw)


def build_model(
    cfg: ModelArgs, vocab_size: int, eos_id: int, pad_id: int, seed: int
) -> PreTrainedModel:
    """A freshly initialised model of `cfg.arch` (input/output embeddings tied by default)."""
    config = model_config(cfg, vocab_size, eos_id, pad_id)
    torch.manual_seed(seed)
    try:
        return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    except ValueError:  # an architecture without an SDPA attention: its own (eager) one
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config)


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
        # tokens the tokenizer gained (the chat template's): their embedding rows (and the
        # tied head's) train with the adapters, or the model could never emit them
        added = tokens_meta.get("added_ids") or None
        model = apply_lora(model, lora.r, lora.alpha, lora.dropout, lora.target_modules, added)
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
    wanted += ["qkv_proj", "gate_up_proj"]  # phi3 fuses them
    found = [n for n in wanted if n in names]
    if not found:
        raise UserError(
            f"lora.target_modules: 'auto' knows no modules for model type {kind!r}; "
            f"list them (Linear layers: {', '.join(sorted(names))})"
        )
    return found, False


def apply_lora(
    model: PreTrainedModel,
    r: int,
    alpha: float,
    dropout: float,
    target_modules: list[str] | str,
    trainable_tokens: list[int] | None = None,
) -> torch.nn.Module:
    """Wrap with peft LoRA: only the adapters train; the base weights are frozen, except the
    embedding rows of `trainable_tokens` (peft's trainable tokens, tied head included)."""
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
        trainable_token_indices=trainable_tokens,
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
        if base.get_input_embeddings().weight.shape[0] < len(tok):
            base.resize_token_embeddings(len(tok), pad_to_multiple_of=64)  # as model_for did
        model = PeftModel.from_pretrained(base, path)
    else:
        model = AutoModelForCausalLM.from_pretrained(
            path, trust_remote_code=False, dtype=torch.float32
        )
    model.eval()
    return model, tok
