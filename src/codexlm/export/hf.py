"""Hugging Face export: a folder `AutoModelForCausalLM.from_pretrained` loads (and, if asked,
a GGUF for llama.cpp), each checked by reading it back with its own loader and comparing
logits with the trained model, plus the tokenizer and the model card."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from huggingface_hub import ModelCard
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
)

from codexlm import chat
from codexlm.atomic import replace_dir
from codexlm.errors import UserError
from codexlm.export.gguf import TOLERANCE as GGUF_TOLERANCE
from codexlm.export.gguf import GGUFError, load_gguf, write_gguf
from codexlm.export.gguf import arch_unsupported as gguf_arch_unsupported
from codexlm.export.gguf import file_name as gguf_file_name
from codexlm.export.gguf import unsupported as gguf_unsupported
from codexlm.model import load_trained
from codexlm.tokenizer import save_tokenizer


class ParityError(Exception):
    """The export does not reproduce the trained model's logits."""


def check_gguf(dtype: str, weights: Path, trained: Path) -> str:
    """The GGUF type to write for `export.gguf` = `dtype`: `dtype`, or "none" (said in one
    line) for a model type the GGUF export does not cover; refuses, before any work, a
    tokenizer llama.cpp would misread. `weights` holds the config (the base model under
    LoRA), `trained` the tokenizer."""
    if dtype == "none":
        return "none"
    model_type = json.loads((weights / "config.json").read_text())["model_type"]
    arch_reason = gguf_arch_unsupported(model_type)
    if arch_reason is not None:
        # not an error: export.gguf is on by default, and the Hugging Face folder is still
        # the export of any architecture
        print(f"export: no GGUF written: {arch_reason}")
        return "none"
    tokenizer = json.loads((trained / "tokenizer.json").read_text(encoding="utf-8"))
    reason = gguf_unsupported(model_type, tokenizer)
    if reason is not None:
        raise UserError(f"export.gguf: cannot write {reason} as GGUF; set export.gguf: none")
    return dtype


def parity_batch(vocab_size: int, context: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (2, min(context, 64)), generator=g)


@torch.no_grad()
def max_logit_diff(a: torch.nn.Module, b: torch.nn.Module, batch: torch.Tensor) -> float:
    return float((a(input_ids=batch).logits - b(input_ids=batch).logits).abs().max())


def export(
    trained: Path,
    out: Path,
    lora_base: str | None,
    merge_lora: bool,
    context: int,
    seed: int,
    atol: float,
    card: ModelCard,
    gguf: str = "none",
    gguf_name: str = "codexlm",
) -> dict[str, float]:
    """Write `out` (weights, portable tokenizer, generation config, `card` as README.md,
    and a GGUF unless `gguf` is "none"); return the max |logit difference| between each
    export, read back by its own loader, and the trained model."""
    model, tok = load_trained(trained, lora_base)
    reference = model
    diffs = {}
    with replace_dir(out) as tmp:
        if lora_base is not None and merge_lora:
            # merge into a copy: `reference` stays the adapted model for the parity check
            exported = load_trained(trained, lora_base)[0].merge_and_unload()
        else:
            exported = model
        exported.save_pretrained(tmp, safe_serialization=True)
        tok.model_max_length = context
        save_tokenizer(tok, tmp)
        # a chat model stops at its template's end-of-turn token as well as at end-of-text
        eos = [tok.eos_token_id]
        if tok.chat_template:
            eos.append(tok.convert_tokens_to_ids(chat.end_of_turn(tok)))
        GenerationConfig(
            max_new_tokens=64,
            do_sample=True,
            temperature=0.8,
            top_k=40,
            eos_token_id=eos if len(eos) > 1 else eos[0],
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
        ).save_pretrained(tmp)
        card.save(tmp / "README.md")

        vocab = reference.get_input_embeddings().weight.shape[0]
        batch = parity_batch(min(vocab, len(tok)), context, seed)
        reloaded = _reload(tmp, lora_base if (lora_base and not merge_lora) else None)
        diffs["safetensors"] = max_logit_diff(reference, reloaded, batch)
        if not diffs["safetensors"] <= atol:
            raise ParityError(
                f"exported logits differ from the trained model's by "
                f"{diffs['safetensors']:.3g} (> {atol})"
            )
        if gguf != "none":
            file = gguf_file_name(gguf_name, gguf)
            try:
                write_gguf(exported, tok, tmp, tmp / file, gguf, gguf_name)
            except GGUFError as e:
                raise ParityError(str(e)) from None
            diffs["gguf"] = max_logit_diff(reference, load_gguf(tmp, file), batch)
            if not diffs["gguf"] <= GGUF_TOLERANCE[gguf]:
                raise ParityError(
                    f"{file} read back by transformers differs from the trained model's "
                    f"logits by {diffs['gguf']:.3g} (> {GGUF_TOLERANCE[gguf]} for {gguf})"
                )
    return diffs


def _reload(path: Path, adapter_base: str | None) -> torch.nn.Module:
    """Load the export the way a user would."""
    AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    if adapter_base is None:
        return AutoModelForCausalLM.from_pretrained(
            path, trust_remote_code=False, dtype=torch.float32
        ).eval()
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(
        adapter_base, trust_remote_code=False, dtype=torch.float32
    )
    vocab = len(AutoTokenizer.from_pretrained(path, trust_remote_code=False))
    if base.get_input_embeddings().weight.shape[0] < vocab:  # the chat template's tokens
        base.resize_token_embeddings(vocab, pad_to_multiple_of=64)
    return PeftModel.from_pretrained(base, path).eval()
