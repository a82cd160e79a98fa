"""Shared fixtures: the repository's own params, made tiny, and a scratch copy of the repo."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors.numpy import save_file

from codexlm import params as schema

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

# No test may reach a model hub: everything they need is built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The suite runs on two pytest-xdist workers: one thread each, or they thrash the two cores
# (the tiny test models gain nothing from more). Inherited by every stage subprocess.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def default_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def tiny_params(source: str) -> dict:
    """The default params shrunk to seconds of work on a small corpus."""
    p = copy.deepcopy(default_params())
    p["data"].update(source=source, min_chars=10, val_fraction=0.2, test_fraction=0.2)
    p["tokenizer"]["vocab_size"] = 300
    p["model"].update(n_layer=1, n_head=2, d_model=32, context=32)
    p["train"].update(
        steps=8,
        batch_size=4,
        warmup_steps=2,
        eval_every=4,
        eval_batches=2,
        log_every=2,
        checkpoint_every=4,
        compile=False,
    )
    p["evaluate"].update(batch_size=8, max_new_tokens=8)
    p["codeeval"].update(limit=1, max_new_tokens=8)  # one problem: the stage runs, briefly
    return p


def train_args(**overrides: object) -> schema.Train:
    """params.yaml's train block with overrides, validated as the train stage validates it."""
    return schema.Train.model_validate({**default_params()["train"], **overrides})


def model_args(**overrides: object) -> schema.Model:
    return schema.Model.model_validate({**default_params()["model"], **overrides})


def write_params(repo: Path, params: dict) -> None:
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture
def corpus_dir(tmp_path: Path) -> Path:
    """A small folder of real Python sources (this project's own library)."""
    dst = tmp_path / "corpus"
    shutil.copytree(ROOT / "src" / "codexlm", dst, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def run(cmd: list[str], cwd: Path, check: bool = True, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\n"
            f"stderr:\n{proc.stderr[-3000:]}"
        )
    return proc


@pytest.fixture
def repo(tmp_path: Path, corpus_dir: Path) -> Path:
    """A git copy of the working tree (committed or not) with tiny params, ready for dvc."""
    return copy_repo(tmp_path / "repo", tiny_params(str(corpus_dir)))


def copy_repo(dst: Path, params: dict) -> Path:
    """A fresh git repository holding the working tree (no outputs, no dvc.lock)."""
    ignore = shutil.ignore_patterns(
        ".venv",
        ".git",
        "data",
        "models",
        "reports",
        "__pycache__",
        ".pytest_cache",
        ".ruff_cache",
        "*.egg-info",
        "dvc.lock",
        "tmp",
        "cache",
    )
    shutil.copytree(ROOT, dst, ignore=ignore)
    write_params(dst, params)
    run(["git", "init", "-q"], dst)
    run(["git", "add", "-A"], dst)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], dst)
    return dst


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One `dvc repro` with tiny params, shared by the tests that inspect its outputs."""
    tmp = tmp_path_factory.mktemp("e2e")
    corpus = tmp / "corpus"
    shutil.copytree(ROOT / "src" / "codexlm", corpus, ignore=shutil.ignore_patterns("__pycache__"))
    repo = copy_repo(tmp / "repo", tiny_params(str(corpus)))
    proc = run(["dvc", "repro"], repo)
    for stage in ("prepare", "tokenize", "train", "evaluate", "export", "codeeval"):
        assert f"Running stage '{stage}'" in proc.stdout
    return repo


@pytest.fixture(scope="module")
def corpus_dir_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dst = tmp_path_factory.mktemp("corpus") / "corpus"
    shutil.copytree(ROOT / "src" / "codexlm", dst, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def fake_checkpoint(path: Path, **config) -> Path:
    """A folder that passes model.init's inspection (a config object and complete safetensors
    weights) without being a loadable model: for tests of params checks."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "llama", **config}))
    save_file({"w": np.zeros(4, dtype=np.float32)}, str(path / "model.safetensors"))
    return path
