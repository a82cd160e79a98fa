"""Generation for the server and the `codexlm` commands: a model folder loaded once, each
request's rows generated with `generate`'s KV cache as `codexlm.generate.complete` generates
them (the same seeding and settings, so a greedy or seeded answer is the library's), their
text streamed as it grows, and one worker thread that runs requests in arrival order.

Streamed and whole answers are the same text by construction: both are the deltas of one
`_Rows` streamer. A delta is sent once it is final: text that may still become a stop
sequence, or a character whose UTF-8 bytes are not all decoded yet, waits for the next
token. The text ends before the first stop sequence (OpenAI's rule: the stop is not
returned) or at the first end token."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.generation.streamers import BaseStreamer
from transformers.utils import logging as hf_logging

from codexlm import chat
from codexlm.errors import UserError

log = logging.getLogger("codexlm.serve")
# on_delta(choice index, text): called on the worker thread as each piece becomes final
OnDelta = Callable[[int, str], None]


def load(folder: Path, device: torch.device) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A Hugging Face model folder (the export, or models/trained): safetensors only, never
    remote code. A LoRA adapter folder is refused: export it merged (export.merge_lora)."""
    folder = Path(folder)
    if (folder / "adapter_config.json").is_file():
        raise UserError(
            f"{folder}: a LoRA adapter, not a model; serve the export with export.merge_lora: true"
        )
    if not (folder / "config.json").is_file():
        raise UserError(f"{folder}: not a Hugging Face model folder (no config.json)")
    if not any(folder.glob("*.safetensors")):
        raise UserError(f"{folder}: no .safetensors weights (only safetensors are loaded)")
    hf_logging.disable_progress_bar()  # a command's stderr is for its own lines
    try:
        tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(
            folder, trust_remote_code=False, use_safetensors=True, dtype=torch.float32
        )
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"{folder}: cannot load: {str(e).splitlines()[0]}") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token  # one row per prompt is never padded; generate asks
    return model.to(device).eval(), tok


def context_of(model: PreTrainedModel) -> int | None:
    cfg = model.config
    return getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)


@dataclass(frozen=True)
class Spec:
    """One prompt's generation: `n` rows of it."""

    ids: list[int]
    n: int
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int
    stops: tuple[str, ...]
    ends: tuple[int, ...]  # token ids that end a row (not part of its text)
    logprobs: int | None = None  # top alternatives per token; None: none computed


@dataclass
class TokenLogprobs:
    tokens: list[str]
    token_logprobs: list[float | None]  # None for the first prompt token (nothing predicts it)
    top_logprobs: list[dict[str, float] | None]
    ids: list[int]


@dataclass
class Choice:
    text: str
    finish_reason: str  # "stop" (an end token or a stop sequence), "length", "cancelled"
    prompt_tokens: int
    completion_tokens: int
    ids: list[int]  # the new tokens (with logprobs: those that made the text)
    logprobs: TokenLogprobs | None = None


@dataclass
class _Row:
    ids: list[int] = field(default_factory=list)
    sent: int = 0  # characters of the text already final (sent as deltas)
    text: str | None = None  # set when the row is done: its whole text
    finish: str | None = None


def _held_back(text: str, stops: Sequence[str]) -> int:
    """How many characters at the end of `text` may still change: an incomplete UTF-8
    character (decoded as U+FFFD) or the start of a stop sequence."""
    held = len(text) - len(text.rstrip("\ufffd"))
    body = text[: len(text) - held]
    longest = 0
    for s in stops:
        for j in range(min(len(s) - 1, len(body)), 0, -1):
            if body.endswith(s[:j]):
                longest = max(longest, j)
                break
    return held + longest


class _Rows(BaseStreamer):
    """`generate`'s streamer: each row's new tokens, decoded as they come, cut at its end
    token or first stop sequence, final text passed to `on_delta`."""

    def __init__(
        self,
        tok: PreTrainedTokenizerBase,
        spec: Spec,
        first: int,
        on_delta: OnDelta | None,
        cancelled: threading.Event,
    ) -> None:
        self.tok, self.spec, self.first, self.on_delta = tok, spec, first, on_delta
        self.cancelled = cancelled
        self.rows = [_Row() for _ in range(spec.n)]
        self.prompt_seen = False

    def _send(self, i: int, text: str, upto: int) -> None:
        row = self.rows[i]
        if upto > row.sent and self.on_delta is not None:
            self.on_delta(self.first + i, text[row.sent : upto])
        row.sent = max(row.sent, upto)

    def _finish(self, i: int, text: str, reason: str) -> None:
        self._send(i, text, len(text))
        self.rows[i].text, self.rows[i].finish = text, reason

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate's first call passes the prompt
            self.prompt_seen = True
            return
        for i, token in enumerate(value.reshape(-1).tolist()):
            row = self.rows[i]
            if row.finish is not None:
                continue  # generate pads a finished row while the others go on
            if token in self.spec.ends:
                self._finish(i, self.tok.decode(row.ids, skip_special_tokens=True), "stop")
                continue
            row.ids.append(token)
            text = self.tok.decode(row.ids, skip_special_tokens=True)
            at = min((k for k in (text.find(s) for s in self.spec.stops) if k >= 0), default=-1)
            if at >= 0:
                self._finish(i, text[:at], "stop")
            else:
                self._send(i, text, len(text) - _held_back(text, self.spec.stops))

    def end(self) -> None:
        """generate's last call: the rows still going ran out of tokens (or were cancelled)."""
        for i, row in enumerate(self.rows):
            if row.finish is None:
                text = self.tok.decode(row.ids, skip_special_tokens=True)
                self._finish(i, text, "cancelled" if self.cancelled.is_set() else "length")


