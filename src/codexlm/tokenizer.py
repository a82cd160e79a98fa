"""Train or load the tokenizer; encode splits into flat token files (the tokenize stage).

The tokenizer is byte-level BPE, so every string round-trips exactly. Token files are flat
uint16 (vocabulary < 65536) or uint32 arrays with documents separated by the end-of-text
token, written batch by batch so memory does not grow with the corpus.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm import tqdm
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from codexlm import chat, datakind, records
from codexlm.atomic import replace_dir, write_json
from codexlm.errors import UserError
from codexlm.hashing import file_sha256

EOT = "<|endoftext|>"
PAD = "<|pad|>"

# Special-token text inside a document ("<|endoftext|>" in a tokenizer's source, say) is
# ordinary text, encoded as its characters by the token files, evaluation and the exported
# tokenizer alike (`split_special_tokens`): the end-of-text id only ever comes from the
# pipeline (document separators, `eos_token_id`), never from what a document says.
SPLIT_SPECIAL_TOKENS = True

# tokenizer_config.json as every loader reads it: transformers 4.x knows no
# "TokenizersBackend" (the class name 5.x writes), returns token_type_ids (which `generate`
# rejects) unless told the input names, and batched generation needs left padding.
PORTABLE_CONFIG = {
    "tokenizer_class": "PreTrainedTokenizerFast",
    "model_input_names": ["input_ids", "attention_mask"],
    "padding_side": "left",
    "split_special_tokens": SPLIT_SPECIAL_TOKENS,
}
# how the tokenizer was last loaded, or which backend 5.x used: no business of the folder
LOADER_KEYS = ("is_local", "local_files_only", "backend")


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on `texts`, wrapped so AutoTokenizer can load it."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOT, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOT,
        eos_token=EOT,
        unk_token=None,
        pad_token=PAD,
        # HF's clean-up rewrites " ." as "." on decode, which breaks the round trip
        clean_up_tokenization_spaces=False,
    )


def load_pretrained(path: Path) -> PreTrainedTokenizerBase:
    """The tokenizer of a local checkpoint; a missing pad token becomes EOS (vocab unchanged)."""
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise UserError(
            f"model.init: no usable tokenizer in {path}: {str(e).splitlines()[0]}"
        ) from None
    if tok.eos_token is None:
        raise UserError(f"model.init: the tokenizer in {path} has no end-of-text (eos) token")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def save_tokenizer(tok: PreTrainedTokenizerBase, folder: Path) -> None:
    """`tok.save_pretrained(folder)` with a tokenizer_config.json that transformers 4.x and
    5.x, llama.cpp's converter and optimum all read the same way (see PORTABLE_CONFIG).

    A tokenizer with a chat template reads special-token text as the special tokens (its
    template's markup must encode as the ids trained; contents holding such text were
    dropped at tokenize), and keeps the template in tokenizer_config.json, where 4.x and 5.x
    both read it, with no `{% generation %}` markers (plain-Jinja consumers reject them)."""
    split = SPLIT_SPECIAL_TOKENS and not tok.chat_template
    tok.padding_side = PORTABLE_CONFIG["padding_side"]
    tok.split_special_tokens = split
    template = chat.portable_template(tok.chat_template) if tok.chat_template else None
    tok.save_pretrained(folder)
    (Path(folder) / "chat_template.jinja").unlink(missing_ok=True)  # 5.x's separate file
    path = Path(folder) / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    for key in LOADER_KEYS:
        config.pop(key, None)
    config.update(PORTABLE_CONFIG, split_special_tokens=split)
    extra = config.get("extra_special_tokens")
    if isinstance(extra, list):  # 5.x's list (the chat tokens); 4.x reads this key as a
        # dict of named tokens and fails on a list, and both read the older name
        config["additional_special_tokens"] = config.pop("extra_special_tokens")
    if template is not None:
        config["chat_template"] = template
    path.write_text(
        json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8"
    )


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


# While a batch is being encoded its Encoding objects cost ~45 bytes per byte of text
# (measured): bounding each batch's text, not its document count, bounds tokenize's memory
# whatever the documents' sizes, and 8M characters still give every core many documents.
ENCODE_BATCH_CHARS = 8_000_000


def by_size(batches: Iterable[list[str]], max_chars: int) -> Iterator[list[str]]:
    """The same documents in the same order, regrouped into batches of at most `max_chars`
    characters (a longer document forms a batch of its own)."""
    batch: list[str] = []
    size = 0
    for texts in batches:
        for t in texts:
            if batch and size + len(t) > max_chars:
                yield batch
                batch, size = [], 0
            batch.append(t)
            size += len(t)
    if batch:
        yield batch


def encode_split(
    tok: PreTrainedTokenizerBase, batches: Iterator[list[str]], out: Path, dtype: np.dtype
) -> tuple[int, int]:
    """Write the token file for one split; return (tokens, UTF-8 bytes) written."""
    # a copy that reads "<|endoftext|>" inside a document as text (SPLIT_SPECIAL_TOKENS): the
    # only end-of-text ids in a token file are the document separators written below
    backend = Tokenizer.from_str(tok.backend_tokenizer.to_str())
    backend.encode_special_tokens = SPLIT_SPECIAL_TOKENS
    eot = tok.eos_token_id
    n_tokens = n_bytes = 0
    tmp = out.with_name(f".{out.name}.tmp")
    with tmp.open("wb") as f:
        for texts in tqdm(
            by_size(batches, ENCODE_BATCH_CHARS), desc=f"tokenize {out.stem}", unit="batch"
        ):
            # runs on every core (Rayon); _fast skips the character offsets we never use
            for enc in backend.encode_batch_fast(texts, add_special_tokens=False):
                ids = np.asarray([*enc.ids, eot], dtype=dtype)
                f.write(ids.tobytes())
                n_tokens += len(ids)
            n_bytes += sum(len(t.encode("utf-8")) for t in texts)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out)
    return n_tokens, n_bytes


def evenly_spaced(batches: Iterable[list[str]], total_bytes: int, max_bytes: int) -> Iterator[str]:
    """Every k-th document, k the smallest that keeps about `max_bytes` of `total_bytes`.

    Spread over the whole split rather than its first documents, which for a folder source
    come from the first few directories. k = 1 (everything) when the split is small enough.
    """
    k = max(1, -(-total_bytes // max_bytes))
    docs = (t for batch in batches for t in batch)
    yield from itertools.islice(docs, 0, None, k)


def read_texts(path: Path, batch_size: int = 256) -> Iterator[list[str]]:
    """Stream a prepared split's texts in batches."""
    pf = pq.ParquetFile(path, pre_buffer=False)  # pre-buffering keeps every row group alive
    for batch in pf.iter_batches(columns=["text"], batch_size=batch_size):
        yield batch.column("text").to_pylist()


