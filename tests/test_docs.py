"""Docs that cannot drift: the README stays a screenful and maps every module; every docs page
is linked from it and every link resolves; every param is documented in docs/params.md, and
every documented one exists; the files, Make targets, script options and params a command
names exist; the error lines docs/params.md shows are what the schema prints; and the
snippets marked `<!-- test: run -->` run.

Commands that take minutes (`make repro`, `make verify-lock`, the benchmarks) are not run
here: their names, paths and options are checked, and the end-to-end tests run what they do.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, default_params

from codexlm import params
from codexlm.errors import UserError

README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS, ROOT / "bench/README.md", ROOT / "bench/RESULTS.md"]
LIBRARY = ROOT / "src/codexlm"

FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
INLINE = re.compile(r"`([^`\n]+)`")
# a path into the repository's code or docs (outputs such as models/ are not on a fresh clone)
REPO_PATH = re.compile(r"(?<![\w./-])((?:stages|src|tools|bench|tests|docs)/[\w./-]*\w)(::\w+)?")
PARAM_SET = re.compile(r"-S\s+'?([a-z_]+(?:\.[a-z_]+)?)=")
# how a command a reader is told to run starts
STARTS = ("make ", "python ", ".venv/bin/", "bash ", "dvc ", "torchrun ", "codexlm ")


def rel(page: Path) -> str:
    return str(page.relative_to(ROOT))


def section(text: str, heading: str) -> str:
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def leaf_keys(block: type = params.Params, prefix: str = "") -> set[str]:
    keys = set()
    for name, field in block.model_fields.items():
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, params.BaseModel):
            keys |= leaf_keys(kind, f"{prefix}{name}.")
        else:
            keys.add(prefix + name)
    return keys


# -- the README ------------------------------------------------------------------------------


def test_the_readme_is_a_screenful() -> None:
    lines = README.read_text().count("\n")
    assert lines <= 250, f"README.md has {lines} lines; move detail to a docs/ page"


def file_map() -> str:
    (block,) = [b for _, b in FENCE.findall(section(README.read_text(), "The code"))]
    return block


def mapped_names(folder: str) -> set[str]:
    """The file names indented under `folder/` in the README's file map; a package's entry
    (`checkpoint/`) names its modules in its description, which may run onto deeper lines."""
    lines = file_map().splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == [f"{folder}/"])
    names: set[str] = set()
    package = ""
    for line in lines[start + 1 :]:
        if not line.startswith("  "):
            break
        words = line.split()
        if line[2] != " " and words[0] != "#":
            package = words[0] if words[0].endswith("/") else ""
            names.add(words[0])
            words = words[1:]
        if package:
            names |= {package + w.strip("`,;:.") for w in words if w.strip("`,;:.").endswith(".py")}
    return names


def package_modules(folder: Path) -> set[str]:
    """Every module under `folder`, a subpackage as `name/` plus its modules less its dunders."""
    names = set()
    for p in folder.rglob("*.py"):
        if "__pycache__" in p.parts:
            continue
        rel = p.relative_to(folder)
        if len(rel.parts) == 1:
            names.add(str(rel))
        else:
            names.add(f"{rel.parts[0]}/")
            if not p.name.startswith("__"):
                names.add(str(rel))
    return names


@pytest.mark.parametrize("folder", ["src/codexlm", "stages"])
def test_the_file_map_names_every_module_and_only_those(folder: str) -> None:
    actual = package_modules(ROOT / folder)
    mapped = mapped_names(folder)
    assert not actual - mapped, f"README.md's file map lacks {sorted(actual - mapped)}"
    assert not mapped - actual, f"README.md's file map names missing {sorted(mapped - actual)}"


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = {(README.parent / t.split("#")[0]).resolve() for t in LINK.findall(README.read_text())}
    unlinked = [rel(p) for p in DOCS if p.resolve() not in linked]
    assert not unlinked, f"link these from README.md's Docs section: {unlinked}"


# -- links -------------------------------------------------------------------------------------


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*_\[\]()]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in LINK.findall(FENCE.sub("", page.read_text())):
        if re.match(r"[a-z]+:", target):
            continue  # a URL
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no such heading)")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_every_link_resolves(page: Path) -> None:
    assert broken_links(page) == []


# -- params ------------------------------------------------------------------------------------

PARAMS_DOC = ROOT / "docs/params.md"


def documented_params() -> dict[str, str]:
    """docs/params.md's reference table: key -> its line."""
    rows = re.findall(r"^\| `([a-z0-9_.]+)` \|(.*)$", PARAMS_DOC.read_text(), re.M)
    return dict(rows)


