"""GGUF export: the model and tokenizer in llama.cpp's file format, written with the `gguf`
package (llama.cpp's own Python writer), checked by transformers' independent GGUF reader.

Written directly rather than through llama.cpp's `convert_hf_to_gguf.py`: that script is not
on the package index, and it identifies a BPE pre-tokenizer by hashing its output on a fixed
string, which no newly trained vocabulary matches. Ours is GPT-2's byte-level pre-tokenizer
(same regex, no prefix space), which llama.cpp knows as `gpt-2`; the layout below (tensor
names from `gguf.TensorNameMap`, llama's rotary q/k permutation, gpt2's transposed Conv1D
weights, padded vocabulary rows as unused tokens) is the converter's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf
import torch
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from codexlm import chat

QUANT_TYPES = {
    "f32": gguf.GGMLQuantizationType.F32,
    "f16": gguf.GGMLQuantizationType.F16,
    "q8_0": gguf.GGMLQuantizationType.Q8_0,
}
FILE_TYPES = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
}
# Largest |logit difference| allowed between the GGUF, read back by transformers, and the
# model it was written from (fp32 logits of a few nats): f32 is the same numbers, f16
# rounds each weight to 11 significant bits, q8_0 to 8 bits per block of 32 weights.
TOLERANCE = {"f32": 1e-4, "f16": 5e-2, "q8_0": 5e-1}
# Model types written, and the llama.cpp architecture each is written as (mistral as llama,
# as llama.cpp's converter does). Left out: those transformers' GGUF reader cannot read back
# (olmo2), so the parity check could not run, and gemma3_text (see NOT_WRITTEN).
ARCHS = {
    "llama": gguf.MODEL_ARCH.LLAMA,
    "mistral": gguf.MODEL_ARCH.LLAMA,
    "gpt2": gguf.MODEL_ARCH.GPT2,
    "qwen3": gguf.MODEL_ARCH.QWEN3,
    "phi3": gguf.MODEL_ARCH.PHI3,
}
# Why a model type llama.cpp knows is not written here: said in the export's one line
NOT_WRITTEN = {
    "olmo2": "transformers' GGUF reader has no olmo2, so the file could not be checked",
    "gemma3_text": "not yet mapped here (norm offsets, local/global rope, attention scale)",
}
# Architectures whose q/k rows HF stores as two rotary halves and llama.cpp interleaves
PERMUTED_QK = frozenset({"llama", "mistral"})


class GGUFError(Exception):
    """The GGUF cannot be written (unsupported model or tokenizer) or does not check out."""


def file_name(name: str, dtype: str) -> str:
    return f"{name}-{dtype}.gguf"


def unsupported(model_type: str, tokenizer_json: dict[str, Any]) -> str | None:
    """Why this model and tokenizer cannot be written as GGUF here, or None if they can."""
    reason = arch_unsupported(model_type)
    if reason is not None:
        return reason
    model = tokenizer_json.get("model") or {}
    pre = tokenizer_json.get("pre_tokenizer") or {}
    if (
        model.get("type") != "BPE"
        or model.get("byte_fallback")
        or tokenizer_json.get("normalizer") is not None
        or pre.get("type") != "ByteLevel"
        or pre.get("add_prefix_space")
        or not pre.get("use_regex", True)
    ):
        # llama.cpp would have to be told another pre-tokenizer: refuse rather than guess
        return "a tokenizer that is not GPT-2's byte-level BPE (pre-tokenizer `gpt-2`)"
    return None


def arch_unsupported(model_type: str) -> str | None:
    """Why this model type is not written as GGUF here, or None if it is."""
    if model_type in ARCHS:
        return None
    why = NOT_WRITTEN.get(model_type, "not mapped to a llama.cpp architecture here")
    return f"model type {model_type!r} ({why}; GGUF export knows {', '.join(ARCHS)})"


def _vocab(tok: PreTrainedTokenizerBase, n_vocab: int) -> tuple[list[str], list[int]]:
    """Every id's token text and type, the converter's way: added special tokens are
    CONTROL, other added tokens USER_DEFINED, rows past the tokenizer UNUSED padding."""
    by_id = {i: t for t, i in tok.get_vocab().items()}
    added = tok.added_tokens_decoder
    tokens, types = [], []
    for i in range(n_vocab):
        if i in added:
            tokens.append(added[i].content)
            types.append(
                gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED
            )
        elif i in by_id:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
        else:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
    return tokens, types


def _permute_qk(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF llama stores q/k rows as two rotary halves per head; GGUF interleaves them."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _tensors(model: PreTrainedModel) -> dict[str, torch.Tensor]:
    """The state dict as llama.cpp lays it out, under HF names (tied heads left out)."""
    cfg = model.config
    out = {}
    for name, t in model.state_dict().items():
        t = t.detach().float().cpu()
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue  # llama.cpp reads the head from token_embd when output.weight is absent
        if cfg.model_type == "gpt2":
            if name.endswith((".attn.bias", ".attn.masked_bias")):
                continue  # causal-mask buffers, not weights
            if name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")):
                t = t.T  # Conv1D keeps (in, out); GGUF wants (out, in) like a Linear
        if cfg.model_type in PERMUTED_QK:
            if name.endswith("self_attn.q_proj.weight"):
                t = _permute_qk(t, cfg.num_attention_heads)
            elif name.endswith("self_attn.k_proj.weight"):
                t = _permute_qk(t, cfg.num_key_value_heads)
        out[name] = t
    return out


def _hparams(w: gguf.GGUFWriter, cfg: Any) -> None:
    if cfg.model_type != "gpt2":
        kind = cfg.model_type
        if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
            raise GGUFError(f"{kind} with attention or MLP biases: not written as GGUF here")
        rope = getattr(cfg, "rope_parameters", None) or {}
        if rope.get("rope_type", "default") != "default":
            raise GGUFError(f"{kind} with rope_type {rope['rope_type']!r}: not written as GGUF")
        if (
            kind == "mistral"
            and (cfg.sliding_window or 0)
            and cfg.sliding_window < (cfg.max_position_embeddings)
        ):
            # llama.cpp runs mistral as llama: no sliding window
            raise GGUFError("mistral with a sliding window shorter than its context: not GGUF")
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        w.add_context_length(cfg.max_position_embeddings)
        w.add_embedding_length(cfg.hidden_size)
        w.add_block_count(cfg.num_hidden_layers)
        w.add_feed_forward_length(cfg.intermediate_size)
        w.add_head_count(cfg.num_attention_heads)
        w.add_head_count_kv(cfg.num_key_value_heads)
        w.add_rope_dimension_count(head_dim)
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
        w.add_rope_freq_base(float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))))
        w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
        w.add_vocab_size(cfg.vocab_size)
    else:
        w.add_context_length(cfg.n_positions)
        w.add_embedding_length(cfg.n_embd)
        w.add_block_count(cfg.n_layer)
        w.add_feed_forward_length(cfg.n_inner or 4 * cfg.n_embd)
        w.add_head_count(cfg.n_head)
        w.add_layer_norm_eps(cfg.layer_norm_epsilon)


def write_gguf(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    folder: Path,
    out: Path,
    dtype: str,
    name: str,
) -> None:
    """Write `model` and its tokenizer to the GGUF file `out`. `folder` holds the export's
    tokenizer files and, if written, its model card, read for the general.* metadata."""
    cfg = model.config
    tokenizer_json = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    reason = unsupported(cfg.model_type, tokenizer_json)
    if reason is not None:
        raise GGUFError(f"cannot write {reason} as GGUF")
    arch = ARCHS[cfg.model_type]
    n_vocab = model.get_input_embeddings().weight.shape[0]
    writer = gguf.GGUFWriter(out, gguf.MODEL_ARCH_NAMES[arch])
    # general.*: as llama.cpp's converter fills them, from the model card (licence, tags,
    # languages, datasets, base model); the name given, or tools fall back to the file name
    writer.add_type(gguf.GGUFType.MODEL)
    n_params = sum(p.numel() for p in model.parameters())
    meta = gguf.Metadata.load(None, folder, name, n_params)
    # its heuristics would also parse the folder's name (a temporary one while exporting)
    # into a version and a fine-tune label: the name is given, those are not known
    meta.basename = meta.finetune = meta.version = None
    if meta.size_label is None:
        meta.size_label = gguf.size_label(n_params, 0, 0, 0)
    meta.set_gguf_meta_model(writer)
    writer.add_file_type(FILE_TYPES[dtype])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _hparams(writer, cfg)

    tokens, types = _vocab(tok, n_vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=n_vocab)
    # the tokenizer adds no BOS (tokenizer.json has no post-processor): say so, or llama.cpp
    # falls back to its own default for BPE vocabularies
    special.add_special_token.setdefault("bos", False)
    special.add_special_token.setdefault("eos", False)
    special.add_to_gguf(writer, quiet=True)  # with tokenizer_config.json's chat_template
    if tok.chat_template:  # llama.cpp's chat mode ends a turn at this token
        writer.add_eot_token_id(tok.convert_tokens_to_ids(chat.end_of_turn(tok)))

    names = gguf.get_tensor_name_map(arch, cfg.num_hidden_layers)
    qtype = QUANT_TYPES[dtype]
    for hf_name, t in _tensors(model).items():
        new_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            raise GGUFError(f"no GGUF name for tensor {hf_name}")
        data = t.numpy()
        # the converter's rule: 1-d tensors (norms, biases) and rows that do not split into
        # q8_0 blocks of 32 stay f32
        tensor_type = qtype
        if data.ndim == 1 or (qtype == gguf.GGMLQuantizationType.Q8_0 and data.shape[-1] % 32 != 0):
            tensor_type = gguf.GGMLQuantizationType.F32
        writer.add_tensor(new_name, gguf.quants.quantize(data, tensor_type), raw_dtype=tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def load_gguf(folder: Path, file: str) -> PreTrainedModel:
    """The GGUF as transformers' own reader dequantizes it, config read from the file."""
    reader = gguf.GGUFReader(folder / file)
    arch = reader.fields["general.architecture"].contents()
    overrides = {}
    if arch == "gpt2":
        # transformers maps gpt2.context_length to `n_ctx`, which GPT2Config no longer reads
        # (it would build 1024 position rows and refuse the file's): pass it under its name
        overrides["n_positions"] = reader.fields["gpt2.context_length"].contents()
    if arch == "qwen3":
        # its reader skips attention.key_length, and Qwen3Config's head_dim defaults to 128
        overrides["head_dim"] = reader.fields["qwen3.attention.key_length"].contents()
    return AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=file, trust_remote_code=False, dtype=torch.float32, **overrides
    ).eval()
