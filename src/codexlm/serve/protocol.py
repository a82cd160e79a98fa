"""The OpenAI API's requests, as this server reads them, and its error shape.

A request body is checked field by field before any work: a wrong type, a value out of
range or a field this server does not implement (one that would change the answer, such as
`logit_bias` or `tools`) is a `RequestError`, answered as a 4xx with OpenAI's
`{"error": {"message", "type", "param", "code"}}`. Fields that change nothing here (`user`,
`stream_options` without usage) are accepted and ignored, as OpenAI's own server does."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# the most top alternatives a completion's `logprobs` may ask for (OpenAI's own limit is 5)
MAX_LOGPROBS = 20


class RequestError(Exception):
    """A request this server refuses: its HTTP status and OpenAI's error fields."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = (
            status,
            message,
            param,
            code,
            kind,
        )

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.kind, self.param, self.code)


def error_body(
    message: str, kind: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


@dataclass(frozen=True)
class Sampling:
    """What every generation request shares: how many tokens, how to pick them, where to stop."""

    max_tokens: int | None  # None: the request's default (completions 16, chat the context)
    temperature: float  # 0 is greedy
    top_p: float
    n: int
    stop: tuple[str, ...]
    seed: int | None  # None: a fresh seed per request
    stream: bool
    include_usage: bool  # stream_options.include_usage: a last chunk with the token counts


@dataclass(frozen=True)
class CompletionRequest:
    model: str
    prompts: list[str | list[int]]  # text, or token ids (lm-evaluation-harness sends ids)
    sampling: Sampling
    logprobs: int | None  # how many top alternatives per token; None: no logprobs
    echo: bool  # the prompt is part of the returned text (and of the logprobs)


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: list[dict[str, str]]
    sampling: Sampling


# fields that would change the answer and that this server does not implement: refused
# unless at the value that means "off"
_OFF: dict[str, tuple[Any, ...]] = {
    "suffix": (None, ""),
    "logit_bias": (None, {}),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "functions": (None, []),
    "function_call": (None, "none"),
    "response_format": (None, {"type": "text"}),
    "top_logprobs": (None, 0),
}


def _refuse_unsupported(body: dict[str, Any], extra: dict[str, tuple[Any, ...]]) -> None:
    for key, off in {**_OFF, **extra}.items():
        if key in body and body[key] not in off:
            raise RequestError(
                400, f"{key}: not supported by this server (codexlm serve)", key, "unsupported"
            )


def _type_error(key: str, want: str, got: Any) -> RequestError:
    return RequestError(400, f"{key}: expected {want}, got {got!r}", key, "invalid_type")


def _number(body: dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _type_error(key, "a number", value)
    if not lo <= value <= hi:
        raise RequestError(400, f"{key}: {value} is not in [{lo}, {hi}]", key, "invalid_value")
    return float(value)


def _integer(body: dict[str, Any], key: str, default: int | None, lo: int, hi: int) -> int | None:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise _type_error(key, "an integer", value)
    if not lo <= value <= hi:
        raise RequestError(400, f"{key}: {value} is not in [{lo}, {hi}]", key, "invalid_value")
    return value


def _flag(body: dict[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _type_error(key, "true or false", value)
    return value


def _stop(body: dict[str, Any]) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise _type_error("stop", "a non-empty string or a list of them", value)
    if len(stops) > 4:  # OpenAI's limit
        raise RequestError(400, "stop: at most 4 sequences", "stop", "invalid_value")
    return tuple(stops)


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError(400, "model: required (a string: see /v1/models)", "model", "missing")
    return model


def _sampling(body: dict[str, Any], max_n: int, max_tokens_key: str) -> Sampling:
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _type_error("stream_options", "an object", options)
    stream = _flag(body, "stream")
    return Sampling(
        max_tokens=_integer(body, max_tokens_key, None, 0, 2**31 - 1),
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 1e-9, 1.0),
        n=_integer(body, "n", 1, 1, max_n) or 1,
        stop=_stop(body),
        seed=_integer(body, "seed", None, -(2**63), 2**63 - 1),
        stream=stream,
        include_usage=stream and bool((options or {}).get("include_usage", False)),
    )


def _prompts(value: Any) -> list[str | list[int]]:
    """OpenAI's four prompt forms: a string, strings, token ids, lists of token ids."""

    def ids(x: Any) -> bool:
        return isinstance(x, list) and bool(x) and all(isinstance(t, int) for t in x)

    if isinstance(value, str):
        return [value]
    if ids(value):
        return [list(value)]
    if isinstance(value, list) and value and all(isinstance(p, str) or ids(p) for p in value):
        return list(value)
    raise _type_error("prompt", "a string, a list of strings, or (lists of) token ids", value)


def parse_completion(body: Any, max_n: int) -> CompletionRequest:
    if not isinstance(body, dict):
        raise _type_error("body", "a JSON object", type(body).__name__)
    _refuse_unsupported(body, {"best_of": (None, 1, body.get("n", 1))})
    if "prompt" not in body:
        raise RequestError(400, "prompt: required", "prompt", "missing")
    sampling = _sampling(body, max_n, "max_tokens")
    logprobs = _integer(body, "logprobs", None, 0, MAX_LOGPROBS)
    if logprobs is not None and sampling.stream:
        raise RequestError(
            400, "logprobs: not supported with stream: true", "logprobs", "unsupported"
        )
    prompts = _prompts(body["prompt"])
    if len(prompts) * sampling.n > max_n:
        raise RequestError(
            400,
            f"n: {len(prompts)} prompts x n={sampling.n} is more than {max_n} choices",
            "n",
            "invalid_value",
        )
    return CompletionRequest(_model(body), prompts, sampling, logprobs, _flag(body, "echo"))


def _content(i: int, content: Any) -> str:
    """A message's text: a string, or text parts (`[{"type": "text", "text": ...}]`)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        for p in content
    ):
        return "".join(p["text"] for p in content)
    raise _type_error(f"messages[{i}].content", "a string or text parts", content)


def parse_chat(body: Any, max_n: int) -> ChatRequest:
    if not isinstance(body, dict):
        raise _type_error("body", "a JSON object", type(body).__name__)
    _refuse_unsupported(body, {"logprobs": (None, False)})
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _type_error("messages", "a non-empty list of messages", messages)
    parsed = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            raise _type_error(f"messages[{i}]", "a system, user or assistant message", m)
        parsed.append({"role": m["role"], "content": _content(i, m.get("content"))})
    # max_completion_tokens is the newer name of max_tokens
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    return ChatRequest(_model(body), parsed, _sampling(body, max_n, key))
