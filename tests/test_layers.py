"""The library's imports point one way: no cycle, and no module imports a higher layer.

The layers, bottom first (a module may import its own layer and those below it; within a
layer the cycle check keeps the order):

- base: helpers with no project imports of their own above base (errors, files, hashes)
- schema: params.yaml's schema, the environment and code identity
- parts: one concept each, interchangeable parts a step composes (a record format, the chat
  template, batches, the model, the loss, the optimizer, checkpoints, the sandbox, ...)
- steps: what a stage or a command calls: prepare's corpus, tokenize, the training loop,
  evaluation, the export, the code-eval scoring, the recipes, the serving engine
- commands: what a user runs on top of the steps: the `codexlm` command and its server

A new module goes in LAYERS, where its imports say it belongs.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest
from conftest import ROOT

SRC = ROOT / "src"
LAYERS: dict[str, set[str]] = {
    "base": {
        "codexlm",
        "errors",
        "atomic",
        "hashing",
        "intervals",
        "machine",
        "paramsfile",
        "datakind",
        "metrics",
        "callbacks",
        "scrub",
        "packing",
    },
    "schema": {"params", "provenance"},
    "parts": {
        "records",
        "chat",
        "batches",
        "model",
        "loss",
        "optim",
        "parallel",
        "live",
        "trackers",
        "generate",
        "checkpoint",
        "checkpoint.files",
        "checkpoint.policy",
        "codeeval",
        "codeeval.problems",
        "codeeval.decontam",
        "codeeval.sandbox",
        "codeeval.cases",
        "export",
        "export.card",
        "export.gguf",
        "serve",
        "serve.protocol",
        "rl",
        "rl.tasks",
        "rl.pairs",
        "rl.logprobs",
        "rl.grpo",
        "rl.dpo",
    },
    "steps": {
        "corpus",
        "tokenizer",
        "train",
        "evaluate",
        "sft_eval",
        "recipes",
        "export.hf",
        "codeeval.scoring",
        "codeeval.__main__",
        "codeeval.plus",
        "codeeval.rescore",
        "serve.engine",
        "rl.rewards",
        "rl.rollout",
        "rl.loop",
    },
    "commands": {"cli", "__main__", "serve.app"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC / "codexlm").with_suffix("").parts
    name = ".".join(p for p in parts if p != "__init__")
    return name or "codexlm"


def project_imports(path: Path) -> set[str]:
    """The project modules a file imports anywhere in it (`from codexlm.x import y` counts y
    when y is a module), as names relative to codexlm."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        else:
            continue
        for name in names:
            if name == "codexlm" or name.startswith("codexlm."):
                rel = name.removeprefix("codexlm").removeprefix(".") or "codexlm"
                if (
                    (SRC / "codexlm" / rel.replace(".", "/")).with_suffix(".py").is_file()
                    or (SRC / "codexlm" / rel.replace(".", "/") / "__init__.py").is_file()
                    or rel == "codexlm"
                ):
                    found.add(rel)
    return found


def import_graph() -> dict[str, set[str]]:
    return {
        module_name(p): project_imports(p) - {module_name(p)}
        for p in sorted((SRC / "codexlm").rglob("*.py"))
    }


def problems(graph: dict[str, set[str]], layers: dict[str, set[str]]) -> list[str]:
    """Modules in no layer or two, imports of a higher layer, and a cycle: one line each."""
    rank = {}
    out = []
    for i, members in enumerate(layers.values()):
        for m in members:
            if m in rank:
                out.append(f"{m}: in two layers")
            rank[m] = i
    names = list(layers)
    for module, deps in sorted(graph.items()):
        if module not in rank:
            out.append(f"{module}: in no layer (add it to LAYERS in tests/test_layers.py)")
            continue
        for dep in sorted(deps):
            if dep in rank and rank[dep] > rank[module]:
                out.append(
                    f"{module} ({names[rank[module]]}) imports {dep} ({names[rank[dep]]}): upward"
                )
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as e:
        out.append("import cycle: " + " -> ".join(e.args[1]))
    return out


def test_imports_point_down_and_never_in_a_cycle() -> None:
    assert problems(import_graph(), LAYERS) == []


def test_every_layer_member_is_a_module() -> None:
    graph = import_graph()
    assert [m for layer in LAYERS.values() for m in sorted(layer) if m not in graph] == []


def test_an_upward_import_and_a_cycle_are_reported() -> None:
    """The check can fail: base importing a step, and two parts importing each other."""
    layers = {"base": {"errors"}, "parts": {"model", "loss"}, "steps": {"train"}}
    graph = {"errors": {"train"}, "model": {"loss"}, "loss": {"model"}, "train": {"model"}}
    found = problems(graph, layers)
    assert "errors (base) imports train (steps): upward" in found
    assert any(line.startswith("import cycle: ") for line in found)
    assert problems({"new": set()}, layers)[0].startswith("new: in no layer")


@pytest.mark.parametrize("module", ["train", "params"])
def test_the_graph_sees_real_imports(module: str) -> None:
    """The parser reads `from codexlm import x` and `from codexlm.x import y` alike."""
    graph = import_graph()
    assert {"train": "checkpoint.policy", "params": "errors"}[module] in graph[module]
