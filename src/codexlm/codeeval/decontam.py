"""Decontamination: a training document that shares a 13-word sequence with an evaluation
problem's prompt or canonical solution is dropped by prepare (the 13-gram overlap test of
GPT-3, Brown et al. 2020, appendix C, used since for code benchmarks), so pass@k measures
what the model can write rather than what it memorised.

Words are lowercased runs of letters, digits and underscores: punctuation and layout do not
hide a copy. The index is built in each process that checks (prepare's workers), so it may
hold plain tuples of words."""

from __future__ import annotations

import functools
import re

from codexlm.codeeval.problems import load_problems

N = 13
_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def ngrams(text: str, n: int = N) -> set[tuple[str, ...]]:
    w = words(text)
    return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}


@functools.cache
def index(source: str) -> tuple[frozenset[tuple[str, ...]], frozenset[str]]:
    """The n-grams of every problem's prompt followed by its canonical solution (so a copy
    that spans the two counts too), and their first words (a cheap test that rules out
    most positions); built once per process."""
    grams = frozenset().union(
        *(ngrams(p.prompt + "\n" + p.canonical_solution) for p in load_problems(source))
    )
    return grams, frozenset(g[0] for g in grams)


def contaminated(text: str, source: str, n: int = N) -> bool:
    """Whether `text` shares an n-gram with the problem set `source` (humaneval, or a file)."""
    grams, firsts = index(source)
    w = words(text)
    return any(w[i] in firsts and tuple(w[i : i + n]) in grams for i in range(len(w) - n + 1))
