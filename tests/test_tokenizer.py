"""Byte-level BPE: lossless round trip, loadable by transformers, exact and stable token files."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from codexlm.corpus import SPLITS, prepare
from codexlm.errors import UserError
from codexlm.tokenizer import (
    EOT,
    LOADER_KEYS,
    PAD,
    PORTABLE_CONFIG,
    by_size,
    evenly_spaced,
    load_pretrained,
    save_tokenizer,
    token_dtype,
    tokenize,
    train_bpe,
)

TRICKY = [
    "def f(x):\r\n\treturn x\r\n",
    "\tindented\twith\ttabs\n\n\n",
    "a . b , c ; d ( e ) f . ",
    " leading and trailing spaces  ",
    "x = 'café naïve résumé' # ünïcödé",
    "中文注释 and 日本語 and 한국어",
    "emoji 🙂🚀 and a family 👩\u200d👩\u200d👧 and flags 🇫🇷",
    "weird \u00a0 nbsp \u200b zero width \x0b vt \x0c ff",
    "don't won't it's 'quoted' \"double\"",
    "    return self.items[-1] if self.items else None\n",
    "a document that quotes <|endoftext|> and <|pad|> as text",
    "",
]


def corpus_texts() -> list[str]:
    texts = [
        f"def function_{i}(x, y):\n    '''Add {i}.'''\n    return x + y * {i}\n" for i in range(60)
    ]
    texts += [t * 3 for t in TRICKY if t]
    return texts


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared corpus and its tokenizer and token files."""
    root = tmp_path_factory.mktemp("tok")
    src = root / "src"
    src.mkdir()
    for i, text in enumerate(corpus_texts()):
        (src / f"doc_{i:03d}.py").write_bytes(text.encode("utf-8"))
    prepare(
        source=str(src),
        include=["**/*.py"],
        text_column="text",
        min_chars=10,
        max_chars=100_000,
        val_fraction=0.2,
        test_fraction=0.2,
        scrub_secrets=True,
        out_dir=root / "prepared",
        workers=1,
    )
    tokenize(root / "prepared", "scratch", 300, 2, root / "tokenizer", root / "tokens")
    return root


def split_texts(prepared: Path, split: str) -> list[str]:
    return pq.read_table(prepared / f"{split}.parquet").column("text").to_pylist()


def meta_of(built: Path) -> dict:
    return json.loads((built / "tokens" / "meta.json").read_text())


def test_train_bpe_round_trips_tricky_strings() -> None:
    tok = train_bpe(corpus_texts(), vocab_size=300, min_frequency=2)
    assert len(tok) == 300
    for text in TRICKY:
        ids = tok.backend_tokenizer.encode(text, add_special_tokens=False).ids
        assert tok.decode(ids) == text
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_unseen_characters_still_round_trip() -> None:
    # byte-level: characters never seen in training are encoded as bytes, never <unk>
    tok = train_bpe(["only ascii here " * 20], vocab_size=280, min_frequency=2)
    text = "ŝ 🦜 ∑ \U0010ffff"
    ids = tok.backend_tokenizer.encode(text, add_special_tokens=False).ids
    assert tok.decode(ids) == text


def test_saved_tokenizer_loads_with_auto_tokenizer(built: Path) -> None:
    tok = AutoTokenizer.from_pretrained(built / "tokenizer")
    meta = meta_of(built)
    assert tok.eos_token == EOT and tok.pad_token == PAD
    assert tok.eos_token_id == meta["eot_id"] and tok.pad_token_id == meta["pad_id"]
    assert tok.pad_token_id != tok.eos_token_id
    assert len(tok) == meta["vocab_size"] == 300
    for text in TRICKY[:-2]:
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    # the reloaded tokenizer encodes exactly as the token files were written
    train = split_texts(built / "prepared", "train")
    ids = np.fromfile(built / "tokens" / "train.bin", dtype=meta["dtype"])
    first = tok(train[0], add_special_tokens=False)["input_ids"]
    assert ids[: len(first)].tolist() == first and ids[len(first)] == meta["eot_id"]


def test_load_pretrained_keeps_vocabulary(built: Path) -> None:
    tok = load_pretrained(built / "tokenizer")
    assert len(tok) == 300 and tok.eos_token == EOT


def test_load_pretrained_without_tokenizer(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"^model\.init: "):
        load_pretrained(tmp_path)


