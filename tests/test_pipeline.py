"""End to end: `dvc repro` with tiny params in a copy of the repository, every output checked."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import run


def tsv_steps(path: Path) -> list[int]:
    with path.open(newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f, delimiter="\t")]


def test_prepared_data(built: Path) -> None:
    stats = json.loads((built / "data/prepared/stats.json").read_text())
    for split in ("train", "val", "test"):
        table = pq.read_table(built / f"data/prepared/{split}.parquet")
        assert table.num_rows == stats["documents"][split] > 0
        assert sum(len(t.encode()) for t in table["text"].to_pylist()) == stats["bytes"][split]


def test_tokens_and_tokenizer(built: Path) -> None:
    import numpy as np
    from transformers import AutoTokenizer

    meta = json.loads((built / "data/tokens/meta.json").read_text())
    tok = AutoTokenizer.from_pretrained(built / "models/tokenizer")
    assert len(tok) == meta["vocab_size"] == 300
    for split in ("train", "val", "test"):
        ids = np.fromfile(built / f"data/tokens/{split}.bin", dtype=meta["dtype"])
        assert len(ids) == meta["tokens"][split]
        assert ids[-1] == meta["eot_id"]
        texts = pq.read_table(built / f"data/prepared/{split}.parquet")["text"].to_pylist()
        assert tok.decode(ids.tolist(), skip_special_tokens=True) == "".join(texts)


def test_train_outputs(built: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(built / "models/trained")
    assert model.config.model_type == "llama"
    assert model.config.tie_word_embeddings
    assert (built / "models/trained/model.safetensors").is_file()
    ckpts = sorted(p.name for p in (built / "models/checkpoints").iterdir())
    assert ckpts == ["step-00000004", "step-00000008"]
    summary = json.loads((built / "reports/train/metrics.json").read_text())
    assert summary["step"] == 8
    metrics = built / "reports/train/plots/metrics"
    assert tsv_steps(metrics / "train/loss.tsv") == [2, 4, 6, 8]
    assert tsv_steps(metrics / "val/loss.tsv") == [0, 4, 8]
    assert tsv_steps(metrics / "lr.tsv") == [2, 4, 6, 8]


def test_evaluate_outputs(built: Path) -> None:
    m = json.loads((built / "reports/evaluate/metrics.json").read_text())
    assert m["test"]["perplexity"] == pytest.approx(math.exp(m["test"]["loss"]), rel=1e-6)
    assert 0 <= m["test"]["accuracy"] <= 1
    assert m["test"]["bits_per_byte"] > 0 and m["baseline"]["xz_bits_per_byte"] > 0
    assert m["val"]["loss"] > 0 and m["train"]["tokens_per_s"] > 0
    details = json.loads((built / "reports/evaluate/details.json").read_text())
    for split in ("test", "val"):
        s = details[split]
        assert s["perplexity"] == pytest.approx(math.exp(s["loss"]), rel=1e-6)
        assert s["bits_per_byte"] > 0 and s["xz_bits_per_byte"] > 0
    out = built / "reports/evaluate"
    for name in ("samples.md", "report.md", "loss_curves.png", "loss_by_position.png"):
        assert (out / name).stat().st_size > 0
    assert "def add(a, b):" in (out / "samples.md").read_text()
    assert "| test |" in (out / "report.md").read_text()


def test_export_loads_and_generates(built: Path) -> None:
    code = (
        "from transformers import pipeline; "
        "print(pipeline('text-generation', model='models/export')('def add(a, b):', "
        "max_new_tokens=5)[0]['generated_text'])"
    )
    proc = run(["python", "-c", code], built)
    assert proc.stdout.startswith("def add(a, b):")
    card = (built / "models/export/README.md").read_text()
    assert "bits_per_byte" in card and "data/tokens" in card
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json"):
        assert (built / "models/export" / name).is_file()


# Same params, same outputs (a clean clone's run against this one's lock, byte for byte):
# tests/test_lock.py::test_verify_lock_names_what_the_code_does_not_reproduce


def test_repro_is_idempotent(built: Path) -> None:
    assert "up to date" in run(["dvc", "status"], built).stdout
    again = run(["dvc", "repro"], built).stdout
    assert "Running stage" not in again