class _Until(StoppingCriteria):
    """Rows end as the streamer ends them; all of them when the request is cancelled (its
    client went away): the worker is free for the next request at the next token."""

    def __init__(self, rows: _Rows, cancelled: threading.Event) -> None:
        self.rows, self.cancelled = rows, cancelled

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        if self.cancelled.is_set():
            return torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        done = [r.finish is not None for r in self.rows.rows]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def _token_text(tok: PreTrainedTokenizerBase, token: int) -> str:
    """A token as logprobs name it: its text, or, for a piece of a UTF-8 character (which
    decodes to U+FFFD, the same for many tokens), the vocabulary's own unique name of it."""
    text = tok.decode([token])
    return text if "\ufffd" not in text else tok.convert_ids_to_tokens(token)


def _top(tok: PreTrainedTokenizerBase, logp: torch.Tensor, k: int) -> dict[str, float]:
    if k == 0:
        return {}
    values, ids = logp.topk(k)
    pairs = zip(values.tolist(), ids.tolist(), strict=True)
    return {_token_text(tok, i): float(v) for v, i in pairs}


def _logprobs(
    tok: PreTrainedTokenizerBase, ids: list[int], logits: torch.Tensor, k: int, first: bool
) -> TokenLogprobs:
    """Log-probabilities of `ids` under the model's (unwarped) distributions `logits`, one
    row per token; `first`: the first token has no distribution (a prompt's first)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    out = TokenLogprobs([], [], [], list(ids))
    for j, t in enumerate(ids):
        out.tokens.append(_token_text(tok, t))
        if first and j == 0:
            out.token_logprobs.append(None)
            out.top_logprobs.append(None)
            continue
        row = logp[j - 1 if first else j]
        out.token_logprobs.append(float(row[t]))
        out.top_logprobs.append(_top(tok, row, k))
    return out


class Engine:
    """A loaded model and tokenizer, and how prompts are encoded for them."""

    def __init__(
        self, model: PreTrainedModel, tok: PreTrainedTokenizerBase, device: torch.device
    ) -> None:
        self.model, self.tok, self.device = model, tok, device
        self.context = context_of(model)
        self.eos = () if tok.eos_token_id is None else (tok.eos_token_id,)
        self.has_template = bool(tok.chat_template)
        if self.has_template:
            # the template's markup as special tokens, nothing added: as training encoded it
            self._chat_encoder = chat.encoder(tok)
            self.chat_ends = (*self.eos, tok.convert_tokens_to_ids(chat.end_of_turn(tok)))

    def encode(self, text: str) -> list[int]:
        """A completion prompt, as `codexlm.generate.complete` encodes it by default."""
        return list(self.tok(text).input_ids)

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        text = chat.render(self.tok, messages, True)
        return list(self._chat_encoder.encode(text, add_special_tokens=False).ids)

    def holds_special_text(self, messages: list[dict[str, str]]) -> bool:
        return chat.holds_special_text(self.tok, messages)

    @torch.no_grad()
    def run(
        self,
        specs: Sequence[Spec],
        on_delta: OnDelta | None = None,
        cancelled: threading.Event | None = None,
        echo_logprobs: bool = False,
    ) -> list[Choice]:
        """Every spec's rows, in order (choice index = spec index x n + row)."""
        cancelled = cancelled or threading.Event()
        choices: list[Choice] = []
        for spec in specs:
            first = len(choices)
            if cancelled.is_set():
                choices += [Choice("", "cancelled", len(spec.ids), 0, []) for _ in range(spec.n)]
                continue
            choices += self._one(spec, first, on_delta, cancelled, echo_logprobs)
        return choices

    def _one(
        self,
        spec: Spec,
        first: int,
        on_delta: OnDelta | None,
        cancelled: threading.Event,
        echo_logprobs: bool,
    ) -> list[Choice]:
        rows = _Rows(self.tok, spec, first, on_delta, cancelled)
        prompt_lp = None
        if spec.logprobs is not None and echo_logprobs:
            batch = torch.tensor([spec.ids], device=self.device)
            logits = self.model(input_ids=batch).logits[0]
            prompt_lp = _logprobs(self.tok, spec.ids, logits, spec.logprobs, first=True)
        if spec.max_new_tokens == 0:  # scoring a prompt (echo): nothing to generate
            rows.end()
            return [self._choice(spec, r, prompt_lp, None) for r in rows.rows]
        input_ids = torch.tensor([spec.ids] * spec.n, device=self.device)
        greedy = spec.temperature == 0
        torch.manual_seed(spec.seed)  # as complete seeds a batch: the same seed, the same rows
        out = self.model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=spec.max_new_tokens,
            do_sample=not greedy,
            temperature=None if greedy else spec.temperature,
            top_p=None if greedy else spec.top_p,
            top_k=None,
            use_cache=True,
            pad_token_id=self.tok.pad_token_id,
            eos_token_id=list(spec.ends) or None,
            stopping_criteria=StoppingCriteriaList([_Until(rows, cancelled)]),
            streamer=rows,
            output_logits=spec.logprobs is not None,
            return_dict_in_generate=spec.logprobs is not None,
        )
        step_logits = None
        if spec.logprobs is not None:
            step_logits = torch.stack(out.logits, dim=1)  # (n, steps, vocab), unwarped
        return [
            self._choice(spec, r, prompt_lp, None if step_logits is None else step_logits[j])
            for j, r in enumerate(rows.rows)
        ]

    def _choice(
        self,
        spec: Spec,
        row: _Row,
        prompt_lp: TokenLogprobs | None,
        logits: torch.Tensor | None,
    ) -> Choice:
        assert row.text is not None and row.finish is not None
        ids, lp = row.ids, None
        if spec.logprobs is not None:
            ids = self._ids_of_text(row)
            new = _logprobs(self.tok, ids, logits, spec.logprobs, False) if ids else None
            if prompt_lp is not None:
                lp = prompt_lp
                if new is not None:
                    lp = TokenLogprobs(
                        lp.tokens + new.tokens,
                        lp.token_logprobs + new.token_logprobs,
                        lp.top_logprobs + new.top_logprobs,
                        lp.ids + new.ids,
                    )
            else:
                lp = new or TokenLogprobs([], [], [], [])
        return Choice(row.text, row.finish, len(spec.ids), len(row.ids), ids, lp)

    def _ids_of_text(self, row: _Row) -> list[int]:
        """The new tokens that made the row's text (the fewest whose text covers it: a stop
        sequence cut the text inside the last token's, or before it)."""
        assert row.text is not None
        lo, hi = 0, len(row.ids)  # decoded length grows with the tokens: bisect
        while lo < hi:
            mid = (lo + hi) // 2
            if len(self.tok.decode(row.ids[:mid], skip_special_tokens=True)) >= len(row.text):
                hi = mid
            else:
                lo = mid + 1
        return row.ids[:lo]