def test_every_param_is_documented_and_every_documented_param_exists() -> None:
    documented, schema = set(documented_params()), leaf_keys()
    undocumented, absent = sorted(schema - documented), sorted(documented - schema)
    assert not undocumented, f"add a line to docs/params.md for {undocumented}"
    assert not absent, f"docs/params.md documents {absent}, which params.py does not have"


def test_the_docs_mark_exactly_the_train_keys_params_leaves_out_of_the_fingerprint() -> None:
    marked = {k for k, line in documented_params().items() if "†" in line}
    assert marked == {f"train.{k}" for k in params.not_fingerprinted(params.Train)}


def documented_errors() -> list[str]:
    return re.findall(r"^error: params\.yaml: (.+)$", PARAMS_DOC.read_text(), re.M)


def test_the_documented_error_lines_are_what_the_schema_says() -> None:
    """Each `error: params.yaml: KEY: MESSAGE (got VALUE)` line of docs/params.md is
    reproduced: KEY set to VALUE (any value for an unknown key) in the default params."""
    assert documented_errors(), "docs/params.md shows no error line"
    for line in documented_errors():
        key = line.split(":")[0]
        got = re.search(r"\(got (.+)\)$", line)
        raw = default_params()
        block, name = key.split(".")
        raw[block][name] = yaml.safe_load(got.group(1)) if got else 1
        with pytest.raises(UserError) as err:
            params.parse(raw)
        assert f"params.yaml: {line}" in str(err.value)


# -- commands ----------------------------------------------------------------------------------


def commands(page: Path) -> list[str]:
    """The shell commands a page tells a reader to run: `bash` blocks, `$ ` lines of other
    blocks, and inline code that starts with a command."""
    text, found = page.read_text(), []
    for lang, body in FENCE.findall(text):
        body = body.replace("\\\n", " ")
        for line in body.splitlines():
            line = line.removeprefix("$ ")
            if lang in ("bash", "sh") or (not lang and line.startswith(STARTS)):
                found.append(line.split(" #")[0] if not line.startswith("#") else "")
    found += [c for c in INLINE.findall(FENCE.sub("", text)) if c.startswith(STARTS)]
    return [c.strip() for c in found if c.strip()]


def make_targets() -> set[str]:
    return set(re.findall(r"^([\w.-]+):", (ROOT / "Makefile").read_text(), re.M))


def words(command: str) -> list[str]:
    try:
        return shlex.split(command)
    except ValueError:  # an unbalanced quote in a shortened command: split on spaces
        return command.split()


def problems(command: str) -> list[str]:
    """What in `command` names a Make target, a file, a script option or a param that does not
    exist."""
    found, argv = [], words(command)
    for i, w in enumerate(argv):
        if w == "make":
            targets = [t for t in argv[i + 1 :] if not t.startswith("-") and "=" not in t]
            found += [f"make {t}: no such target" for t in targets if t not in make_targets()]
            break
    for path, test in REPO_PATH.findall(command):
        if "<" in path or "*" in path:
            continue
        if not (ROOT / path).exists():
            found.append(f"{path}: no such file")
        elif test and f"def {test[2:]}(" not in (ROOT / path).read_text():
            found.append(f"{path}{test}: no such test")
    script = next((w for w in argv if re.match(r"(bench|tools|stages)/\w+\.py$", w)), None)
    if script and (ROOT / script).exists():
        source = (ROOT / script).read_text()
        options = [w.split("=")[0] for w in argv[argv.index(script) + 1 :] if w.startswith("--")]
        found += [f"{script} {o}: no such option" for o in options if f'"{o}"' not in source]
    found += codexlm_problems(argv)
    keys = leaf_keys()
    for key in PARAM_SET.findall(command):
        if key not in keys:
            found.append(f"-S {key}: no such param")
    return found