def encode_examples(
    tok: PreTrainedTokenizerBase, texts: Iterator[list[str]], out: Path, dtype: np.dtype
) -> dict[str, object]:
    """Write one split of instruction examples: `out` (the flat token ids of the renderings,
    one after the other), `out.mask.bin` (uint8, 1 where the token is a target) and
    `out.index.npy` (int64 start of every example, and the end); return the counts."""
    backend, eot = chat.encoder(tok), chat.end_of_turn(tok)
    starts, n_tokens, n_targets, n_bytes = [0], 0, 0, 0
    dropped: dict[str, int] = {"special_text": 0, "no_target": 0}
    mask_path = out.with_name(out.stem + ".mask.bin")
    tmp, tmp_mask = (p.with_name(f".{p.name}.tmp") for p in (out, mask_path))
    with tmp.open("wb") as f, tmp_mask.open("wb") as fm:
        for text in (t for batch in texts for t in batch):
            example = records.loads(text)
            if chat.holds_special_text(tok, example["messages"]):
                dropped["special_text"] += 1
                continue
            rendered, spans = chat.answer_spans(
                tok, example["messages"], example["train_from"], eot
            )
            enc = chat.encode(backend, rendered, spans)
            if not enc.targets[1:].any():  # the first token is never predicted
                dropped["no_target"] += 1
                continue
            f.write(np.asarray(enc.ids, dtype=dtype).tobytes())
            fm.write(enc.targets.astype(np.uint8).tobytes())
            n_tokens += len(enc.ids)
            n_targets += int(enc.targets[1:].sum())
            n_bytes += len(rendered.encode("utf-8"))
            starts.append(n_tokens)
        for handle in (f, fm):
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(tmp, out)
    os.replace(tmp_mask, mask_path)
    index = out.with_name(out.stem + ".index.npy")
    np.save(index.with_name(f".{index.name}.tmp.npy"), np.asarray(starts, dtype=np.int64))
    os.replace(index.with_name(f".{index.name}.tmp.npy"), index)
    return {
        "tokens": n_tokens,
        "bytes": n_bytes,
        "examples": len(starts) - 1,
        "targets": n_targets,
        "dropped": dropped,
    }


