"""Evaluation: loss, perplexity, bits per byte (with its standard error across documents)
and accuracy per split; the xz baseline; loss by position; sampled completions; figures and
a report a person reads.

The text a split stands for is its documents (data/prepared/{split}.parquet), each followed
by one separator byte, which the end-of-text token after each document in the token file
codes. Every token is scored, the first document's first token too (given an end-of-text as
context, as every later document has), and bits per byte is the total of their nats over
ln 2 times the UTF-8 bytes of the documents plus one per separator: byte counts from the
documents' text, not from decoding tokens, so it is exact for any tokenizer. `xz -9`
compresses exactly those bytes.
"""

from __future__ import annotations

import csv
import json
import lzma
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from codexlm.batches import load_tokens, sequential_batches
from codexlm.errors import MachineFault, UserError, is_out_of_memory
from codexlm.loss import model_inputs
from codexlm.metrics import bits_per_byte
from codexlm.packing import document_rows

# The byte each document is followed by in the evaluated text (what the end-of-text token
# codes). NUL, because prepare drops every document that contains one (as binary): the byte
# stream then decodes back to exactly the documents and their boundaries, as the token stream
# does. A newline would be ambiguous (documents contain newlines and most end with one).
SEPARATOR = b"\0"
_READ_BATCH = 1024  # documents per parquet read
_SCAN_CHUNK = 1 << 24  # tokens per scan for end-of-text ids (bounds the scan's memory)


@dataclass(frozen=True)
class SplitResult:
    loss: float
    perplexity: float
    bits_per_byte: float
    bits_per_byte_se: float  # NaN with fewer than two documents
    accuracy: float
    tokens: int
    bytes: int
    documents: int
    xz_bits_per_byte: float
    loss_by_position: list[float]

    def metrics(self) -> dict[str, float]:
        return {
            "loss": self.loss,
            "perplexity": self.perplexity,
            "bits_per_byte": self.bits_per_byte,
            "bits_per_byte_se": self.bits_per_byte_se,
            "accuracy": self.accuracy,
            "xz_bits_per_byte": self.xz_bits_per_byte,
            "tokens": self.tokens,
            "bytes": self.bytes,
            "documents": self.documents,
        }


def xz_bits_per_byte(chunks: Iterable[bytes]) -> float:
    """What `xz -9` (LZMA preset 9) needs per byte of the same text: a baseline to beat.
    The text comes in chunks (one document at a time), compressed as one stream."""
    xz, size, n = lzma.LZMACompressor(preset=9), 0, 0
    for chunk in chunks:
        n += len(chunk)
        size += len(xz.compress(chunk))
    size += len(xz.flush())
    return 8 * size / max(n, 1)


def bits_per_byte_se(nats: np.ndarray, n_bytes: np.ndarray) -> float:
    """Standard error of the pooled bits per byte across documents (ratio estimator):
    sqrt(n/(n-1) * sum_i (nats_i - R*bytes_i)^2) / sum_i bytes_i / ln 2, R = sum nats / sum
    bytes. NaN for fewer than two documents."""
    n = len(nats)
    if n < 2:
        return math.nan
    nats, n_bytes = np.asarray(nats, np.float64), np.asarray(n_bytes, np.float64)
    ratio = nats.sum() / n_bytes.sum()
    resid = nats - ratio * n_bytes
    return math.sqrt(n / (n - 1) * float(resid @ resid)) / float(n_bytes.sum()) / math.log(2)


def _texts(parquet: Path) -> Iterator[list[str]]:
    pf = pq.ParquetFile(parquet, pre_buffer=False)  # pre-buffering keeps every row group alive
    for batch in pf.iter_batches(columns=["text"], batch_size=_READ_BATCH):
        yield batch.column("text").to_pylist()


