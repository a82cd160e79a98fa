"""Evaluation: bits per byte from exact byte counts for any tokenizer, every token scored,
its standard error across documents, whole documents under max_tokens, the xz baseline on
the same bytes, and a one-line refusal of token files that do not match the prepared text."""

from __future__ import annotations

import json
import lzma
import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from conftest import model_args, run
from tokenizers import pre_tokenizers

from codexlm.corpus import SCHEMA, SPLITS
from codexlm.errors import UserError
from codexlm.evaluate import (
    SEPARATOR,
    SplitResult,
    bits_per_byte_se,
    documents_within,
    evaluate_split,
    headline_metrics,
    split_details,
)
from codexlm.model import build_model
from codexlm.tokenizer import load_pretrained, tokenize, train_bpe

CONTEXT = 16
# documents with non-ASCII text (bytes != characters), spaces before punctuation, a leading
# space, and one shorter than a window, one longer than several
DOCS = [
    "def café(x):\n    return x , 'é' . strip()\n",
    " leading space and 🚀 rocket\n",
    "a = 1\n",
    "class Stack:\n    def push(self, x):\n        self.items.append(x)\n" * 4,
    "print ( 'naïve' ) ; print ( \"x\" )\n",
    "z",
]


def write_split(prepared: Path, split: str, texts: list[str]) -> None:
    names = [f"{split}_{i}.py" for i in range(len(texts))]
    pq.write_table(
        pa.table({"name": names, "text": texts}, schema=SCHEMA), prepared / f"{split}.parquet"
    )


@pytest.fixture(scope="module", params=["bpe", "prefix_space"])
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """Prepared splits, token files from a `model.init` tokenizer (the byte-level BPE as
    trained, or the same with add_prefix_space, whose decode adds a space per document), and
    a tiny random llama."""
    root = tmp_path_factory.mktemp(f"eval-{request.param}")
    prepared = root / "prepared"
    prepared.mkdir()
    for split in SPLITS:
        write_split(prepared, split, DOCS)
    (prepared / "stats.json").write_text("{}")  # prepare writes one; text data has no format
    tok = train_bpe(DOCS * 10, vocab_size=300, min_frequency=2)
    if request.param == "prefix_space":
        tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    init = root / "init"
    tok.save_pretrained(init)
    tokenize(prepared, str(init), 300, 2, root / "tokenizer", root / "tokens")
    tok = load_pretrained(root / "tokenizer")
    model = build_model(
        model_args(n_layer=1, n_head=2, d_model=32, context=CONTEXT),
        len(tok),
        tok.eos_token_id,
        tok.pad_token_id,
        0,
    ).eval()
    return root, tok, model


def by_hand(model, tok, texts: list[str]) -> tuple[np.ndarray, int, list[int]]:
    """Per-document nats of every token (each document's, and its end-of-text), scored in
    consecutive windows of CONTEXT over [eot] + the token file, one window at a time."""
    eot = tok.eos_token_id
    ids, owner = [], []
    for d, t in enumerate(texts):
        doc = [*tok.backend_tokenizer.encode(t, add_special_tokens=False).ids, eot]
        ids += doc
        owner += [d] * len(doc)
    stream = [eot, *ids]
    nats = np.zeros(len(texts))
    with torch.no_grad():
        for s in range(0, len(stream) - 1, CONTEXT):
            x = torch.tensor([stream[s : s + CONTEXT]])
            y = stream[s + 1 : s + CONTEXT + 1]
            logp = F.log_softmax(model(input_ids=x).logits[0, : len(y)].double(), -1)
            for j, target in enumerate(y):
                nats[owner[s + j]] -= float(logp[j, target])
    return nats, len(ids), ids


def test_bits_per_byte_is_nats_over_exact_bytes(setup) -> None:
    root, tok, model = setup
    r = evaluate_split(model, root / "tokens", root / "prepared", "test", CONTEXT, 3, "cpu")
    nats, n_tokens, ids = by_hand(model, tok, DOCS)
    n_bytes = sum(len(t.encode("utf-8")) + 1 for t in DOCS)
    assert r.tokens == n_tokens == len(np.fromfile(root / "tokens/test.bin", np.uint16))
    assert r.bytes == n_bytes and r.documents == len(DOCS)
    assert r.bits_per_byte == pytest.approx(nats.sum() / (math.log(2) * n_bytes), rel=1e-5)
    assert r.loss == pytest.approx(nats.sum() / n_tokens, rel=1e-5)
    assert r.bits_per_byte_se == pytest.approx(
        bits_per_byte_se(nats, [len(t.encode()) + 1 for t in DOCS]), rel=1e-4
    )
    # xz on exactly those bytes: the documents, each followed by the separator
    data = b"".join(t.encode("utf-8") + SEPARATOR for t in DOCS)
    assert len(data) == n_bytes
    assert r.xz_bits_per_byte == 8 * len(lzma.compress(data, preset=9)) / n_bytes
    # the old count decoded the tokens: one space too many per document with a prefix space
    decoded = len(tok.decode(ids, skip_special_tokens=True).encode("utf-8"))
    prefix = sum(not t.startswith(" ") for t in DOCS)
    if tok.backend_tokenizer.pre_tokenizer.add_prefix_space:
        assert decoded == n_bytes - len(DOCS) + prefix
    else:
        assert decoded == n_bytes - len(DOCS)


