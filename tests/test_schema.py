"""One schema: `params.py`'s typed blocks are the source, and every other view of a block is
held to them here. The views cannot import pydantic (the GPU benchmark image lacks it), so
they are Protocols checked key by key and type by type, not generated:

- `train.TrainArgs`: the loop's view of `train`, and the GPU benchmark's (bench/common.py
  builds its params from these type hints);
- `optim.OptimArgs`: the optimizer's and the schedule's part of it;
- `model.ModelArgs`, `model.LoraArgs`: what building a model reads;
- the checkpoint fingerprint: which train keys it leaves out is declared next to each key in
  params.py, and run_fingerprint's result must follow that declaration.
"""

from __future__ import annotations

import importlib.util
import types
import typing
from typing import Any, get_type_hints

import pytest
from conftest import ROOT, default_params
from pydantic import BaseModel

from codexlm import params
from codexlm.checkpoint import policy as checkpoint_policy
from codexlm.model import LoraArgs, ModelArgs
from codexlm.optim import OptimArgs
from codexlm.train import TrainArgs


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
    [(TrainArgs, params.Train), (ModelArgs, params.Model), (LoraArgs, params.Lora)],
    ids=["train.TrainArgs", "model.ModelArgs", "model.LoraArgs"],
)
def test_a_view_has_every_key_of_its_block_with_its_type(proto: type, block: type) -> None:
    """A key added to params.py alone would pass on CPU and fail on the GPU image, whose
    params are built from the view's type hints."""
    assert difference(view_of(proto), schema_of(block)) == []


def test_the_optimizers_view_is_part_of_the_loops() -> None:
    loop = view_of(TrainArgs)
    assert {k: loop.get(k) for k in view_of(OptimArgs)} == view_of(OptimArgs)


def test_the_view_check_fails_on_a_key_the_view_lacks() -> None:
    """The check above can fail: a schema with one more key is reported by name."""

    class Wider(params.Train):
        momentum_warmup: int

    assert difference(view_of(TrainArgs), schema_of(Wider)) == [
        "momentum_warmup: in params.py, not in the view"
    ]


def bench_module(name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / f"bench/{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_benchmarks_params_without_pydantic_have_every_train_key() -> None:
    """bench/common.override is how the GPU image turns params.yaml's train block into the
    loop's params: every schema key, floats as floats (YAML 1.1 reads 3e-4 as a str)."""
    raw = default_params()["train"] | {"lr": "3e-4"}
    built = vars(bench_module("common").override(raw))
    assert set(built) == set(params.Train.model_fields)
    assert built["lr"] == 3e-4


def test_the_gpu_checks_own_train_block_has_every_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """bench/gpu_check.py trains a tiny model with its own train block (compile and its mode
    set per run): a key it lacks would fail only on the GPU, in override's KeyError."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))  # its `from common import ...`
    gpu_check = bench_module("gpu_check")
    assert set(gpu_check.TRAIN) | {"compile", "compile_mode"} == set(params.Train.model_fields)


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