@dataclass
class Ticket:
    """A queued request: its result, and the event that cancels it."""

    future: Future
    cancelled: threading.Event


class Worker:
    """The one thread that runs the model: requests in arrival order, one at a time (the
    n rows of a request are one batch), so none can disturb another's KV cache or seed."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._queue: queue.Queue[tuple | None] = queue.Queue()
        self.stats = {"queued": 0, "running": 0, "served": 0, "cancelled": 0, "failed": 0}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="codexlm-model", daemon=True)
        self._thread.start()

    def submit(
        self, specs: list[Spec], on_delta: OnDelta | None = None, echo_logprobs: bool = False
    ) -> Ticket:
        ticket = Ticket(Future(), threading.Event())
        with self._lock:
            self.stats["queued"] += 1
        self._queue.put((specs, on_delta, echo_logprobs, ticket))
        return ticket

    def _count(self, **changes: int) -> None:
        with self._lock:
            for k, v in changes.items():
                self.stats[k] += v

    def _loop(self) -> None:
        while (item := self._queue.get()) is not None:
            specs, on_delta, echo_logprobs, ticket = item
            self._count(queued=-1, running=1)
            try:
                choices = self.engine.run(specs, on_delta, ticket.cancelled, echo_logprobs)
            except Exception as e:
                # a request the model could not run (out of memory, or a bug here): that
                # request fails with it (the server logs it, its client gets a 500), and
                # the worker goes on with the next one instead of dying with the thread
                log.exception("request failed in the model worker")
                self._count(running=-1, failed=1)
                ticket.future.set_exception(e)
                continue
            stopped = any(c.finish_reason == "cancelled" for c in choices)
            self._count(running=-1, served=1, cancelled=int(stopped))
            ticket.future.set_result(choices)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)
