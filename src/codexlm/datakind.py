"""The kind of data a run is on, text or examples, decided here and nowhere else.

- text (`data.format: text`): documents, tokenized into one flat stream separated by
  end-of-text; trained and scored as windows of the context (document bounds inside a window
  under `train.doc_mask`: `codexlm.packing.document_rows`), every token a target.
- examples (`data.format: prompt_completion | messages`): instruction examples rendered with
  a chat template, each with a target mask and its bounds; trained and scored as rows of whole
  examples, packed or padded (`codexlm.packing`).

One vocabulary from params to token meta: `data.format` names the record format; the
prepared stats record it as `format` (absent for text), and the token meta records the kind
as `format: examples` (absent for text, so the default pipeline's files are what they were).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

Kind = Literal["text", "examples"]
TEXT: Kind = "text"
EXAMPLES: Kind = "examples"


def of_format(fmt: str) -> Kind:
    """`data.format` (text | prompt_completion | messages) -> the kind."""
    return TEXT if fmt == TEXT else EXAMPLES


def of_stats(stats: dict[str, Any]) -> Kind:
    """data/prepared/stats.json -> the kind (its `format` is data.format, absent for text)."""
    return of_format(stats.get("format", TEXT))


def of_meta(meta: dict[str, Any]) -> Kind:
    """data/tokens/meta.json -> the kind (its `format` is `examples`, absent for text)."""
    return EXAMPLES if meta.get("format") == EXAMPLES else TEXT


def stats_entry(data_format: str) -> dict[str, str]:
    """What the prepared stats record of `data.format`: nothing for text (its stats predate
    the key, and the default pipeline's files stay as they were)."""
    return {} if of_format(data_format) == TEXT else {"format": data_format}


def meta_entry(kind: Kind) -> dict[str, str]:
    """What the token meta records of the kind: nothing for text (its meta predates kinds)."""
    return {} if kind == TEXT else {"format": EXAMPLES}


def of_tokens(tokens: Any) -> Kind:
    """A loaded split -> the kind: text is a flat token array (`batches.load_tokens`),
    examples a `packing.Split` (`batches.load_split`)."""
    return TEXT if isinstance(tokens, np.ndarray) else EXAMPLES
