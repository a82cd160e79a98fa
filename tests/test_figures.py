"""Every measured figure has one home, and a copy elsewhere says where it is from and must
equal it.

The homes: the JSON files under `reports/` (what the locked pipeline computed) and
`bench/RESULTS.md` (what the benchmarks measured, each with its machine). A figure quoted in
README.md, docs/*.md or bench/*.md is followed, with no space, by an HTML comment naming its
home (invisible where the Markdown is rendered):

    **1.5907<!-- fig reports/evaluate/metrics.json test.bits_per_byte -->**
    3.5<!-- fig bench/RESULTS.md pipeline-minutes --> min

A JSON home is a file and a dotted key; its value, rounded to the quote's decimals, must read
as the quote. A RESULTS.md home is an id that RESULTS.md defines once, after the figure
itself (`3.5<!-- figure pipeline-minutes -->`); the quote must read as that figure. The
lead's relock rewrites reports/: a quote left behind then fails here, naming the file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import ROOT

NUMBER = r"[-+]?\d[\d,]*(?:\.\d+)?"
QUOTE = re.compile(rf"({NUMBER})<!-- fig (\S+) (\S+) -->")
DEFINITION = re.compile(rf"({NUMBER})<!-- figure (\S+) -->")
RESULTS = "bench/RESULTS.md"
HEADLINE = ("reports/evaluate/metrics.json", "test.bits_per_byte")


def pages() -> list[Path]:
    return [
        ROOT / "README.md",
        *sorted((ROOT / "docs").glob("*.md")),
        *(ROOT / "bench").glob("*.md"),
    ]


def quotes(text: str) -> list[tuple[str, str, str]]:
    """(figure, home, key) of every marked quote in a page."""
    return QUOTE.findall(text)


def definitions(text: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for figure, key in DEFINITION.findall(text):
        assert key not in found, f"{RESULTS}: figure {key!r} defined twice"
        found[key] = figure
    return found


def json_value(home: Path, key: str) -> float:
    value = json.loads(home.read_text(encoding="utf-8"))
    for part in key.split("."):
        value = value[part]
    return float(value)


def as_quoted(value: float, quote: str) -> str:
    """The home's value written as the quote writes it: its decimals, its thousands commas."""
    decimals = len(quote.split(".")[1]) if "." in quote else 0
    return f"{value:,.{decimals}f}" if "," in quote else f"{value:.{decimals}f}"


def mismatch(figure: str, home: str, key: str, root: Path = ROOT) -> str | None:
    """None when the quote reads as its home; else what differs, in one line."""
    path = root / home
    if not path.is_file():
        return f"{home}: no such file"
    if home == RESULTS:
        defined = definitions(path.read_text(encoding="utf-8")).get(key)
        if defined is None:
            return f"{home}: no figure {key!r} (`<!-- figure {key} -->`)"
        return None if defined == figure else f"{home} {key} is {defined}, quoted {figure}"
    if path.suffix != ".json":
        return f"{home}: a figure's home is {RESULTS} or a JSON file"
    try:
        want = as_quoted(json_value(path, key), figure)
    except (KeyError, TypeError, ValueError):
        return f"{home}: no number at {key}"
    return None if want == figure else f"{home} {key} is {want}, quoted {figure}"


ALL = [(p.relative_to(ROOT).as_posix(), *q) for p in pages() for q in quotes(p.read_text())]


@pytest.mark.parametrize(
    ("page", "figure", "home", "key"), ALL, ids=[f"{q[0]}:{q[3]}" for q in ALL]
)
def test_a_quoted_figure_is_its_homes(page: str, figure: str, home: str, key: str) -> None:
    assert mismatch(figure, home, key) is None, page


def test_the_readme_quotes_the_headline_from_the_lock() -> None:
    """The README's headline bits per byte is a checked quote of what the lock computed, and
    README and docs hold no unmarked copy of it (a copy is how figures drifted; RESULTS.md's
    record logs keep their own runs' figures, some of which read the same)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert any((h, k) == HEADLINE for _, h, k in quotes(readme))
    figure = as_quoted(json_value(ROOT / HEADLINE[0], HEADLINE[1]), "0.0000")
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = QUOTE.sub("", page.read_text(encoding="utf-8"))
        assert figure not in text, f"{page.relative_to(ROOT)}: an unmarked {figure}"


def test_a_marked_quote_that_differs_is_reported(tmp_path: Path) -> None:
    """The check can fail: a quote one digit off its JSON home, or off its RESULTS.md figure,
    or naming a key the home lacks."""
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports/m.json").write_text('{"test": {"bpb": 1.59067}}')
    (tmp_path / "bench").mkdir()
    (tmp_path / RESULTS).write_text("ratio **1.172<!-- figure ratio -->**, 3,466<!-- figure n -->")
    assert mismatch("1.5907", "reports/m.json", "test.bpb", tmp_path) is None
    assert mismatch("1.591", "reports/m.json", "test.bpb", tmp_path) is None
    assert "is 1.5907, quoted 1.5906" in mismatch("1.5906", "reports/m.json", "test.bpb", tmp_path)
    assert "no number" in mismatch("1.5907", "reports/m.json", "val.bpb", tmp_path)
    assert mismatch("1.172", RESULTS, "ratio", tmp_path) is None
    assert mismatch("3,466", RESULTS, "n", tmp_path) is None
    assert "is 1.172, quoted 1.171" in mismatch("1.171", RESULTS, "ratio", tmp_path)
    assert "no figure" in mismatch("1.172", RESULTS, "other", tmp_path)
    assert quotes("x **1.5907<!-- fig reports/m.json test.bpb --> ± 0.047**") == [
        ("1.5907", "reports/m.json", "test.bpb")
    ]