def test_standard_error_formula() -> None:
    nats = [10.0, 30.0, 5.0, 12.0]
    n_bytes = [10, 20, 10, 8]
    ratio = sum(nats) / sum(n_bytes)
    squares = sum((a - ratio * b) ** 2 for a, b in zip(nats, n_bytes, strict=True))
    want = math.sqrt(4 / 3 * squares) / sum(n_bytes) / math.log(2)
    assert bits_per_byte_se(np.array(nats), np.array(n_bytes)) == pytest.approx(want, rel=1e-12)
    # documents that all compress at the same rate: no spread
    assert bits_per_byte_se(np.array([2.0, 4.0, 8.0]), np.array([1, 2, 4])) == 0.0
    assert math.isnan(bits_per_byte_se(np.array([3.0]), np.array([4])))


@pytest.mark.parametrize(
    ("max_tokens", "docs"), [(1, 1), (0, None), (10**9, None), ("first+1", 1), ("two", 2)]
)
def test_max_tokens_scores_whole_documents(setup, max_tokens, docs) -> None:
    root, tok, model = setup
    tokens = np.fromfile(root / "tokens/test.bin", np.uint16)
    ends = np.flatnonzero(tokens == tok.eos_token_id).tolist()
    assert len(ends) == len(DOCS)
    if max_tokens == "first+1":  # the first document and part of the second
        max_tokens = ends[0] + 2
    elif max_tokens == "two":  # exactly the first two documents' tokens
        max_tokens = ends[1] + 1
    docs = docs or len(DOCS)
    assert documents_within(np.array(ends), max_tokens) == docs
    r = evaluate_split(
        model, root / "tokens", root / "prepared", "test", CONTEXT, 2, "cpu", max_tokens
    )
    nats, _, _ = by_hand(model, tok, DOCS[:docs])
    assert r.documents == docs and r.tokens == ends[docs - 1] + 1
    assert r.bytes == sum(len(t.encode()) + 1 for t in DOCS[:docs])
    assert r.bits_per_byte == pytest.approx(nats.sum() / (math.log(2) * r.bytes), rel=1e-5)


def test_token_file_that_does_not_match_the_documents(setup, tmp_path: Path) -> None:
    root, _, model = setup
    prepared = tmp_path / "prepared"
    shutil.copytree(root / "prepared", prepared)
    write_split(prepared, "test", DOCS[:-1])
    with pytest.raises(UserError, match=r"5 documents .*rerun dvc repro tokenize"):
        evaluate_split(model, root / "tokens", prepared, "test", CONTEXT, 2, "cpu")


def test_mismatch_is_one_line_from_the_stage(built: Path, tmp_path: Path) -> None:
    """The stage itself: exit code 2 and one line naming both files, nothing written."""
    repo = tmp_path / "repo"
    shutil.copytree(built, repo, symlinks=True, ignore=shutil.ignore_patterns(".dvc"))
    shutil.rmtree(repo / "reports/evaluate")
    table = pq.read_table(repo / "data/prepared/test.parquet")
    pq.write_table(table.slice(0, table.num_rows - 1), repo / "data/prepared/test.parquet")
    proc = run(["python", "stages/evaluate_stage.py"], repo, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len([ln for ln in lines if ln.startswith("error:")]) == 1
    err = next(ln for ln in lines if ln.startswith("error:"))
    assert "data/tokens/test.bin" in err and "data/prepared/test.parquet" in err
    assert "rerun dvc repro tokenize" in err and "Traceback" not in proc.stderr
    assert not (repo / "reports/evaluate/metrics.json").exists()


def test_metrics_json_carries_the_standard_error(built: Path) -> None:
    metrics = json.loads((built / "reports/evaluate/metrics.json").read_text())
    details = json.loads((built / "reports/evaluate/details.json").read_text())
    test = details["test"]
    assert metrics["test"]["bits_per_byte_se"] == pytest.approx(test["bits_per_byte_se"])
    assert metrics["test"]["documents"] == test["documents"] > 1
    assert 0 < test["bits_per_byte_se"] < test["bits_per_byte"]
    stats = json.loads((built / "data/prepared/stats.json").read_text())
    assert test["documents"] == stats["documents"]["test"]
    assert test["bytes"] == stats["bytes"]["test"] + stats["documents"]["test"]
    report = (built / "reports/evaluate/report.md").read_text()
    assert "± SE" in report and f"{test['bits_per_byte_se']:.4f}" in report


def split_result(documents: int, se: float) -> SplitResult:
    return SplitResult(
        loss=2.0,
        perplexity=math.exp(2.0),
        bits_per_byte=1.5,
        bits_per_byte_se=se,
        accuracy=0.3,
        tokens=100,
        bytes=300,
        documents=documents,
        xz_bits_per_byte=1.8,
        loss_by_position=[2.0],
    )


def test_the_headline_metrics_are_what_experiments_compare() -> None:
    """metrics.json's keys, in order; a NaN standard error (one test document) is left out,
    since JSON has no NaN; details keep every finite figure of both splits."""
    results = {"test": split_result(1, math.nan), "val": split_result(5, 0.1)}
    headline = headline_metrics(results, train_tokens_per_s=1234.5)
    assert list(headline) == [
        "test/bits_per_byte",
        "test/documents",
        "test/perplexity",
        "test/loss",
        "test/accuracy",
        "val/loss",
        "baseline/xz_bits_per_byte",
        "train/tokens_per_s",
    ]
    assert headline["test/bits_per_byte"] == 1.5 and headline["train/tokens_per_s"] == 1234.5
    assert (
        headline_metrics({**results, "test": split_result(5, 0.1)}, 0.0)["test/bits_per_byte_se"]
        == 0.1
    )
    details = split_details(results)
    assert "bits_per_byte_se" not in details["test"] and details["val"]["bits_per_byte_se"] == 0.1
