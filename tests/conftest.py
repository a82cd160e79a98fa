"""Shared fixtures: the repository's own params, made tiny, and a scratch copy of the repo."""

from __future__ import annotations

import copy
import json
import os
import runpy
import shutil
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import numpy as np
import pytest
import yaml
from filelock import FileLock
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


def run_script(script: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run a stage script as `python <script>` in cwd, in a forked child of this process:
    its own process, exit code, cwd, signals and stdio, as a subprocess would be, without
    importing torch and transformers again (~8 s a process on this project's 2 cores, for
    the scores of one-line-error tests that stop before any work). Whatever the script
    imports and this process has not, the child imports as a fresh interpreter would."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            code = 1
            try:
                os.chdir(cwd)
                os.dup2(out.fileno(), 1)
                os.dup2(err.fileno(), 2)
                # the streams a fresh interpreter would have, on the redirected descriptors
                sys.stdout = open(1, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
                sys.stderr = open(2, "w", errors="backslashreplace", closefd=False)  # noqa: SIM115
                sys.argv = [script]
                runpy.run_path(script, run_name="__main__")
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
                if not isinstance(e.code, int | None):
                    print(e.code, file=sys.stderr)
            except BaseException:
                traceback.print_exc()  # what the interpreter prints for an uncaught exception
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(
            [sys.executable, script],
            os.waitstatus_to_exitcode(status),
            out.read().decode("utf-8", "replace"),
            err.read().decode("utf-8", "replace"),
        )


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
def built(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    """One `dvc repro` with tiny params, shared by the tests that inspect its outputs: built
    once for the whole run, the pytest-xdist workers included (the first to need it builds
    it under a lock; the others wait and reuse it). Tests copy it before changing it."""
    base = tmp_path_factory.getbasetemp()
    tmp = (base.parent if worker_id != "master" else base) / "e2e"
    repo = tmp / "repo"
    tmp.mkdir(exist_ok=True)
    with FileLock(str(tmp / "lock")):
        if not (tmp / "done").exists():
            shutil.rmtree(repo, ignore_errors=True)  # a worker's failed attempt
            corpus = tmp / "corpus"
            shutil.rmtree(corpus, ignore_errors=True)
            shutil.copytree(
                ROOT / "src" / "codexlm", corpus, ignore=shutil.ignore_patterns("__pycache__")
            )
            copy_repo(repo, tiny_params(str(corpus)))
            proc = run(["dvc", "repro"], repo)
            for stage in ("prepare", "tokenize", "train", "evaluate", "export", "codeeval"):
                assert f"Running stage '{stage}'" in proc.stdout
            (tmp / "done").touch()
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


# The files with the longest end-to-end runs, longest first (CPU seconds measured on this
# project's 2-core machine: docs/development.md). pytest-xdist (`--dist loadfile`) hands out
# whole files in collection order, so these go first and the two workers finish together
# instead of one of them running a long file alone at the end.
LONGEST_FIRST = (
    "test_remote.py",
    "test_distributed.py",
    "test_finetune.py",
    "test_lock.py",
    "test_bench.py",
    "test_kill.py",
    "test_experiments.py",
    "test_determinism.py",
    "test_loss.py",
    "test_provenance.py",
    "test_pipeline.py",
    "test_evaluate.py",
    "test_scrub_corpus.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept
