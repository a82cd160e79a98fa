"""Hostile input, second battery: every user mistake is one line on stderr naming the key or
file, exit code 2, no traceback and no output; or, for a bad document in a good corpus, the
document is dropped and counted by reason in stats.json.

Classes: params.yaml encoding and duplicate keys, non-finite and out-of-range numbers,
cross-field contradictions, ranges libraries impose (seed, rotary head size, gpt2 generation
length), unreadable model.init folders (config not an object, pickled or truncated weights),
corpus paths, file names and text that cannot be stored (undecodable names, lone surrogates,
NULs past the sniffed prefix, mixed encodings in a CSV, a misnamed .jsonl column), and a
failed `dvc repro` / `make repro`, which must not lose outputs without saying how to restore
them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from conftest import (
    ROOT,
    VENV_BIN,
    copy_repo,
    default_params,
    fake_checkpoint,
    model_args,
    run,
    run_script,
    tiny_params,
)

from codexlm.errors import restore_hint
from codexlm.evaluate import sample
from codexlm.model import build_model
from codexlm.tokenizer import train_bpe

PARAMS_TEXT = (ROOT / "params.yaml").read_text()


def stage(cwd: Path, name: str, params_text: str) -> tuple[int, str]:
    """Run stages/<name> (check_params.py, <stage>_stage.py) in cwd with this params.yaml;
    return (exit code, the one line)."""
    cwd.mkdir(parents=True, exist_ok=True)
    if not (cwd / "stages").exists():
        shutil.copytree(ROOT / "stages", cwd / "stages")
        shutil.copy(ROOT / "versions.yaml", cwd)  # what every stage checks
        (cwd / "corpus").symlink_to(ROOT / "corpus")  # the default data.source
    (cwd / "params.yaml").write_bytes(
        params_text.encode("utf-8", "surrogateescape")
        if isinstance(params_text, str)
        else params_text
    )
    proc = run_script(f"stages/{name}", cwd)
    out = proc.stderr + proc.stdout
    assert "Traceback" not in out, out
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith("error: "), line
    # no pydantic internals, no value repeated
    assert "literal[" not in line and "list[str]" not in line, line
    assert not re.search(r"\(got ([^)]*)\).*\(got \1\)", line), line
    assert not (cwd / "data").exists() and not (cwd / "models").exists()
    return proc.returncode, line


def edited(**changes: object) -> str:
    """params.yaml with dotted keys set, through YAML (so the rest stays the repository's)."""
    raw = default_params()
    for dotted, value in changes.items():
        *blocks, key = dotted.split("__")
        target = raw
        for b in blocks:
            target = target[b]
        target[key] = value
    return yaml.safe_dump(raw, sort_keys=False, allow_unicode=True)


def replaced(pattern: str, replacement: str) -> str:
    text, n = re.subn(pattern, replacement, PARAMS_TEXT, count=1, flags=re.M)
    assert n == 1, pattern
    return text


# ---------------------------------------------------------------- params.yaml


@pytest.mark.parametrize(
    ("text", "named"),
    [
        pytest.param(
            replaced(r"^seed: .*$", "seed: 1337  # caf\udce9"), "params.yaml", id="latin1-comment"
        ),
        pytest.param(
            replaced(r"^  text_column: .*$", "  text_column: t\udcffxt"),
            "not UTF-8",
            id="bad-byte-in-value",
        ),
        pytest.param(
            replaced(r"^  lr: .*$", "  lr: 3.0e-3\n  lr: 1.0e-3"),
            "duplicate key 'lr'",
            id="dup-key",
        ),
        pytest.param(PARAMS_TEXT + "seed: 7\n", "duplicate key 'seed'", id="dup-top-level"),
        pytest.param(PARAMS_TEXT + "train:\n  steps: 3\n", "duplicate key 'train'", id="dup-block"),
        pytest.param("", "params.yaml", id="empty-file"),
        pytest.param("seed: " + "[" * 5000 + "]" * 5000 + "\n", "params.yaml", id="deep-nesting"),
        pytest.param(replaced(r"^  steps: .*$", "  steps: [1,"), "not valid YAML", id="bad-yaml"),
    ],
)
def test_params_file_itself(tmp_path: Path, text: str, named: str) -> None:
    code, line = stage(tmp_path, "check_params.py", text)
    assert code == 2 and "params.yaml" in line and named in line


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"data__min_chars": 500, "data__max_chars": 100}, "data.min_chars"),
        ({"data__val_fraction": float("nan")}, "data.val_fraction"),
        ({"train__weight_decay": float("inf")}, "train.weight_decay"),
        ({"train__grad_clip": float("nan")}, "train.grad_clip"),
        ({"evaluate__temperature": float("-inf")}, "evaluate.temperature"),
        ({"tokenizer__max_train_mb": float("inf")}, "tokenizer.max_train_mb"),
        ({"tokenizer__max_train_mb": 1e-9}, "tokenizer.max_train_mb"),
        ({"seed": 2**32}, "seed"),
        ({"seed": 10**30}, "seed"),
        ({"model__d_model": 30, "model__n_head": 10}, "model.d_model"),  # heads of 3
        ({"model__d_model": 36, "model__n_head": 4}, "model.d_model"),  # heads of 9
        ({"model__d_model": 30, "model__n_head": 4}, "model.d_model"),  # not a multiple
        ({"evaluate__prompts": ["def f():", ""]}, "evaluate.prompts"),
        ({"model__arch": "gpt2", "model__context": 64}, "evaluate.max_new_tokens"),
        ({"model__arch": "gpt2", "evaluate__max_new_tokens": 500}, "evaluate.max_new_tokens"),
        ({"lora__target_modules": 5}, "lora.target_modules"),
        ({"lora__target_modules": ["q_proj", ""]}, "lora.target_modules"),
        ({"train__min_lr": 0.5}, "train.min_lr"),
        ({"train__weight_decay": 400.0}, "train.weight_decay"),  # lr 3e-3: scales by -0.2
        ({"evaluate__temperature": 1e-300}, "evaluate.temperature"),
        ({"data__source": "no/such/corpus"}, "data.source"),
        ({"data__source": "README.md"}, "data.source"),
    ],
    ids=lambda v: "-".join(f"{k}={v}" for k, v in v.items()) if isinstance(v, dict) else v,
)
def test_params_values(tmp_path: Path, changes: dict, key: str) -> None:
    code, line = stage(tmp_path, "check_params.py", edited(**changes))
    assert code == 2 and f"{key}:" in line


def test_messages_read_as_english(tmp_path: Path) -> None:
    _, line = stage(tmp_path, "check_params.py", edited(lora__target_modules=5))
    assert (
        line
        == "error: params.yaml: lora.target_modules: Input should be 'auto' or a valid list (got 5)"
    )
    _, line = stage(tmp_path / "b", "check_params.py", edited(model__d_model=30, model__n_head=4))
    assert (
        line == "error: params.yaml: model.d_model: must be a multiple of model.n_head (4) (got 30)"
    )


# ---------------------------------------------------------------- model.init


def _init_case(root: Path, case: str) -> tuple[Path, str]:
    folder = root / "base"
    if case == "config-is-a-list":
        fake_checkpoint(folder)
        (folder / "config.json").write_text("[1, 2, 3]")
        return folder, "config.json"
    if case == "config-not-utf8":
        fake_checkpoint(folder)
        (folder / "config.json").write_bytes(b'{"model_type": "caf\xe9"}')
        return folder, "config.json"
    if case == "pickle-only":
        folder.mkdir()
        (folder / "config.json").write_text('{"model_type": "gpt2"}')
        (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not unpickled")
        return folder, "pytorch_model.bin"
    if case == "truncated-safetensors":
        fake_checkpoint(folder)
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[: len(data) - 7])
        return folder, "model.safetensors"
    if case == "missing-shard":
        fake_checkpoint(folder)
        (folder / "model.safetensors").unlink()
        index = {"weight_map": {"w": "model-00001-of-00002.safetensors"}}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
        return folder, "model-00001-of-00002.safetensors"
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    [
        "config-is-a-list",
        "config-not-utf8",
        "pickle-only",
        "truncated-safetensors",
        "missing-shard",
    ],
)
def test_model_init_is_inspected_before_loading(tmp_path: Path, case: str) -> None:
    folder, culprit = _init_case(tmp_path, case)
    code, line = stage(tmp_path / "run", "check_params.py", edited(model__init=str(folder)))
    assert code == 2 and "model.init" in line and culprit in line


@pytest.mark.parametrize("case", ["pickle-only", "truncated-safetensors"])
def test_train_stage_refuses_before_loading(tmp_path: Path, case: str) -> None:
    """The stages load params the same way: the one that would load the weights refuses."""
    folder, culprit = _init_case(tmp_path, case)
    code, line = stage(tmp_path / "run", "train_stage.py", edited(model__init=str(folder)))
    assert code == 2 and "model.init" in line and culprit in line


# ---------------------------------------------------------------- the corpus


def _folder(root: Path, n: int = 30) -> Path:
    root.mkdir(parents=True)
    for i in range(n):
        (root / f"m{i:02d}.py").write_text(f"def f_{i}(x):\n    return x * {i} + {i * i}\n")
    return root


def _prepare(cwd: Path, source: Path, **data: object) -> subprocess.CompletedProcess:
    shutil.copytree(ROOT / "stages", cwd / "stages")
    shutil.copy(ROOT / "versions.yaml", cwd)  # what every stage checks
    p = tiny_params(str(source))
    p["data"].update(data)
    (cwd / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    proc = run_script("stages/prepare_stage.py", cwd)
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    return proc


def _dropped(cwd: Path) -> dict:
    return json.loads((cwd / "data" / "prepared" / "stats.json").read_text())["dropped"]


def test_undecodable_file_name_is_dropped_and_counted(tmp_path: Path) -> None:
    src = _folder(tmp_path / "src")
    with open(os.path.join(os.fsencode(src), b"bad\xff\xfename.py"), "wb") as f:
        f.write(b"def g(x):\n    return x - 1  # a fine document under a bad name\n")
    proc = _prepare(tmp_path / "run", src)
    assert proc.returncode == 0, proc.stderr
    assert _dropped(tmp_path / "run") == {"invalid_file_name": 1}


def _jsonl(path: Path, rows: list[object]) -> Path:
    # ensure_ascii: lone surrogates travel as \ud800 escapes, as real exports write them
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _good_rows(n: int = 30) -> list[dict]:
    return [{"text": f"def f_{i}(x):\n    return x * {i} + {i * i}\n"} for i in range(n)]


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("def f():\n    return '\ud800 lone surrogate'\n", "invalid_unicode"),
        ("def f():\n    return 1\n" + "\x00" + "x = 2\n" * 5, "binary"),
    ],
    ids=["surrogate", "nul"],
)
def test_unstorable_text_is_dropped_and_counted(tmp_path: Path, bad: str, reason: str) -> None:
    src = _jsonl(tmp_path / "c.jsonl", [*_good_rows(), {"text": bad}])
    proc = _prepare(tmp_path / "run", src)
    assert proc.returncode == 0, proc.stderr
    assert _dropped(tmp_path / "run") == {reason: 1}


def test_jsonl_line_in_another_encoding_is_named(tmp_path: Path) -> None:
    src = tmp_path / "c.jsonl"
    good = "".join(json.dumps(r) + "\n" for r in _good_rows())
    src.write_bytes(good.encode() + b'{"text": "# caf\xe9 in Latin-1, long enough to keep"}\n')
    proc = _prepare(tmp_path / "run", src)
    assert proc.returncode == 0, proc.stderr
    assert _dropped(tmp_path / "run") == {"not_utf8": 1}


def test_binary_past_the_sniffed_prefix_is_dropped(tmp_path: Path) -> None:
    src = _folder(tmp_path / "src")
    text = b"# a long header of ordinary text\n" * 400  # > 8 kB before the binary part
    (src / "late_blob.py").write_bytes(text + bytes(range(256)) * 4)
    (src / "late_nul.py").write_bytes(text + b"x = 1\x00\x00\n")
    proc = _prepare(tmp_path / "run", src, max_chars=100_000)
    assert proc.returncode == 0, proc.stderr
    dropped = _dropped(tmp_path / "run")
    assert dropped == {"binary": 2}
    texts = "".join(
        t
        for s in ("train", "val", "test")
        for t in pq.read_table(tmp_path / "run/data/prepared" / f"{s}.parquet")
        .column("text")
        .to_pylist()
    )
    assert "\x00" not in texts and "a long header" not in texts


def test_csv_with_rows_in_another_encoding(tmp_path: Path) -> None:
    src = tmp_path / "c.csv"
    rows = [r["text"] for r in _good_rows()]
    body = b"text\n" + b"".join(b'"' + r.encode() + b'"\n' for r in rows)
    body += b'"# caf\xe9 in Latin-1\nx = 1\n"\n' + b'"# na\xefve\ny = 2\n"\n'
    src.write_bytes(body)
    proc = _prepare(tmp_path / "run", src)
    assert proc.returncode == 0, proc.stderr
    stats = json.loads((tmp_path / "run/data/prepared/stats.json").read_text())
    assert stats["dropped"] == {"not_utf8": 2}  # the encoding is named, not null_text
    assert sum(stats["documents"].values()) == len(rows)


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_misnamed_text_column_names_the_key(tmp_path: Path, fmt: str) -> None:
    rows = [{"content": r["text"]} for r in _good_rows()]
    src = tmp_path / f"c.{fmt}"
    if fmt == "jsonl":
        _jsonl(src, rows)
    else:
        table = pa.table({"content": [r["content"] for r in rows]})
        if fmt == "csv":
            import pyarrow.csv as pacsv

            pacsv.write_csv(table, src)
        else:
            pq.write_table(table, src)
    proc = _prepare(tmp_path / "run", src)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "data.text_column" in lines[0] and src.name in lines[0]
    assert "content" in lines[0]  # what the file does have
    assert not (tmp_path / "run" / "data" / "prepared" / "train.parquet").exists()


