"""The model card as huggingface_hub reads it back: licence, language, data, base model,
model-index with the test metrics; deterministic."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from conftest import default_params
from huggingface_hub import ModelCard

from codexlm.export.card import PROVENANCE, lineage, model_card, pipeline_card

METRICS = {
    "test": {"bits_per_byte": 1.7394082, "perplexity": 62.28, "loss": 4.13, "accuracy": 0.27},
    "val": {"loss": 3.67},
}


def info(**params_changes: dict) -> dict:
    p = default_params()
    for block, changes in params_changes.items():
        p[block].update(changes)
    return {
        "name": "codexlm",
        "license": p["export"]["license"],
        "params": p,
        "metrics": METRICS,
        "data_stats": {"documents": {"train": 3}},
        "lineage": {"data/tokens": "abc123.dir"},
        "gguf_file": "codexlm-f16.gguf",
    }


def reload(card: ModelCard, tmp_path: Path) -> ModelCard:
    card.save(tmp_path / "README.md")
    return ModelCard.load(tmp_path / "README.md")


def test_default_corpus_card_metadata_round_trips(tmp_path: Path) -> None:
    card = reload(model_card(info()), tmp_path)
    data = card.data
    # the Hub's licence list has no PSF id: `other` with its name and link
    assert data.license == "other" and data.license_name == "psf-2.0"
    assert data.license_link.startswith("https://docs.python.org/")
    assert data.language == ["code", "en"]
    assert data.datasets == ["cpython-3.11.7-lib"]  # the built-in snapshot
    assert data.base_model is None
    results = {r.metric_type: r for r in data.eval_results}
    assert results["bits_per_byte"].metric_value == 1.739408
    assert results["bits_per_byte"].dataset_split == "test"
    assert set(results) == {"bits_per_byte", "perplexity", "loss", "accuracy"}
    assert "`data/tokens`: `abc123.dir`" in card.text  # the lineage hashes are kept
    assert "llama-completion -m codexlm/codexlm-f16.gguf" in card.text
    assert "models/export" not in card.text  # no repository-relative path in the usage


def test_finetune_card_names_its_base_model(tmp_path: Path) -> None:
    base = "models/base"
    merged = reload(model_card(info(model={"init": base}, lora={"enabled": True})), tmp_path)
    assert merged.data.base_model == base
    assert merged.data.to_dict()["base_model_relation"] == "finetune"
    assert merged.data.library_name == "transformers"
    adapter = model_card(
        info(model={"init": base}, lora={"enabled": True}, export={"merge_lora": False})
    )
    assert adapter.data.to_dict()["base_model_relation"] == "adapter"
    assert adapter.data.library_name == "peft"
    assert "PeftModel.from_pretrained" in adapter.text


def test_license_param_overrides_the_corpus(tmp_path: Path) -> None:
    card = reload(model_card(info(export={"license": "apache-2.0"})), tmp_path)
    assert card.data.license == "apache-2.0" and card.data.license_name is None
    mine = model_card(info(data={"source": "/data/my-corpus/"}))
    assert mine.data.license == "unknown" and mine.data.datasets == ["my-corpus"]


def test_card_is_deterministic() -> None:
    assert str(model_card(info())) == str(model_card(info()))


def test_the_stage_card_reads_the_pipelines_files(tmp_path: Path) -> None:
    """pipeline_card (the export stage's card) is model_card of params.yaml as written,
    metrics.json, stats.json and the dvc.lock md5s of exactly the provenance outputs."""
    p = default_params()
    files = {
        "params_file": tmp_path / "params.yaml",
        "metrics_file": tmp_path / "metrics.json",
        "stats_file": tmp_path / "stats.json",
        "lock_file": tmp_path / "dvc.lock",
    }
    files["params_file"].write_text(yaml.safe_dump(p, sort_keys=False))
    files["metrics_file"].write_text(json.dumps(METRICS))
    files["stats_file"].write_text(json.dumps({"documents": {"train": 3}}))
    outs = [{"path": "data/tokens", "md5": "abc123.dir"}, {"path": "reports/train", "md5": "x"}]
    files["lock_file"].write_text(yaml.safe_dump({"stages": {"tokenize": {"outs": outs}}}))
    card = pipeline_card("codexlm", "auto", "codexlm-f16.gguf", **files)
    assert str(card) == str(model_card(info()))
    assert "reports/train" not in lineage(files["lock_file"], PROVENANCE)
    assert lineage(tmp_path / "absent.lock", PROVENANCE) == {}


def test_card_states_the_measured_reproducibility_of_docs(tmp_path: Path) -> None:
    """The card says what holds across CPUs with the figures docs/reproducibility.md measured:
    a card whose figures drift from the measurement's record fails here."""
    text = reload(model_card(info()), tmp_path).text
    assert "## Reproducing" in text and "make verify-lock" in text
    section = text.split("## Reproducing", 1)[1]
    docs = (Path(__file__).parents[1] / "docs" / "reproducibility.md").read_text()
    cited = re.findall(r"(\d+\.\d+)%", section.replace("5.6-5.9%", "5.6% 5.9%"))
    assert cited == ["5.6", "5.9", "0.07"]
    for figure in cited:
        assert f"{figure}%" in docs.replace("**", ""), figure