@pytest.mark.parametrize("split", SPLITS)
def test_token_files_hold_the_prepared_texts(built: Path, split: str) -> None:
    meta = meta_of(built)
    assert meta["dtype"] == "uint16"
    path = built / "tokens" / f"{split}.bin"
    ids = np.fromfile(path, dtype=np.uint16)
    assert path.stat().st_size == 2 * meta["tokens"][split] == 2 * len(ids)
    texts = split_texts(built / "prepared", split)
    assert texts, "every split holds documents"
    # documents are separated by end-of-text, and only by it (a document may quote it)
    eot = meta["eot_id"]
    assert ids[-1] == eot
    assert int((ids == eot).sum()) == len(texts)
    assert meta["pad_id"] not in ids
    tok = AutoTokenizer.from_pretrained(built / "tokenizer")
    docs = np.split(ids, np.flatnonzero(ids == eot) + 1)[:-1]
    assert [tok.decode(d[:-1].tolist()) for d in docs] == texts
    assert tok.decode(ids.tolist()) == "".join(t + EOT for t in texts)
    assert meta["bytes"][split] == sum(len(t.encode("utf-8")) for t in texts)
    assert meta["bytes_per_token"][split] == round(meta["bytes"][split] / len(ids), 4)


def test_quoted_special_tokens_are_text(built: Path) -> None:
    meta = meta_of(built)
    tok = AutoTokenizer.from_pretrained(built / "tokenizer")
    quoting = [t for s in SPLITS for t in split_texts(built / "prepared", s) if EOT in t]
    assert len(quoting) == 1
    ids = [np.fromfile(built / "tokens" / f"{s}.bin", dtype=np.uint16) for s in SPLITS]
    n_docs = sum(len(split_texts(built / "prepared", s)) for s in SPLITS)
    # one end-of-text id per document: the quoted ones were encoded as plain text
    assert sum(int((i == meta["eot_id"]).sum()) for i in ids) == n_docs
    decoded = "".join(tok.decode(i.tolist()) for i in ids)
    assert decoded.count(EOT) == n_docs + quoting[0].count(EOT) == n_docs + 3


def test_quoted_special_tokens_same_ids_in_token_files_and_tokenizer(built: Path) -> None:
    """The saved tokenizer reads quoted special-token text as the token files did (as text,
    `split_special_tokens`), so what evaluation and the export encode is what was trained."""
    meta = meta_of(built)
    tok = AutoTokenizer.from_pretrained(built / "tokenizer")
    for split in SPLITS:
        ids = np.fromfile(built / "tokens" / f"{split}.bin", dtype=np.uint16)
        docs = np.split(ids, np.flatnonzero(ids == meta["eot_id"]) + 1)[:-1]
        for doc, text in zip(docs, split_texts(built / "prepared", split), strict=True):
            assert tok(text)["input_ids"] == doc[:-1].tolist()
    assert tok("<|endoftext|>")["input_ids"] != [meta["eot_id"]]
    assert tok.decode(tok("a <|endoftext|> b")["input_ids"]) == "a <|endoftext|> b"


def test_saved_tokenizer_config_is_portable(built: Path) -> None:
    """What transformers 4.x needs (a class it knows, no token_type_ids) and left padding
    for batched generation; nothing about how it was loaded (tests/test_export.py checks
    the same folder under transformers 4.57 itself)."""
    config = json.loads((built / "tokenizer" / "tokenizer_config.json").read_text())
    assert {k: config[k] for k in PORTABLE_CONFIG} == PORTABLE_CONFIG
    assert not set(LOADER_KEYS) & set(config)
    tok = AutoTokenizer.from_pretrained(built / "tokenizer")
    assert tok.padding_side == "left" and tok.split_special_tokens
    assert set(tok(["a", "bb"], padding=True)) == {"input_ids", "attention_mask"}
    # re-saving a loaded tokenizer (what export does) writes the same portable file
    resaved = built / "resaved"
    save_tokenizer(tok, resaved)
    assert (resaved / "tokenizer_config.json").read_text() == (
        built / "tokenizer" / "tokenizer_config.json"
    ).read_text()


def test_meta_checksums_match_files(built: Path) -> None:
    meta = meta_of(built)
    for s in SPLITS:
        digest = hashlib.sha256((built / "tokens" / f"{s}.bin").read_bytes()).hexdigest()
        assert meta["sha256"][s] == digest
    tok_json = (built / "tokenizer" / "tokenizer.json").read_bytes()
    assert meta["tokenizer_sha256"] == hashlib.sha256(tok_json).hexdigest()
    assert not list((built / "tokens").glob(".*"))  # no temp files left


def test_two_runs_are_byte_identical(built: Path, tmp_path: Path) -> None:
    tokenize(built / "prepared", "scratch", 300, 2, tmp_path / "tokenizer", tmp_path / "tokens")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "tokenizer" / name).read_bytes() == (
            built / "tokenizer" / name
        ).read_bytes()
    for name in ("train.bin", "val.bin", "test.bin", "meta.json"):
        assert (tmp_path / "tokens" / name).read_bytes() == (built / "tokens" / name).read_bytes()