# ---------------------------------------------------------------- generation length


def test_generation_keeps_within_gpt2_positions() -> None:
    """A prompt plus max_new_tokens beyond gpt2's positions: the prompt keeps its last tokens
    (IndexError before); more new tokens than positions is a one-line user error."""
    tok = train_bpe([f"def f_{i}(x): return x + {i}\n" for i in range(50)], 300, 1)
    cfg = model_args(arch="gpt2", n_layer=1, n_head=2, d_model=32, context=16)
    model = build_model(cfg, len(tok), tok.eos_token_id, 0, 0)
    prompt = "def f_1(x): return x + 1\n" * 10  # far more than 16 tokens
    [out] = sample(model, tok, [prompt], 8, 0.0, 0, 0, torch.device("cpu"))
    assert isinstance(out, str)
    with pytest.raises(Exception, match=r"evaluate\.max_new_tokens: 16"):
        sample(model, tok, ["def"], 16, 0.0, 0, 0, torch.device("cpu"))


# ---------------------------------------------------------------- nothing lost on a failed run


@pytest.fixture
def prepared_repo(tmp_path: Path) -> Path:
    corpus = _folder(tmp_path / "corpus")
    repo = copy_repo(tmp_path / "repo", tiny_params(str(corpus)))
    run(["dvc", "repro", "prepare"], repo)
    return repo


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(folder.iterdir())}


def test_failed_stage_says_how_to_restore_what_dvc_removed(prepared_repo: Path) -> None:
    repo = prepared_repo
    before = _snapshot(repo / "data/prepared")
    p = yaml.safe_load((repo / "params.yaml").read_text())
    p["data"]["min_chars"] = 150_000  # valid params; every document is then too short
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    proc = run(["dvc", "repro", "prepare"], repo, check=False)
    assert proc.returncode != 0
    ours = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error:")]
    assert len(ours) == 1 and ours[0].endswith(
        "`dvc checkout prepare` restores the previous version from the cache"
    ), proc.stderr
    assert not (repo / "data/prepared/train.parquet").exists()  # dvc did remove them
    run(["dvc", "checkout", "prepare"], repo)  # the command the message gives
    assert _snapshot(repo / "data/prepared") == before


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # not models/checkpoints, which is no DVC output
        ("train", "dvc removed models/trained, reports/train before running stage 'train'"),
        ("tokenize", "dvc removed data/tokens, models/tokenizer before"),
        ("evaluate", None),  # cache: false, so there is nothing to check out
        # a lock whose outputs are in no local cache (a fresh clone): nothing to restore
        (
            "export",
            "dvc removed models/export before running stage 'export'; no copy is in "
            "the local cache, so `dvc repro` recomputes it",
        ),
    ],
)
def test_restore_hint_names_what_checkout_can_restore(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, expected: str | None
) -> None:
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    stages = {s: {"cmd": "x"} for s in ("prepare", "tokenize", "train", "evaluate", "export")}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": stages}))
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.setenv("DVC_STAGE", name)
    hint = restore_hint()
    assert hint == expected if expected is None else expected in hint
    monkeypatch.delenv("DVC_STAGE")
    assert restore_hint() is None  # outside dvc, nothing was removed


def test_make_repro_checks_params_before_dvc_touches_outputs(prepared_repo: Path) -> None:
    repo = prepared_repo
    before = _snapshot(repo / "data/prepared")
    text = (repo / "params.yaml").read_text()
    (repo / "params.yaml").write_text(text + "seed: 1\n")  # a duplicated key
    venv = VENV_BIN.parent
    # the shared environment, marked up to date so that make installs nothing
    cmd = ["make", "-o", f"{venv}/.installed-stamp", "repro", f"VENV={venv}"]
    proc = run(cmd, repo, check=False)
    assert proc.returncode != 0
    assert "Running stage" not in proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "params.yaml: duplicate key 'seed'" in errors[0]
    assert _snapshot(repo / "data/prepared") == before


def test_check_passes_on_the_repository_params() -> None:
    proc = run([sys.executable, "stages/check_params.py"], ROOT)
    assert proc.stdout.strip() == "check: params.yaml is valid"
