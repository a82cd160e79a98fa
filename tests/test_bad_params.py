"""Params that only make sense against files: a missing or wrong model.init, a context the
checkpoint or the data cannot fill. Each: one line naming the key, exit code 2, no work."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, default_params, fake_checkpoint, run_script


def stage(tmp_path: Path, name: str, params: dict) -> tuple[int, str]:
    if not (tmp_path / "stages").exists():
        shutil.copytree(ROOT / "stages", tmp_path / "stages")
        shutil.copy(ROOT / "versions.yaml", tmp_path)  # what every stage checks
        (tmp_path / "corpus").symlink_to(ROOT / "corpus")  # the default data.source
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = run_script(f"stages/{name}_stage.py", tmp_path)
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return proc.returncode, lines[0]


def fake_model(path: Path, **config) -> Path:
    return fake_checkpoint(path, **config)


@pytest.mark.parametrize(
    ("init", "expected"),
    [
        ("does/not/exist", "is not 'scratch' or a folder"),
        ("stages", "no config.json"),
    ],
)
@pytest.mark.parametrize("name", ["prepare", "tokenize", "train"])
def test_model_init_must_be_a_model_folder(tmp_path, name, init, expected) -> None:
    p = default_params()
    p["model"]["init"] = init
    code, line = stage(tmp_path, name, p)
    assert code == 2 and line.startswith("error:") and "model.init" in line and expected in line
    assert not (tmp_path / "data").exists() and not (tmp_path / "models").exists()


def test_context_longer_than_the_checkpoint_supports(tmp_path) -> None:
    p = default_params()
    p["model"]["init"] = str(fake_model(tmp_path / "base", max_position_embeddings=64))
    p["model"]["context"] = 128
    code, line = stage(tmp_path / "run", "prepare", p)
    assert code == 2 and "model.context" in line and "(64)" in line
    assert not (tmp_path / "run" / "data").exists()


def test_context_longer_than_the_data(tmp_path) -> None:
    """The token files are too short for one window: the train stage refuses before training."""
    import numpy as np

    tokens = tmp_path / "data" / "tokens"
    tokens.mkdir(parents=True)
    counts = {"train": 50, "val": 10, "test": 10}
    for split, n in counts.items():
        np.arange(n, dtype=np.uint16).tofile(tokens / f"{split}.bin")
    meta = {"dtype": "uint16", "vocab_size": 300, "eot_id": 0, "pad_id": 1, "tokens": counts}
    (tokens / "meta.json").write_text(json.dumps(meta))
    p = default_params()
    code, line = stage(tmp_path, "train", p)
    assert code == 2 and "model.context" in line and "train split has 50" in line
    assert not (tmp_path / "models").exists() and not (tmp_path / "reports").exists()


def test_nproc_must_match_a_hand_started_torchrun(tmp_path, monkeypatch) -> None:
    """Under a torchrun started by hand (several nodes), train.nproc must be the total
    process count: it sets the global batch that checkpoints are matched on."""
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "16")
    p = default_params()
    p["train"]["nproc"] = 8
    code, line = stage(tmp_path, "train", p)
    assert code == 2 and "train.nproc: 8" in line and "16 processes" in line
    assert not (tmp_path / "models").exists() and not (tmp_path / "reports").exists()