def document_bytes(parquet: Path) -> np.ndarray:
    """Each document's UTF-8 bytes plus one for its separator, in file order (streamed)."""
    pf = pq.ParquetFile(parquet, pre_buffer=False)
    parts = [
        pc.binary_length(batch.column("text")).to_numpy(zero_copy_only=False)
        for batch in pf.iter_batches(columns=["text"], batch_size=_READ_BATCH)
    ]
    lengths = np.concatenate(parts) if parts else np.zeros(0)
    return lengths.astype(np.int64) + len(SEPARATOR)


def separated_texts(parquet: Path, n_docs: int) -> Iterator[bytes]:
    """The first n_docs documents as the evaluated bytes: each followed by SEPARATOR."""
    done = 0
    for texts in _texts(parquet):
        for t in texts[: n_docs - done]:
            yield t.encode("utf-8") + SEPARATOR
        done += min(len(texts), n_docs - done)
        if done >= n_docs:
            return


def eot_positions(tokens: np.ndarray, eot: int) -> np.ndarray:
    """Indices of the end-of-text ids in the token file (scanned in chunks)."""
    found = [
        np.flatnonzero(np.asarray(tokens[i : i + _SCAN_CHUNK]) == eot) + i
        for i in range(0, len(tokens), _SCAN_CHUNK)
    ]
    return np.concatenate(found).astype(np.int64) if found else np.zeros(0, np.int64)


def documents_within(ends: np.ndarray, max_tokens: int) -> int:
    """How many whole documents (each up to its end-of-text) the first max_tokens tokens
    hold: at least one, all of them for max_tokens 0."""
    if max_tokens <= 0:
        return len(ends)
    return max(1, int(np.searchsorted(ends + 1, max_tokens, side="right")))


@torch.no_grad()
def forward(
    model: torch.nn.Module,
    x: torch.Tensor,
    batch_size: int,
    context: int,
    device: torch.device,
    eot: int | None = None,
) -> torch.Tensor:
    """The model's fp32 logits of a batch (with `eot`, each window's attention kept within
    its documents, as `train.doc_mask` trains); memory exhausted is one line naming what to
    lower."""
    bounds = document_rows(x, eot) if eot is not None else ()
    try:
        return model(**model_inputs(model, x, *bounds)).logits.float()
    except (MemoryError, RuntimeError) as e:  # torch.OutOfMemoryError is a RuntimeError
        if not is_out_of_memory(e):
            raise
        where = "GPU" if device.type == "cuda" else "CPU"
        vocab = int(getattr(getattr(model, "config", None), "vocab_size", 0) or 0)
        n_params = sum(p.numel() for p in model.parameters())
        raise MachineFault(
            f"evaluate: out of {where} memory scoring evaluate.batch_size {batch_size} x "
            f"model.context {context} tokens (vocab {vocab}, {n_params:,} parameters; the fp32 "
            f"logits alone take {batch_size * context * vocab * 4:,} bytes); lower "
            "evaluate.batch_size"
        ) from None


