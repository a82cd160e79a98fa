"""Chat templates, rendering and loss masks of instruction examples (the tokenize stage).

An example is rendered once, with the tokenizer's chat template (`apply_chat_template`), and
tokenized once as rendered: prompt and answers are never tokenized apart, so the tokens
trained are the tokens the model meets at inference. Which tokens are targets is found
from character offsets: each trained assistant turn's answer is the text its rendering adds
after the generation prompt (`add_generation_prompt=True` of the conversation before it) up
to and including the end-of-turn token that closes it, and a token is a target when its
first character falls in such a span. This works with any prefix-preserving template and
needs no `{% generation %}` markers (which plain-Jinja consumers of an export reject); a
template for which the spans cannot be found is a hard error naming it, never an empty mask.

Models trained here use `CHATML`, whose two special tokens are in the BPE vocabulary
(`tokenizer.train_bpe`); a `model.init` tokenizer keeps its own template, or gains this one
(and its tokens) when it has none.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerBase

from codexlm.errors import UserError

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
# ChatML: every turn is `<|im_start|>ROLE\nCONTENT<|im_end|>\n`; the generation prompt opens
# an assistant turn. The model's answer is CONTENT<|im_end|>: the newline after the
# end-of-turn token belongs to the template, not the answer (generation stops before it).
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
_GENERATION_TAGS = re.compile(r"\{%-?\s*(?:end)?generation\s*-?%\}")


@dataclass(frozen=True)
class Encoded:
    ids: list[int]
    targets: np.ndarray  # bool per token: an answer token or a trained turn's end-of-turn


def template_name(template: str) -> str:
    """How errors name a template: the project's, or a digest of another."""
    if template == CHATML:
        return "the project's ChatML template (codexlm.chat.CHATML)"
    return f"chat template sha256:{hashlib.sha256(template.encode()).hexdigest()[:12]}"


def ensure_template(tok: PreTrainedTokenizerBase) -> bool:
    """Give `tok` the project's ChatML template (and its special tokens) unless it has a
    template of its own; return whether tokens were added (the embeddings must grow: the new
    ids are the last ones)."""
    if tok.chat_template:
        return False
    missing = [t for t in (IM_START, IM_END) if t not in tok.get_vocab()]
    if missing:
        tok.add_special_tokens({"additional_special_tokens": missing})
    tok.chat_template = CHATML
    return bool(missing)


def portable_template(template: str) -> str:
    """The template as plain-Jinja consumers (llama.cpp, llama-cpp-python) read it: without
    transformers' `{% generation %}` markers, which render nothing anyway."""
    return _GENERATION_TAGS.sub("", template)


def render(
    tok: PreTrainedTokenizerBase, messages: list[dict[str, Any]], generation_prompt: bool
) -> str:
    text = tok.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation_prompt
    )
    if not isinstance(text, str):  # some versions return a dict unless told otherwise
        raise TypeError(f"apply_chat_template returned {type(text).__name__}, not a string")
    return text


def end_of_turn(tok: PreTrainedTokenizerBase) -> str:
    """The end-of-turn token of `tok`'s template: the special token that follows an
    assistant answer in its rendering (ChatML's <|im_end|>; a Llama 3's <|eot_id|>)."""
    probe = "codexlm-probe-answer"
    text = render(
        tok, [{"role": "user", "content": "q"}, {"role": "assistant", "content": probe}], False
    )
    rest = text[text.find(probe) + len(probe) :] if probe in text else ""
    specials = sorted(
        set(tok.all_special_tokens) | set(tok.get_added_vocab()), key=len, reverse=True
    )
    for s in specials:
        if s and rest.startswith(s):
            return s
    raise UserError(
        f"{template_name(tok.chat_template or '')}: no special token follows an assistant "
        "answer, so the model could not learn to stop; use a template that ends each "
        "assistant turn with one"
    )


def answer_spans(
    tok: PreTrainedTokenizerBase, messages: list[dict[str, Any]], train_from: int, eot: str
) -> tuple[str, list[tuple[int, int]]]:
    """The example's rendering and the character spans of its trained answers, each from the
    end of the generation prompt before it to the end of its end-of-turn token."""
    full = render(tok, messages, False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant" or i < train_from:
            continue
        before = render(tok, messages[:i], True)
        upto = render(tok, messages[: i + 1], False)
        content = m["content"].strip()
        at = upto.find(content, len(before)) if content else len(before)
        end = upto.find(eot, at + len(content)) if at >= 0 else -1
        if not (full.startswith(upto) and upto.startswith(before)) or at < 0 or end < 0:
            raise UserError(
                f"{template_name(tok.chat_template or '')}: the answer of message {i + 1} "
                "cannot be located in the rendering (the template is not prefix-preserving, "
                "or does not render the content, or no end-of-turn token closes it); choose a "
                "template whose rendering of a conversation starts with that of its beginning"
            )
        spans.append((len(before), end + len(eot)))
    return full, spans


def encoder(tok: PreTrainedTokenizerBase) -> Tokenizer:
    """A copy of `tok`'s backend that reads special-token text as the special tokens: the
    template's markup. (Message contents holding such text are dropped before encoding.)"""
    backend = Tokenizer.from_str(tok.backend_tokenizer.to_str())
    backend.encode_special_tokens = False
    return backend


def encode(backend: Tokenizer, text: str, spans: list[tuple[int, int]]) -> Encoded:
    """Token ids of the rendering and which of them are targets (by character offsets)."""
    enc = backend.encode(text, add_special_tokens=False)
    starts = np.fromiter((o[0] for o in enc.offsets), dtype=np.int64, count=len(enc.ids))
    targets = np.zeros(len(enc.ids), dtype=bool)
    for s, e in spans:
        targets |= (starts >= s) & (starts < e)
    return Encoded(list(enc.ids), targets)


def holds_special_text(tok: PreTrainedTokenizerBase, messages: list[dict[str, Any]]) -> bool:
    """Whether a content holds a special token's text: rendered into the template it would
    be read as markup (a turn ended early, a forged role), so such examples are dropped."""
    specials = [s for s in set(tok.all_special_tokens) | set(tok.get_added_vocab()) if s]
    return any(s in m["content"] for m in messages for s in specials)