def test_tokenizer_is_trained_on_train_only(built: Path, tmp_path: Path) -> None:
    # changing val/test texts must not change the tokenizer
    prepared = tmp_path / "prepared"
    shutil.copytree(built / "prepared", prepared)
    for s in ("val", "test"):
        table = pq.read_table(prepared / f"{s}.parquet")
        texts = ["zzzz qqqq zzzz qqqq " * 50 for _ in range(table.num_rows)]
        pq.write_table(table.set_column(1, "text", pa.array(texts)), prepared / f"{s}.parquet")
    tokenize(prepared, "scratch", 300, 2, tmp_path / "tokenizer", tmp_path / "tokens")
    assert (tmp_path / "tokenizer" / "tokenizer.json").read_bytes() == (
        built / "tokenizer" / "tokenizer.json"
    ).read_bytes()


def test_by_size_regroups_without_reordering() -> None:
    batches = [["aaaa", "bb"], ["c" * 10, "dd", "e"], ["ff"]]
    out = list(by_size(iter(batches), 6))
    assert out == [["aaaa", "bb"], ["c" * 10], ["dd", "e", "ff"]]  # the long one alone
    assert [t for b in out for t in b] == [t for b in batches for t in b]
    assert list(by_size(iter([]), 6)) == []


def test_evenly_spaced_sample() -> None:
    batches = [[f"doc{i:02d}....." for i in range(j, j + 5)] for j in (0, 5)]  # 10 x 10 bytes
    assert list(evenly_spaced(iter(batches), 100, 30)) == ["doc00.....", "doc04.....", "doc08....."]
    assert len(list(evenly_spaced(iter(batches), 100, 100))) == 10  # small enough: everything
    assert len(list(evenly_spaced(iter(batches), 100, 10**9))) == 10


def test_bpe_sample_cap_samples_training_not_encoding(built: Path, tmp_path: Path) -> None:
    """Above max_train_bytes the tokenizer learns from a sample; every split is still
    encoded whole, and a cap above the split's size changes nothing."""
    full = meta_of(built)
    big = tokenize(
        built / "prepared",
        "scratch",
        300,
        2,
        tmp_path / "tok1",
        tmp_path / "t1",
        max_train_bytes=10**9,
    )
    assert (tmp_path / "tok1" / "tokenizer.json").read_bytes() == (
        built / "tokenizer" / "tokenizer.json"
    ).read_bytes()
    assert big["sha256"] == full["sha256"]
    small = tokenize(
        built / "prepared",
        "scratch",
        300,
        2,
        tmp_path / "tok2",
        tmp_path / "t2",
        max_train_bytes=full["bytes"]["train"] // 4,
    )
    assert (tmp_path / "tok2" / "tokenizer.json").read_bytes() != (
        built / "tokenizer" / "tokenizer.json"
    ).read_bytes()
    assert small["bytes"] == full["bytes"]  # encoding read every document
    assert small["tokens"]["train"] > full["tokens"]["train"]  # learnt from less text


def test_pretrained_init_reuses_its_tokenizer(built: Path, tmp_path: Path) -> None:
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(built / "tokenizer", checkpoint)
    meta = tokenize(
        built / "prepared", str(checkpoint), 9999, 2, tmp_path / "tokenizer", tmp_path / "tokens"
    )
    assert meta["vocab_size"] == 300  # the checkpoint's, not tokenizer.vocab_size
    for s in SPLITS:
        assert (tmp_path / "tokens" / f"{s}.bin").read_bytes() == (
            built / "tokens" / f"{s}.bin"
        ).read_bytes()


def test_larger_vocabulary_compresses_better(built: Path, tmp_path: Path) -> None:
    meta = tokenize(built / "prepared", "scratch", 600, 2, tmp_path / "tok", tmp_path / "tokens")
    small = meta_of(built)
    assert meta["vocab_size"] > small["vocab_size"]
    assert meta["tokens"]["train"] < small["tokens"]["train"]
    assert meta["bytes"] == small["bytes"]


@pytest.mark.parametrize(
    ("vocab", "dtype"),
    [
        (260, np.uint16),
        (65_535, np.uint16),
        (65_536, np.uint16),
        (65_537, np.uint32),
        (100_277, np.uint32),
        (1_000_000, np.uint32),
    ],
)
def test_token_dtype(vocab: int, dtype: type) -> None:
    chosen = token_dtype(vocab)
    assert chosen == np.dtype(dtype)
    # every id of the vocabulary fits
    assert np.iinfo(chosen).max >= vocab - 1
