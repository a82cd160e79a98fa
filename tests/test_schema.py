"""One schema: `params.py`'s typed blocks are the source, and every other view of a block is
derived from them or held to them here.

- the `train` block is declared once, in `params.Train`: the loop and the optimizer read its
  attributes (no view of their own), and the GPU benchmark image, which has no pydantic, reads
  params.yaml's block as written (bench/common.load_params), checked here to give the loop the
  same keys and values as the schema, with pydantic unimportable;
- `model.ModelArgs`, `model.LoraArgs`: what building a model reads, Protocols checked key by
  key and type by type;
- the checkpoint fingerprint: which train keys it leaves out is declared next to each key in
  params.py, and run_fingerprint's result must follow that declaration.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import types
import typing
from typing import Any, get_type_hints

import pytest
from conftest import ROOT, default_params
from pydantic import BaseModel

from codexlm import params
from codexlm.checkpoint import policy as checkpoint_policy
from codexlm.model import LoraArgs, ModelArgs


def plain_type(annotation: Any) -> str:
    """The Python type a params annotation holds, as a name: `Literal["a", "b"]` -> str,
    `Literal["auto"] | list[str]` -> `list | str`."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " | ".join(sorted({type(v).__name__ for v in typing.get_args(annotation)}))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(sorted({plain_type(a) for a in typing.get_args(annotation)}))
    return (origin or annotation).__name__


def schema_of(block: type[BaseModel]) -> dict[str, str]:
    return {name: plain_type(f.annotation) for name, f in block.model_fields.items()}


def view_of(proto: type) -> dict[str, str]:
    return {name: plain_type(t) for name, t in get_type_hints(proto).items()}


def difference(view: dict[str, str], schema: dict[str, str]) -> list[str]:
    missing = [f"{k}: in params.py, not in the view" for k in schema if k not in view]
    extra = [f"{k}: in the view, not in params.py" for k in view if k not in schema]
    typed = [
        f"{k}: {view[k]} in the view, {schema[k]} in params.py"
        for k in sorted(view.keys() & schema.keys())
        if view[k] != schema[k]
    ]
    return missing + extra + typed


@pytest.mark.parametrize(
    ("proto", "block"),
    [(ModelArgs, params.Model), (LoraArgs, params.Lora)],
    ids=["model.ModelArgs", "model.LoraArgs"],
)
def test_a_view_has_every_key_of_its_block_with_its_type(proto: type, block: type) -> None:
    assert difference(view_of(proto), schema_of(block)) == []


def test_the_view_check_fails_on_a_key_the_view_lacks() -> None:
    """The check above can fail: a schema with one more key is reported by name."""

    class Wider(params.Model):
        rope_scaling: float

    assert difference(view_of(ModelArgs), schema_of(Wider)) == [
        "rope_scaling: in params.py, not in the view"
    ]


def bench_module(name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / f"bench/{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# bench/common.load_params in a process where pydantic cannot be imported, as in the GPU image
WITHOUT_PYDANTIC = """
import json, sys
sys.modules["pydantic"] = None  # `import pydantic` raises ImportError
sys.path.insert(0, "bench")
from common import load_params
import codexlm.train, codexlm.optim
p = load_params(sys.argv[1])
assert "pydantic" not in {m.split(".")[0] for m in sys.modules if sys.modules[m]}
print(json.dumps({"seed": p.seed, "train": vars(p.train), "model": vars(p.model)}))
"""


def test_the_benchmarks_params_without_pydantic_are_the_schemas(tmp_path) -> None:
    """The GPU image reads params.yaml with no schema: the loop must get every train key with
    the schema's value and type, `3e-4` (a str to YAML 1.1) as a float included."""
    text = (ROOT / "params.yaml").read_text(encoding="utf-8")
    path = tmp_path / "params.yaml"
    path.write_text(re.sub(r"(?m)^(  lr:) .*$", r"\1 3e-4", text, count=1), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run(
        [sys.executable, "-c", WITHOUT_PYDANTIC, str(path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    want = params.load(path)
    assert got["train"] == json.loads(want.train.model_dump_json())
    assert got["model"] == json.loads(want.model.model_dump_json())
    assert got["seed"] == want.seed and got["train"]["lr"] == 3e-4


def test_the_gpu_checks_changes_are_train_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """bench/gpu_check.py trains a tiny model on params.yaml's train block with its own values
    for some keys: a key the schema no longer has would be an attribute the loop never reads."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))  # its `from common import ...`
    gpu_check = bench_module("gpu_check")
    assert set(gpu_check.TRAIN) <= set(params.Train.model_fields)


def fingerprint(train: dict[str, Any], dropout: bool = False) -> str:
    p = params.parse(default_params())
    meta = {"sha256": "a" * 64, "tokenizer_sha256": "b" * 64}
    blocks = p.model.model_dump(), p.lora.model_dump(), train
    marked = params.not_fingerprinted(params.Train)
    return checkpoint_policy.run_fingerprint(p.seed, *blocks, meta, dropout, marked)


def changed(value: Any) -> Any:
    """Another value of the same type (run_fingerprint reads dicts; nothing validates it)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value * 2 + 1
    return f"other-{value}"


# how the global batch is split: out of the fingerprint, their product in it
BATCH_SHAPE = {"batch_size", "grad_accum", "nproc"}
# in the fingerprint only when the model draws dropout masks
COMPILE = {"compile", "compile_mode"}


def test_the_fingerprint_follows_the_declaration_in_params() -> None:
    train = params.parse(default_params()).train.model_dump()
    base = fingerprint(train)
    marked = params.not_fingerprinted(params.Train)
    assert marked >= BATCH_SHAPE | COMPILE | {"resume", "final", "log_every"}
    for key in params.Train.model_fields:
        moved = fingerprint(train | {key: changed(train[key])}) != base
        if key in BATCH_SHAPE:
            continue  # the global batch moves: checked below
        assert moved is (key not in marked), f"train.{key}"
    split = train | {"batch_size": train["batch_size"] // 2, "nproc": train["nproc"] * 2}
    assert fingerprint(split) == base
    off = train | {"compile": not train["compile"]}
    assert fingerprint(off, dropout=True) != fingerprint(train, dropout=True)
