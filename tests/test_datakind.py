"""One home for the data kind: `codexlm.datakind` decides text versus examples, from params to
token meta to the loaded splits, and the stage scripts and the loop ask it instead of
testing formats themselves."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

from codexlm import datakind
from codexlm.packing import Examples, prepare_split

FORMATS = {"text": "text", "prompt_completion": "examples", "messages": "examples"}


@pytest.mark.parametrize("data_format", FORMATS)
def test_one_kind_from_params_through_stats_to_meta(data_format: str) -> None:
    kind = datakind.of_format(data_format)
    assert kind == FORMATS[data_format]
    assert datakind.of_stats({"documents": {}, **datakind.stats_entry(data_format)}) == kind
    assert datakind.of_meta({"dtype": "uint16", **datakind.meta_entry(kind)}) == kind


def test_text_leaves_the_files_as_they_were() -> None:
    """The default pipeline's stats.json and meta.json carry no kind (their bytes predate it),
    and a meta without one is text."""
    assert datakind.stats_entry("text") == {} and datakind.meta_entry("text") == {}
    assert datakind.of_meta({}) == datakind.of_stats({}) == "text"


def test_a_loaded_split_says_its_kind(tmp_path: Path) -> None:
    path = tmp_path / "train.bin"
    np.arange(10, dtype=np.uint16).tofile(path)
    assert datakind.of_tokens(np.memmap(path, dtype=np.uint16, mode="r")) == "text"
    ex = Examples(np.arange(6), np.array([0, 0, 1, 0, 0, 1], bool), np.array([0, 3, 6]))
    assert datakind.of_tokens(prepare_split(ex, 8, "answers", 0)) == "examples"


# what deciding the kind by hand looks like: a format's or a kind's name compared, the
# token meta's "format" read, a loaded split's type tested
NAMES = {"text", "examples", "messages", "prompt_completion"}


def own_decisions(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Compare):
            parts = [node.left, *node.comparators]
            if any(isinstance(p, ast.Constant) and p.value in NAMES for p in parts) or any(
                isinstance(p, ast.Attribute) and p.attr == "format" for p in parts
            ):
                found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.Call) and ast.unparse(node.func).endswith("get"):
            if (
                node.args
                and isinstance(node.args[0], ast.Constant)
                and node.args[0].value == "format"
            ):
                found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
        elif (
            isinstance(node, ast.Call)
            and ast.unparse(node.func) == "isinstance"
            and "Split" in ast.unparse(node.args[1])
        ):
            found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_the_stages_and_the_loop_ask_datakind() -> None:
    files = [*sorted((ROOT / "stages").glob("*.py")), ROOT / "src/codexlm/train.py"]
    assert [line for f in files for line in own_decisions(f)] == []


def test_a_decision_by_hand_is_found(tmp_path: Path) -> None:
    """The check can fail: each way the stages used to decide is reported."""
    script = tmp_path / "s.py"
    script.write_text(
        'a = meta.get("format") == "examples"\nb = p.data.format != "text"\n'
        "c = isinstance(tokens, Split)\nd = datakind.of_meta(meta) == datakind.EXAMPLES\n"
    )
    assert sorted({line.split(":")[1] for line in own_decisions(script)}) == ["1", "2", "3"]