def tokenize(
    prepared: Path,
    init: str,
    vocab_size: int,
    min_frequency: int,
    tok_dir: Path,
    out_dir: Path,
    splits: tuple[str, ...] = ("train", "val", "test"),
    max_train_bytes: int | None = None,
) -> dict:
    """Train (init == "scratch") or load the tokenizer, save it, encode every split.

    BPE trains on the train split, or on evenly spaced documents of it when the split
    holds more than `max_train_bytes` of text (its time and memory grow with the text it
    reads; encoding streams and is not sampled).
    """
    if init == "scratch":
        batches = read_texts(prepared / "train.parquet")
        if max_train_bytes is None:
            texts: Iterable[str] = (t for batch in batches for t in batch)
        else:
            total = json.loads((prepared / "stats.json").read_text())["bytes"]["train"]
            texts = evenly_spaced(batches, total, max_train_bytes)
        tok = train_bpe(texts, vocab_size, min_frequency)
    else:
        tok = load_pretrained(Path(init))
    stats = json.loads((prepared / "stats.json").read_text())
    if datakind.of_stats(stats) == datakind.EXAMPLES:
        return tokenize_examples(tok, prepared, tok_dir, out_dir, splits)
    with replace_dir(tok_dir) as tmp:
        save_tokenizer(tok, tmp)
    vocab = len(tok)
    dtype = token_dtype(vocab)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {
        s: encode_split(tok, read_texts(prepared / f"{s}.parquet"), out_dir / f"{s}.bin", dtype)
        for s in splits
    }
    meta = {
        "dtype": dtype.name,
        "vocab_size": vocab,
        "eot_id": tok.eos_token_id,
        "pad_id": tok.pad_token_id,
        "tokens": {s: c[0] for s, c in counts.items()},
        "bytes": {s: c[1] for s, c in counts.items()},
        "bytes_per_token": {s: round(c[1] / max(c[0], 1), 4) for s, c in counts.items()},
        "sha256": {s: file_sha256(out_dir / f"{s}.bin") for s in splits},
        "tokenizer_sha256": file_sha256(tok_dir / "tokenizer.json"),
    }
    write_json(out_dir / "meta.json", meta)
    return meta


def tokenize_examples(
    tok: PreTrainedTokenizerBase,
    prepared: Path,
    tok_dir: Path,
    out_dir: Path,
    splits: tuple[str, ...] = ("train", "val", "test"),
) -> dict:
    """The tokenize stage on instruction data: the chat template (the tokenizer's own, or the
    project's ChatML with its tokens added), then every split's examples and masks."""
    before = len(tok)
    chat.ensure_template(tok)
    vocab = len(tok)
    added = list(range(before, vocab))  # the template's tokens, when the tokenizer lacked them
    dtype = token_dtype(vocab)
    out_dir.mkdir(parents=True, exist_ok=True)
    with replace_dir(tok_dir) as tmp:
        save_tokenizer(tok, tmp)
    counts = {
        s: encode_examples(tok, read_texts(prepared / f"{s}.parquet"), out_dir / f"{s}.bin", dtype)
        for s in splits
    }
    for s in ("train", "val"):
        if counts[s]["examples"] == 0:
            raise UserError(
                f"data.source: the {s} split has no example with a target after rendering "
                f"(dropped: {counts[s]['dropped']})"
            )
    files = [f"{s}{ext}" for s in splits for ext in (".bin", ".mask.bin", ".index.npy")]
    meta = {
        **datakind.meta_entry(datakind.EXAMPLES),
        "dtype": dtype.name,
        "vocab_size": vocab,
        "eot_id": tok.eos_token_id,
        "pad_id": tok.pad_token_id,
        "end_of_turn_id": tok.convert_tokens_to_ids(chat.end_of_turn(tok)),
        "added_ids": added,
        "chat_template": chat.template_name(tok.chat_template),
        **{k: {s: c[k] for s, c in counts.items()} for k in ("tokens", "bytes", "examples")},
        "targets": {s: c["targets"] for s, c in counts.items()},
        "dropped": {s: c["dropped"] for s, c in counts.items()},
        "sha256": {f: file_sha256(out_dir / f) for f in files},
        "tokenizer_sha256": file_sha256(tok_dir / "tokenizer.json"),
    }
    write_json(out_dir / "meta.json", meta)
    return meta
