"""The exported model's card (README.md), written with huggingface_hub's ModelCard so the Hub
reads its metadata: licence, language, data, base model, and the test metrics as a
`model-index`. Deterministic: every value comes from params, metrics and hashes, none from
the clock, so the same params give the same card."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

# The standard library's sources are under the Python Software Foundation License, which
# the Hub's licence list has no id for: `other` with its name and text, as the Hub asks.
# Both the built-in snapshot (corpus/, whose LICENSE-PSF.txt it is) and `stdlib` are.
PSF_SOURCES = ("stdlib", "corpus/cpython-3.11.7-lib.tar.xz")
STDLIB_LICENSE = {
    "license": "other",
    "license_name": "psf-2.0",
    "license_link": "https://docs.python.org/3/license.html",
}
# metrics.json's test figures as model-index metrics: (key, Hub metric type, display name)
TEST_METRICS = (
    ("bits_per_byte", "bits_per_byte", "Bits per byte"),
    ("perplexity", "perplexity", "Perplexity"),
    ("loss", "loss", "Cross-entropy loss (nats/token)"),
    ("accuracy", "accuracy", "Next-token accuracy"),
)


def license_fields(license: str, source: str) -> dict[str, str]:
    """`export.license`: "auto" takes the corpus's (PSF-2.0 for the standard library and its
    built-in snapshot, `unknown` for a corpus of yours); anything else is the Hub licence id."""
    if license != "auto":
        return {"license": license}
    return dict(STDLIB_LICENSE) if source in PSF_SOURCES else {"license": "unknown"}


def dataset_name(source: str) -> str:
    if source == "stdlib":
        return "python-stdlib"
    if source == PSF_SOURCES[1]:
        return "cpython-3.11.7-lib"
    return source.rstrip("/").rsplit("/", 1)[-1]


def card_data(
    name: str,
    license: str,
    source: str,
    base_model: str | None,
    adapter: bool,
    test_metrics: dict[str, float],
) -> ModelCardData:
    data = dataset_name(source)
    results = [
        EvalResult(
            task_type="text-generation",
            task_name="Causal language modelling",
            dataset_type=data,
            dataset_name=data,
            dataset_split="test",
            metric_type=metric,
            metric_name=label,
            metric_value=round(float(test_metrics[key]), 6),
        )
        for key, metric, label in TEST_METRICS
        if key in test_metrics
    ]
    # `name` too: llama.cpp's GGUF tools take general.name from it
    extra: dict[str, Any] = {"name": name}
    if base_model is not None:
        extra["base_model"] = base_model
        extra["base_model_relation"] = "adapter" if adapter else "finetune"
    return ModelCardData(
        model_name=name,
        library_name="peft" if adapter else "transformers",
        pipeline_tag="text-generation",
        tags=["codexlm", "causal-lm", "code", "dvc"],
        language=["code", "en"],
        datasets=[data],
        eval_results=results or None,
        **license_fields(license, source),
        **extra,
    )


def usage(name: str, gguf_file: str | None, adapter: bool, base_model: str | None) -> list[str]:
    """Snippets that run wherever the folder is: its path is the one thing to fill in."""
    if adapter:
        lines = [
            "```python",
            "from peft import PeftModel",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f'folder = "{name}"  # the path of this folder',
            f'base = AutoModelForCausalLM.from_pretrained("{base_model}")  # the base model',
            "model = PeftModel.from_pretrained(base, folder)",
            "tok = AutoTokenizer.from_pretrained(folder)",
            "```",
        ]
        return lines
    lines = [
        "```python",
        "from transformers import pipeline",
        "",
        f'folder = "{name}"  # the path of this folder (or its Hub repo id)',
        'generate = pipeline("text-generation", model=folder)',
        'print(generate("def add(a, b):")[0]["generated_text"])',
        "```",
        "",
        "Batched generation pads on the left (the tokenizer's `padding_side`), so",
        "`tok(prompts, padding=True, return_tensors='pt')` goes straight to `model.generate`.",
        "Text such as `<|endoftext|>` inside a prompt is read as ordinary characters, as in",
        "training (`split_special_tokens`); end-of-text is `eos_token_id`.",
    ]
    if gguf_file is not None:
        lines += [
            "",
            "With llama.cpp (`llama-cli` with the same flags in builds before it became",
            "chat-only):",
            "",
            "```bash",
            f'llama-completion -m {name}/{gguf_file} -no-cnv -p "def add(a, b):" -n 64',
            "```",
        ]
    return lines


def chat_usage(name: str) -> list[str]:
    """The snippet of a model tuned on instruction data: messages in, the answer out, the
    prompt formatted by the chat template that training used (in tokenizer_config.json)."""
    return [
        "Chat with it: the tokenizer carries the chat template the model was tuned with, and",
        "generation stops at its end-of-turn token (`generation_config.eos_token_id`).",
        "",
        "```python",
        "from transformers import pipeline",
        "",
        f'chat = pipeline("text-generation", model="{name}")  # the path of this folder',
        'messages = [{"role": "user", "content": "Call `getcwd`."}]',
        'print(chat(messages, do_sample=False)[0]["generated_text"][-1]["content"])',
        "```",
        "",
    ]


def model_card(info: dict[str, Any]) -> ModelCard:
    """`info`: name, license (export.license), params (params.yaml as read), metrics
    (reports/evaluate/metrics.json), data_stats, lineage (dvc.lock hashes), gguf_file."""
    params = info["params"]
    init = params["model"]["init"]
    base_model = None if init == "scratch" else init
    adapter = bool(params["lora"]["enabled"]) and not params["export"]["merge_lora"]
    test = {k: v for k, v in info["metrics"].get("test", {}).items() if isinstance(v, float)}
    data = card_data(
        info["name"], info["license"], params["data"]["source"], base_model, adapter, test
    )
    body = [
        f"# {info['name']}",
        "",
        "A causal language model trained by the codexlm DVC pipeline "
        "(prepare → tokenize → train → evaluate → export)"
        + (f", fine-tuned from `{base_model}`." if base_model else "."),
        "",
        "## Use",
        "",
        *usage(info["name"], info.get("gguf_file"), adapter, base_model),
        "",
        *(chat_usage(info["name"]) if info["data_stats"].get("format", "text") != "text" else []),
        "## Evaluation (test split)",
        "",
        "| metric | value |",
        "|---|---|",
        *[f"| {k} | {v:.4f} |" for k, v in test.items()],
        "",
        "## Data",
        "",
        f"Source: `{params['data']['source']}`.",
        "",
        "```json",
        json.dumps(info["data_stats"], indent=2),
        "```",
        "",
        "## Params",
        "",
        "```json",
        json.dumps({k: params[k] for k in ("seed", "model", "lora", "train")}, indent=2),
        "```",
        "",
        "## Provenance (dvc.lock hashes of the inputs)",
        "",
        *[f"- `{path}`: `{h}`" for path, h in info["lineage"].items()],
        "",
        *REPRODUCING,
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body))


# The guarantee as measured (docs/reproducibility.md), not as hoped: the same on every host,
# so that the card, and the export, stay a function of the weights and the params.
REPRODUCING = [
    "## Reproducing",
    "",
    "The same code, params and data give byte-identical weights on one CPU, run to run. On",
    "another x86-64 CPU they agree to rounding, not to the bit (torch, MKL, oneDNN and",
    "inductor's generated code dispatch on the instruction set): measured between an Intel",
    "Xeon, an AMD EPYC and an AVX2-limited run, the largest relative difference of a weight",
    "tensor was 5.6-5.9% and the test metrics moved by at most 0.07%. On GPUs runs agree to",
    "rounding. `make verify-lock` in the codexlm repository says which holds on a machine.",
    "",
]


# What the model is a function of; not the checkpoints or the training log, whose wall-clock
# throughput would make the card, and so the export, differ run to run.
PROVENANCE = ("data/prepared", "data/tokens", "models/tokenizer", "models/trained")


def lineage(lock_file: Path, paths: tuple[str, ...]) -> dict[str, str]:
    """The md5 DVC recorded for each of `paths` (stage outputs), in that order."""
    if not lock_file.is_file():
        return {}
    lock = yaml.safe_load(lock_file.read_text()) or {}
    recorded = {
        out["path"]: out.get("md5", "")
        for stage in (lock.get("stages") or {}).values()
        for out in stage.get("outs", [])
    }
    return {path: recorded[path] for path in paths if path in recorded}


def pipeline_card(
    name: str,
    license: str,
    gguf_file: str | None,
    params_file: Path,
    metrics_file: Path,
    stats_file: Path,
    lock_file: Path,
) -> ModelCard:
    """The export stage's card: params.yaml as written, the evaluate stage's metrics.json,
    prepare's stats.json, and the dvc.lock hashes of what the model came from."""
    return model_card(
        {
            "name": name,
            "license": license,
            "params": yaml.safe_load(params_file.read_text()),
            "metrics": json.loads(metrics_file.read_text()),
            "data_stats": json.loads(stats_file.read_text()),
            "lineage": lineage(lock_file, PROVENANCE),
            "gguf_file": gguf_file,
        }
    )
