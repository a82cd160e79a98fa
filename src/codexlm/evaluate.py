"""Evaluation: loss, perplexity, bits per byte and accuracy per split; the xz baseline;
loss by position; sampled completions; figures and a report a person reads."""

from __future__ import annotations

import csv
import lzma
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from codexlm.data import sequential_batches
from codexlm.errors import UserError
from codexlm.metrics import bits_per_byte, token_nll


@dataclass(frozen=True)
class SplitResult:
    loss: float
    perplexity: float
    bits_per_byte: float
    accuracy: float
    tokens: int
    bytes: int
    xz_bits_per_byte: float
    loss_by_position: list[float]

    def metrics(self) -> dict[str, float]:
        return {
            "loss": self.loss,
            "perplexity": self.perplexity,
            "bits_per_byte": self.bits_per_byte,
            "accuracy": self.accuracy,
            "xz_bits_per_byte": self.xz_bits_per_byte,
            "tokens": self.tokens,
        }


def xz_bits_per_byte(data: bytes) -> float:
    """What `xz -9` (LZMA preset 9) needs per byte of the same text: a baseline to beat."""
    return 8 * len(lzma.compress(data, preset=9)) / max(len(data), 1)


@torch.no_grad()
def evaluate_split(
    model: torch.nn.Module,
    tokens: np.ndarray,
    tokenizer: PreTrainedTokenizerBase,
    context: int,
    batch_size: int,
    device: torch.device,
    max_tokens: int = 0,
    desc: str = "evaluate",
) -> SplitResult:
    """Score every token of the split (or its first max_tokens) given the ones before it,
    in consecutive context windows."""
    model.eval()
    nll_sum = 0.0
    n_tok = n_correct = 0
    pos_nll = torch.zeros(context, dtype=torch.float64)
    pos_n = torch.zeros(context, dtype=torch.float64)
    batches = sequential_batches(tokens, batch_size, context, max_tokens)
    total = math.ceil(
        math.ceil((len(tokens) if max_tokens <= 0 else max_tokens) / context) / batch_size
    )
    for x, y, mask in tqdm(batches, total=total, desc=desc, unit="batch"):
        x, y, mask = x.to(device), y.to(device), mask.to(device)
        logits = model(input_ids=x).logits.float()
        nll, n, correct = token_nll(logits, y, mask)
        nll_sum += float(nll)
        n_tok += int(n)
        n_correct += int(correct)
        per_tok = torch.nn.functional.cross_entropy(logits.transpose(1, 2), y, reduction="none")
        pos_nll += (per_tok * mask).sum(0).double().cpu()
        pos_n += mask.sum(0).double().cpu()
    end = len(tokens) if max_tokens <= 0 else min(len(tokens), max_tokens + 1)
    # the bytes of exactly the tokens that were scored (all but the first)
    text = tokenizer.decode(np.asarray(tokens[1:end]).tolist(), skip_special_tokens=True)
    data = text.encode("utf-8")
    loss = nll_sum / n_tok
    return SplitResult(
        loss=loss,
        perplexity=math.exp(loss),
        bits_per_byte=bits_per_byte(nll_sum, len(data)),
        accuracy=n_correct / n_tok,
        tokens=n_tok,
        bytes=len(data),
        xz_bits_per_byte=xz_bits_per_byte(data),
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


def plot_loss_curves(train_log: Path, out: Path) -> None:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(7, 4))
    for split in ("train", "val"):
        steps, values = read_history(train_log / "plots" / "metrics" / split / "loss.tsv")
        ax.plot(steps, values, label=f"{split} loss", marker="o" if split == "val" else None)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats / token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, metadata={"Software": None})
    plt.close(fig)


def plot_loss_by_position(results: dict[str, SplitResult], out: Path) -> None:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(7, 4))
    for split, r in results.items():
        ax.plot(range(1, len(r.loss_by_position) + 1), r.loss_by_position, label=split)
    ax.set_xlabel("position in the context window (tokens of context + 1)")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title("Loss by position: longer context, easier prediction")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, metadata={"Software": None})
    plt.close(fig)


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
        "| split | loss | perplexity | bits/byte | xz -9 bits/byte | accuracy | tokens |",
        "|---|---|---|---|---|---|---|",
    ]
    for split, r in results.items():
        rows.append(
            f"| {split} | {r.loss:.4f} | {r.perplexity:.2f} | {r.bits_per_byte:.4f} | "
            f"{r.xz_bits_per_byte:.4f} | {r.accuracy:.4f} | {r.tokens:,} |"
        )
    lines = [
        "# Evaluation report\n",
        "\n".join(rows),
        "",
        *[f"- {k}: {v:,.4g}" for k, v in extra.items()],
        "",
        "Bits per byte is comparable across tokenizers and with `xz -9` on the same text; "
        "lower is better. The model beats xz where its figure is lower.\n",
        "## Loss curves\n\n![loss curves](loss_curves.png)\n",
        "## Loss by position in the context\n\n![loss by position](loss_by_position.png)\n",
        samples_md.replace("# Samples", "## Samples").replace("\n## Prompt", "\n### Prompt"),
    ]
    return "\n".join(lines)
