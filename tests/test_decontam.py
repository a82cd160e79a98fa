"""Decontamination: training documents that share a 13-word sequence with a HumanEval prompt
or canonical solution are dropped by prepare and counted in stats.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq

from codexlm.codeeval import decontam
from codexlm.codeeval.problems import load_problems
from codexlm.corpus import prepare

ARGS = dict(
    include=["**/*.py"],
    text_column="text",
    min_chars=10,
    max_chars=200_000,
    val_fraction=0.2,
    test_fraction=0.2,
    scrub_secrets=False,
    workers=1,
)


def test_a_copy_is_found_whatever_its_layout() -> None:
    p = load_problems("humaneval")[2]  # truncate_number
    assert decontam.contaminated(p.prompt, "humaneval")
    # re-indented, other quotes and spacing, embedded in other code: the words are the same
    respaced = p.prompt.replace("    ", "\t").replace('"""', "'''").replace(", ", " , ")
    assert decontam.contaminated("import os\n\n" + respaced + "\nx = 1\n", "humaneval")
    # a short overlap (under 13 words) is no copy
    first_words = " ".join(decontam.words(p.prompt)[:12])
    assert not decontam.contaminated(first_words, "humaneval")
    assert not decontam.contaminated(Path(decontam.__file__).read_text(), "humaneval")


def test_prepare_drops_and_counts_contaminated_documents(corpus_dir: Path, tmp_path: Path) -> None:
    problems = load_problems("humaneval")
    for i in (0, 75):  # a prompt, and a canonical solution with its prompt's tail
        p = problems[i]
        text = p.prompt + p.canonical_solution if i == 75 else p.prompt + "    pass\n"
        (corpus_dir / f"leak_{i}.py").write_text(text)
    clean = prepare(
        source=str(corpus_dir), out_dir=tmp_path / "a", decontaminate="humaneval", **ARGS
    )
    assert clean["dropped"]["contaminated"] == 2
    assert clean["decontamination"] == {"problems": "humaneval", "ngram_words": 13, "dropped": 2}
    assert (
        json.loads((tmp_path / "a" / "stats.json").read_text())["decontamination"]["dropped"] == 2
    )
    names = {
        n for s in ("train", "val", "test")
        for n in pq.read_table(tmp_path / "a" / f"{s}.parquet").column("name").to_pylist()
    }  # fmt: skip
    assert not any("leak_" in n for n in names)
    kept = prepare(source=str(corpus_dir), out_dir=tmp_path / "b", decontaminate="none", **ARGS)
    assert "contaminated" not in kept["dropped"]
    assert kept["decontamination"]["dropped"] == 0
    assert sum(kept["documents"].values()) == sum(clean["documents"].values()) + 2
    shutil.rmtree(tmp_path / "a")