def evaluate_split(
    model: torch.nn.Module,
    token_dir: Path,
    prepared: Path,
    split: str,
    context: int,
    batch_size: int,
    device: torch.device,
    max_tokens: int = 0,
    desc: str = "evaluate",
    doc_mask: bool = False,
) -> SplitResult:
    """Score every token of the split's documents (or of the first whole documents whose
    tokens fit in max_tokens) given the ones before it, in consecutive context windows;
    with `doc_mask`, given the ones before it in its own document and window."""
    eot = json.loads((token_dir / "meta.json").read_text())["eot_id"]
    tokens = load_tokens(token_dir, split)
    texts = prepared / f"{split}.parquet"
    ends, doc_bytes = eot_positions(tokens, eot), document_bytes(texts)
    if len(ends) != len(doc_bytes) or (len(tokens) and tokens[-1] != eot):
        raise UserError(
            f"{token_dir / f'{split}.bin'} has {len(ends)} end-of-text tokens but {texts} has "
            f"{len(doc_bytes)} documents (one after each expected): the token files are not "
            "from these prepared splits; rerun dvc repro tokenize"
        )
    n_docs = documents_within(ends, max_tokens)
    scored = tokens[: int(ends[n_docs - 1]) + 1]  # whole documents, each with its end-of-text
    model.eval()
    doc_nats = np.zeros(n_docs, dtype=np.float64)
    n_correct = 0
    pos_nll = torch.zeros(context, dtype=torch.float64)
    pos_n = torch.zeros(context, dtype=torch.float64)
    batches = sequential_batches(scored, batch_size, context, first=eot)
    window = 0  # windows so far: window w's target j is token w * context + j
    offsets = np.arange(context)
    for x, y, mask in tqdm(
        batches, total=math.ceil(math.ceil(len(scored) / context) / batch_size), desc=desc
    ):
        x, y, mask = x.to(device), y.to(device), mask.to(device)
        logits = forward(model, x, batch_size, context, device, eot if doc_mask else None)
        per_tok = F.cross_entropy(logits.transpose(1, 2), y, reduction="none") * mask
        n_correct += int(((logits.argmax(-1) == y) & mask).sum())
        pos_nll += per_tok.sum(0).double().cpu()
        pos_n += mask.sum(0).double().cpu()
        rows = np.arange(window, window + len(x))[:, None] * context + offsets
        m = mask.cpu().numpy()
        doc = np.searchsorted(ends[:n_docs], rows[m], side="left")
        doc_nats += np.bincount(doc, per_tok.double().cpu().numpy()[m], minlength=n_docs)
        window += len(x)
    nats, n_bytes, n_tok = float(doc_nats.sum()), int(doc_bytes[:n_docs].sum()), len(scored)
    loss = nats / n_tok
    return SplitResult(
        loss=loss,
        perplexity=math.exp(loss),
        bits_per_byte=bits_per_byte(nats, n_bytes),
        bits_per_byte_se=bits_per_byte_se(doc_nats, doc_bytes[:n_docs]),
        accuracy=n_correct / n_tok,
        tokens=n_tok,
        bytes=n_bytes,
        documents=n_docs,
        xz_bits_per_byte=xz_bits_per_byte(separated_texts(texts, n_docs)),
        loss_by_position=(pos_nll / pos_n.clamp(min=1)).tolist(),
    )


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_new_tokens: int,
    temperature: float,
    top_k: int,
    seed: int,
    device: torch.device,
) -> list[str]:
    """One completion per prompt; seeded, so the same weights give the same samples.

    A model with absolute positions (gpt2's `n_positions`) cannot generate past them: the
    prompt is cut to its last `n_positions - max_new_tokens` tokens."""
    positions = getattr(model.config, "n_positions", None)
    if positions is not None and max_new_tokens >= positions:
        raise UserError(
            f"evaluate.max_new_tokens: {max_new_tokens} leaves no room for a prompt in the "
            f"model's {positions} positions; set it below {positions}"
        )
    model.eval()
    out = []
    for i, prompt in enumerate(prompts):
        torch.manual_seed(seed + i)
        ids = tokenizer(prompt, return_tensors="pt").input_ids.to(device)
        if positions is not None:
            # absolute position embeddings end at `positions`: keep the prompt's last tokens
            ids = ids[:, -(positions - max_new_tokens) :]
        greedy = temperature == 0
        gen = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=not greedy,
            temperature=None if greedy else temperature,
            top_k=None if greedy or top_k == 0 else top_k,
            top_p=None,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        out.append(tokenizer.decode(gen[0, ids.shape[1] :], skip_special_tokens=True))
    return out


def read_history(tsv: Path) -> tuple[list[int], list[float]]:
    if not tsv.is_file():
        return [], []
    with tsv.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if not rows:
        return [], []
    name = next(k for k in rows[0] if k not in ("step", "timestamp"))
    return [int(r["step"]) for r in rows], [float(r[name]) for r in rows]


def _figure():
    import matplotlib

    matplotlib.use("Agg")  # no display; and the same bytes on every machine
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, ax: Any, out: Path) -> None:
    """Grid, legend, layout; no Software tag (matplotlib's version would enter the bytes)."""
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, metadata={"Software": None})
    plt.close(fig)