def codexlm_problems(argv: list[str]) -> list[str]:
    """A `codexlm` command's subcommand and flags exist (code-eval's are the scorer's)."""
    from codexlm import cli

    at = next(
        (i for i, w in enumerate(argv) if w == "codexlm" and (i == 0 or argv[i - 1] == "-m")),
        None,
    )
    if at is None:  # not the command (`gto register codexlm`, `python -m codexlm.codeeval`)
        return []
    rest = argv[at + 1 :]
    subparsers = next(a for a in cli.parser()._actions if isinstance(a, argparse._SubParsersAction))
    if not rest:  # the command named in prose
        return []
    if rest[0] not in subparsers.choices:
        return [f"codexlm {rest[0]}: no such command"]
    sub = subparsers.choices[rest[0]]
    if rest[0] == "code-eval":
        from codexlm.codeeval import scoring

        flags = set(re.findall(r'"(--[\w-]+)"', Path(scoring.__file__).read_text()))
    else:
        flags = {o for a in sub._actions for o in a.option_strings}
    used = [w.split("=")[0] for w in rest[1:] if w.startswith("--")]
    return [f"codexlm {rest[0]} {f}: no such option" for f in used if f not in flags]


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_commands_name_only_what_exists(page: Path) -> None:
    assert [(c, p) for c in commands(page) for p in problems(c)] == []


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_paths_in_prose_exist(page: Path) -> None:
    """`src/...`, `tests/...::name`, `bench/...` quoted in the text name real files and tests."""
    spans = INLINE.findall(FENCE.sub("", page.read_text()))
    assert [(s, p) for s in spans for p in problems(s) if "no such file" in p or "test" in p] == []


def test_commands_are_found() -> None:
    assert {"make repro", "make verify-lock", "dvc exp run --run-all"} <= {
        c for page in PAGES for c in commands(page)
    }


def test_the_command_checks_fail_on_what_does_not_exist() -> None:
    assert problems("make reproduce") == ["make reproduce: no such target"]
    assert problems(".venv/bin/python bench/speedrun.py --budget time") == []
    assert problems(".venv/bin/python bench/speedrun.py --budjet time") == [
        "bench/speedrun.py --budjet: no such option"
    ]
    assert problems("pytest tests/test_docs.py::test_nothing_here") == [
        "tests/test_docs.py::test_nothing_here: no such test"
    ]
    assert problems("dvc exp run -S train.lrr=1") == ["-S train.lrr: no such param"]
    assert problems("python stages/nothing.py") == ["stages/nothing.py: no such file"]
    assert problems("codexlm serve models/export --port 1") == []
    assert problems("codexlm serve models/export --prot 1") == [
        "codexlm serve --prot: no such option"
    ]
    assert problems("codexlm train models/export") == ["codexlm train: no such command"]


# -- snippets that run -------------------------------------------------------------------------

RUN_MARK = "<!-- test: run -->"


def runnable() -> list[tuple[str, str, str]]:
    """(page, language, code) of each fenced block right after a `<!-- test: run -->` line."""
    found = []
    for page in PAGES:
        text = page.read_text()
        for m in re.finditer(re.escape(RUN_MARK) + r"\n```(\w+)\n(.*?)^```", text, re.M | re.S):
            found.append((rel(page), m.group(1), m.group(2)))
    return found


@pytest.mark.parametrize("snippet", runnable(), ids=lambda s: f"{s[0]}:{s[1]}")
def test_marked_snippets_run(snippet: tuple[str, str, str]) -> None:
    """Quick, read-only snippets, run from the repository root with the venv's Python first."""
    _, lang, code = snippet
    argv = [sys.executable, "-c", code] if lang == "python" else ["bash", "-euo", "pipefail"]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    stdin = None if lang == "python" else code
    proc = subprocess.run(
        argv, cwd=ROOT, input=stdin, capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr


def test_some_snippets_are_marked_to_run() -> None:
    assert len(runnable()) >= 2


def test_ci_runs_both_tiers_and_they_split_on_the_slow_marker() -> None:
    """`make test` leaves the `slow` tests out, so CI must run `make test-slow` too, or they
    would never run at all."""
    make = (ROOT / "Makefile").read_text()
    recipe = {
        t: re.search(rf"^{t}: .*\n\t(.*)$", make, re.M).group(1) for t in ("test", "test-slow")
    }
    assert recipe["test"].endswith('-m "not slow"') and recipe["test-slow"].endswith("-m slow")
    ci = [line.split("#")[0].strip() for line in (ROOT / ".ci/run").read_text().splitlines()]
    assert "make test" in ci and "make test-slow" in ci
