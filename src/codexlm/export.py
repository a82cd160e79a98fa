"""Hugging Face export: a folder `AutoModelForCausalLM.from_pretrained` loads, checked by
reloading it and comparing logits with the trained model, plus a model card."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedTokenizerBase,
)

from codexlm.atomic import replace_dir


class ParityError(Exception):
    """The export does not reproduce the trained model's logits."""


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


def parity_batch(vocab_size: int, context: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (2, min(context, 64)), generator=g)


@torch.no_grad()
def max_logit_diff(a: torch.nn.Module, b: torch.nn.Module, batch: torch.Tensor) -> float:
    return float((a(input_ids=batch).logits - b(input_ids=batch).logits).abs().max())


def model_card(info: dict[str, Any]) -> str:
    m = info["metrics"]
    test = m.get("test", {})
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "tags: [codexlm, causal-lm, code]",
        "---",
        "",
        f"# {info['name']}",
        "",
        "A causal language model trained by the codexlm DVC pipeline "
        "(prepare → tokenize → train → evaluate → export).",
        "",
        "## Use",
        "",
        "```python",
        "from transformers import pipeline",
        f"generate = pipeline('text-generation', model='{info['path']}')",
        "print(generate('def add(a, b):')[0]['generated_text'])",
        "```",
        "",
        "## Evaluation (test split)",
        "",
        "| metric | value |",
        "|---|---|",
        *[f"| {k} | {v:.4f} |" for k, v in test.items() if isinstance(v, float)],
        "",
        "## Data",
        "",
        f"Source: `{info['params']['data']['source']}`.",
        "",
        "```json",
        json.dumps(info["data_stats"], indent=2),
        "```",
        "",
        "## Params",
        "",
        "```json",
        json.dumps({k: info["params"][k] for k in ("seed", "model", "lora", "train")}, indent=2),
        "```",
        "",
        "## Provenance (dvc.lock hashes of the inputs)",
        "",
        *[f"- `{path}`: `{h}`" for path, h in info["lineage"].items()],
        "",
    ]
    return "\n".join(lines)


def export(
    trained: Path,
    out: Path,
    lora_base: str | None,
    merge_lora: bool,
    context: int,
    seed: int,
    atol: float,
    card_info: dict[str, Any],
) -> float:
    """Write `out` and return the max |logit difference| between export and trained model."""
    model, tok = load_trained(trained, lora_base)
    reference = model
    with replace_dir(out) as tmp:
        if lora_base is not None and merge_lora:
            # merge into a copy: `reference` stays the adapted model for the parity check
            merged = load_trained(trained, lora_base)[0].merge_and_unload()
            merged.save_pretrained(tmp, safe_serialization=True)
        else:
            model.save_pretrained(tmp, safe_serialization=True)
        tok.model_max_length = context
        tok.save_pretrained(tmp)
        GenerationConfig(
            max_new_tokens=64,
            do_sample=True,
            temperature=0.8,
            top_k=40,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
        ).save_pretrained(tmp)
        (tmp / "README.md").write_text(model_card(card_info), encoding="utf-8")

        reloaded = _reload(tmp, lora_base if (lora_base and not merge_lora) else None)
        vocab = reference.get_input_embeddings().weight.shape[0]
        diff = max_logit_diff(
            reference, reloaded, parity_batch(min(vocab, len(tok)), context, seed)
        )
        if not diff <= atol:
            raise ParityError(
                f"exported logits differ from the trained model's by {diff:.3g} (> {atol})"
            )
    return diff


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
    return PeftModel.from_pretrained(base, path).eval()


def lineage(lock_file: Path, paths: tuple[str, ...]) -> dict[str, str]:
    """The md5 DVC recorded for each of `paths` (stage outputs), in that order."""
    import yaml

    if not lock_file.is_file():
        return {}
    lock = yaml.safe_load(lock_file.read_text()) or {}
    recorded = {
        out["path"]: out.get("md5", "")
        for stage in (lock.get("stages") or {}).values()
        for out in stage.get("outs", [])
    }
    return {path: recorded[path] for path in paths if path in recorded}