def plot_loss_curves(train_log: Path, out: Path) -> None:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(7, 4))
    for split in ("train", "val"):
        steps, values = read_history(train_log / "plots" / "metrics" / split / "loss.tsv")
        ax.plot(steps, values, label=f"{split} loss", marker="o" if split == "val" else None)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats / token)")
    _save(plt, fig, ax, out)


def plot_loss_by_position(results: dict[str, SplitResult], out: Path) -> None:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(7, 4))
    for split, r in results.items():
        ax.plot(range(1, len(r.loss_by_position) + 1), r.loss_by_position, label=split)
    ax.set_xlabel("position in the context window (tokens of context + 1)")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title("Loss by position: longer context, easier prediction")
    _save(plt, fig, ax, out)


def headline_metrics(
    results: dict[str, SplitResult], train_tokens_per_s: float
) -> dict[str, float]:
    """What experiments are compared on (metrics.json: `dvc exp show`, `dvc metrics diff`),
    as DVCLive metric names; the full per-split figures are in `split_details`. Non-finite
    values are left out (JSON has no NaN; the standard error is NaN below two documents)."""
    test, val = results["test"], results["val"]
    headline = {
        "test/bits_per_byte": test.bits_per_byte,
        "test/bits_per_byte_se": test.bits_per_byte_se,
        "test/documents": test.documents,
        "test/perplexity": test.perplexity,
        "test/loss": test.loss,
        "test/accuracy": test.accuracy,
        "val/loss": val.loss,
        "baseline/xz_bits_per_byte": test.xz_bits_per_byte,
        "train/tokens_per_s": train_tokens_per_s,
    }
    return {k: v for k, v in headline.items() if math.isfinite(v)}


def split_details(results: dict[str, SplitResult]) -> dict[str, dict[str, float]]:
    """Every figure of every split (details.json), the finite ones."""
    return {
        split: {k: v for k, v in r.metrics().items() if math.isfinite(v)}
        for split, r in results.items()
    }


def samples_markdown(prompts: list[str], completions: list[str]) -> str:
    parts = ["# Samples\n"]
    for i, (p, c) in enumerate(zip(prompts, completions, strict=True), 1):
        parts.append(f"## Prompt {i}\n\n```python\n{p}\u2588{c}\n```\n")
    parts.append("(\u2588 marks where the prompt ends and the model's completion begins.)\n")
    return "\n".join(parts)


def report_markdown(
    results: dict[str, SplitResult], extra: dict[str, float], samples_md: str
) -> str:
    rows = [
        "| split | loss | perplexity | bits/byte | ± SE | xz -9 bits/byte | accuracy | tokens "
        "| bytes | documents |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for split, r in results.items():
        rows.append(
            f"| {split} | {r.loss:.4f} | {r.perplexity:.2f} | {r.bits_per_byte:.4f} | "
            f"{r.bits_per_byte_se:.4f} | {r.xz_bits_per_byte:.4f} | {r.accuracy:.4f} | "
            f"{r.tokens:,} | {r.bytes:,} | {r.documents:,} |"
        )
    lines = [
        "# Evaluation report\n",
        "\n".join(rows),
        "",
        *[f"- {k}: {v:,.4g}" for k, v in extra.items()],
        "",
        "Bits per byte is comparable across tokenizers and with `xz -9` on the same text: the "
        "split's documents, each followed by one separator byte (what the end-of-text token "
        "codes), counted from the documents' UTF-8, every token scored. Lower is better; the "
        "model beats xz where its figure is lower. ± SE is the standard error of bits per byte "
        "across the split's documents (ratio estimator): differences within about two SE are "
        "noise. Loss, perplexity and accuracy are per token, end-of-text tokens included.\n",
        "## Loss curves\n\n![loss curves](loss_curves.png)\n",
        "## Loss by position in the context\n\n![loss by position](loss_by_position.png)\n",
        samples_md.replace("# Samples", "## Samples").replace("\n## Prompt", "\n### Prompt"),
    ]
    return "\n".join(lines)
