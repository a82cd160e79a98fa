"""`codexlm serve`: the OpenAI API over HTTP (aiohttp), in front of one model worker.

Routes: GET /health, GET /v1/models, POST /v1/completions, POST /v1/chat/completions. Every
error is OpenAI's shape with a 4xx (a 500 only for this server's own bug, logged here, its
traceback never sent). Streams are server-sent events ending with `data: [DONE]`; a client
that goes away mid-stream (or while queued) cancels its request, so the worker moves on.

Why aiohttp: it is already in requirements.lock (DVC needs it), well kept, and streams
responses with backpressure; `transformers serve` would add FastAPI, uvicorn and rich to
the default install and has no API key (docs/serving.md)."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from codexlm.serve import protocol
from codexlm.serve.engine import Choice, Spec, TokenLogprobs, Worker
from codexlm.serve.protocol import RequestError

log = logging.getLogger("codexlm.serve")


@dataclass(frozen=True)
class Settings:
    name: str  # the model's id in /v1/models and in requests
    api_key: str | None = None  # when set, /v1/* needs `Authorization: Bearer <key>`
    max_n: int = 16  # choices per request (prompts x n)
    max_body: int = 1 << 20  # bytes of a request body
    max_queue: int = 64  # requests waiting for the worker; more get a 503


WORKER = web.AppKey("worker", Worker)
SETTINGS = web.AppKey("settings", Settings)


def _error(e: RequestError) -> web.Response:
    return web.json_response(e.body(), status=e.status)


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except RequestError as e:
        return _error(e)
    except web.HTTPException as e:  # aiohttp's own: unknown route, wrong method, body size
        if e.status < 400:
            raise
        message = e.reason
        if e.status == 413:
            message = f"request body over {request.app[SETTINGS].max_body} bytes"
        kind = "invalid_request_error" if e.status < 500 else "server_error"
        return web.json_response(
            protocol.error_body(message, kind, None, str(e.status)), status=e.status
        )
    except Exception:  # this server's bug: logged with its traceback, not sent to the client
        log.exception("%s %s failed", request.method, request.path)
        body = protocol.error_body("internal server error (see the server's log)", "server_error")
        return web.json_response(body, status=500)


@web.middleware
async def _auth(request: web.Request, handler: Any) -> web.StreamResponse:
    key = request.app[SETTINGS].api_key
    if key is not None and request.path.startswith("/v1"):
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), key.encode()):
            raise RequestError(
                401, "incorrect or missing API key", None, "invalid_api_key", "authentication_error"
            )
    return await handler(request)


async def _body(request: web.Request) -> Any:
    raw = await request.read()  # past client_max_size: aiohttp's 413, shaped by _errors
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RequestError(400, f"the body is not valid JSON: {e}", None, "invalid_json") from None


def _check_model(request: web.Request, model: str) -> None:
    name = request.app[SETTINGS].name
    if model != name:
        raise RequestError(
            404,
            f"model {model!r} does not exist; this server serves {name!r}",
            "model",
            "model_not_found",
        )


def _budget(request: web.Request, ids: list[int], max_tokens: int | None, default: int) -> int:
    """max_tokens, checked against the model's positions (never a prompt cut silently)."""
    context = request.app[WORKER].engine.context
    wanted = default if max_tokens is None else max_tokens
    if context is not None and len(ids) + wanted > context:
        raise RequestError(
            400,
            f"this model's context is {context} tokens; the request needs {len(ids) + wanted} "
            f"({len(ids)} in the prompt, {wanted} to generate)",
            "max_tokens",
            "context_length_exceeded",
        )
    return wanted


def _seed(sampling: protocol.Sampling) -> int:
    return sampling.seed if sampling.seed is not None else secrets.randbits(63)


def _usage(choices: list[Choice], specs: list[Spec]) -> dict[str, int]:
    prompt = sum(len(s.ids) for s in specs)
    completion = sum(c.completion_tokens for c in choices)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _head(kind: str, name: str, rid: str) -> dict[str, Any]:
    return {"id": rid, "object": kind, "created": int(time.time()), "model": name}


async def _run(request: web.Request, specs: list[Spec], echo_logprobs: bool) -> list[Choice]:
    worker: Worker = request.app[WORKER]
    _admit(request)
    ticket = worker.submit(specs, None, echo_logprobs)
    try:
        return await asyncio.wrap_future(ticket.future)
    finally:
        ticket.cancelled.set()  # a cancelled handler (client gone): the worker skips or stops


def _admit(request: web.Request) -> None:
    settings: Settings = request.app[SETTINGS]
    if request.app[WORKER].stats["queued"] >= settings.max_queue:
        raise RequestError(
            503,
            f"{settings.max_queue} requests are already waiting; retry later",
            None,
            "overloaded",
            "server_error",
        )


async def _stream(
    request: web.Request,
    specs: list[Spec],
    kind: str,
    rid: str,
    chunk: Any,
    opening: list[dict[str, Any]] | None,
    include_usage: bool,
) -> web.StreamResponse:
    """Server-sent events: `chunk(index, text)` for each delta, `chunk(index, None, reason)`
    at each choice's end, the usage if asked, then [DONE]."""
    worker: Worker = request.app[WORKER]
    name = request.app[SETTINGS].name
    _admit(request)
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[tuple[int, str] | None] = asyncio.Queue()

    def on_delta(index: int, text: str) -> None:  # the worker thread
        loop.call_soon_threadsafe(events.put_nowait, (index, text))

    ticket = worker.submit(specs, on_delta)
    # queued after every delta (the same thread calls both): the end of the stream
    ticket.future.add_done_callback(lambda f: loop.call_soon_threadsafe(events.put_nowait, None))
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    head = _head(kind, name, rid)

    async def send(payload: Any) -> None:
        data = payload if isinstance(payload, str) else json.dumps(payload)
        await response.write(f"data: {data}\n\n".encode())

    try:
        await response.prepare(request)
        for c in opening or []:
            await send({**head, "choices": [c]})
        while (event := await events.get()) is not None:
            await send({**head, "choices": [chunk(*event)]})
        choices: list[Choice] = ticket.future.result()
        for i, c in enumerate(choices):
            await send({**head, "choices": [chunk(i, None, c.finish_reason)]})
        if include_usage:
            await send({**head, "choices": [], "usage": _usage(choices, specs)})
        await send("[DONE]")
    except (ConnectionResetError, asyncio.CancelledError):
        ticket.cancelled.set()  # the client went away: free the worker for the next request
        raise
    except Exception as e:  # the worker could not run it (logged there with its traceback)
        log.error("stream %s failed: %s", rid, e)
        await send(protocol.error_body("generation failed (see the server's log)", "server_error"))
    finally:
        ticket.cancelled.set()
    return response


def _logprobs_body(lp: TokenLogprobs | None) -> dict[str, Any] | None:
    if lp is None:
        return None
    offsets, at = [], 0
    for t in lp.tokens:
        offsets.append(at)
        at += len(t)
    return {
        "tokens": lp.tokens,
        "token_logprobs": lp.token_logprobs,
        "top_logprobs": lp.top_logprobs,
        "text_offset": offsets,
    }


async def completions(request: web.Request) -> web.StreamResponse:
    settings: Settings = request.app[SETTINGS]
    req = protocol.parse_completion(await _body(request), settings.max_n)
    _check_model(request, req.model)
    engine = request.app[WORKER].engine
    vocab = len(engine.tok)
    s, specs, texts = req.sampling, [], []
    seed = _seed(s)
    for p in req.prompts:
        ids = engine.encode(p) if isinstance(p, str) else p
        if not ids:
            raise RequestError(400, "prompt: empty (no tokens to continue)", "prompt")
        if not isinstance(p, str) and not all(0 <= t < vocab for t in p):
            raise RequestError(400, f"prompt: token ids must be in [0, {vocab})", "prompt")
        texts.append(p if isinstance(p, str) else engine.tok.decode(p))
        wanted = _budget(request, ids, s.max_tokens, 16)
        if wanted == 0 and not req.echo:
            raise RequestError(400, "max_tokens: 0 generates nothing without echo", "max_tokens")
        specs.append(
            Spec(ids, s.n, wanted, s.temperature, s.top_p, seed, s.stop, engine.eos, req.logprobs)
        )
    rid = f"cmpl-{secrets.token_hex(12)}"
    prefix = [texts[i // s.n] if req.echo else "" for i in range(len(specs) * s.n)]
    if s.stream:

        def chunk(i: int, text: str | None, reason: str | None = None) -> dict[str, Any]:
            return {"index": i, "text": text or "", "logprobs": None, "finish_reason": reason}

        opening = [chunk(i, t) for i, t in enumerate(prefix) if t]
        return await _stream(
            request, specs, "text_completion", rid, chunk, opening, s.include_usage
        )
    choices = await _run(request, specs, req.echo)
    body = _head("text_completion", settings.name, rid)
    body["choices"] = [
        {
            "index": i,
            "text": prefix[i] + c.text,
            "logprobs": _logprobs_body(c.logprobs),
            "finish_reason": c.finish_reason,
        }
        for i, c in enumerate(choices)
    ]
    body["usage"] = _usage(choices, specs)
    return web.json_response(body)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    settings: Settings = request.app[SETTINGS]
    req = protocol.parse_chat(await _body(request), settings.max_n)
    _check_model(request, req.model)
    engine = request.app[WORKER].engine
    if not engine.has_template:
        raise RequestError(
            400, "this model has no chat template: use /v1/completions", "messages", "no_template"
        )
    if engine.holds_special_text(req.messages):
        # read as the template's markup it would end a turn early or forge a role
        raise RequestError(400, "messages: a content holds a special token's text", "messages")
    ids = engine.encode_chat(req.messages)
    s = req.sampling
    room = (engine.context or 2**31) - len(ids)
    wanted = _budget(request, ids, s.max_tokens, max(room, 1))
    if wanted == 0:
        raise RequestError(400, "max_tokens: must be at least 1", "max_tokens")
    spec = Spec(ids, s.n, wanted, s.temperature, s.top_p, _seed(s), s.stop, engine.chat_ends)
    rid = f"chatcmpl-{secrets.token_hex(12)}"
    if s.stream:

        def chunk(i: int, text: str | None, reason: str | None = None) -> dict[str, Any]:
            delta = {} if text is None else {"content": text}
            return {"index": i, "delta": delta, "logprobs": None, "finish_reason": reason}

        opening = [
            {
                "index": i,
                "delta": {"role": "assistant", "content": ""},
                "logprobs": None,
                "finish_reason": None,
            }
            for i in range(s.n)
        ]
        return await _stream(
            request, [spec], "chat.completion.chunk", rid, chunk, opening, s.include_usage
        )
    choices = await _run(request, [spec], False)
    body = _head("chat.completion", settings.name, rid)
    body["choices"] = [
        {
            "index": i,
            "message": {"role": "assistant", "content": c.text},
            "logprobs": None,
            "finish_reason": c.finish_reason,
        }
        for i, c in enumerate(choices)
    ]
    body["usage"] = _usage(choices, [spec])
    return web.json_response(body)


async def models(request: web.Request) -> web.Response:
    name = request.app[SETTINGS].name
    entry = {"id": name, "object": "model", "created": 0, "owned_by": "codexlm"}
    return web.json_response({"object": "list", "data": [entry]})


async def health(request: web.Request) -> web.Response:
    worker: Worker = request.app[WORKER]
    return web.json_response({"status": "ok", "model": request.app[SETTINGS].name, **worker.stats})


def build_app(worker: Worker, settings: Settings) -> web.Application:
    app = web.Application(middlewares=[_errors, _auth], client_max_size=settings.max_body)
    app[WORKER], app[SETTINGS] = worker, settings
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", chat_completions)
    return app


async def _start(app: web.Application, host: str, port: int) -> web.AppRunner:
    # handler_cancellation: a client that disconnects cancels its handler, whose `finally`
    # cancels the request in the worker
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


def serve(worker: Worker, settings: Settings, host: str, port: int) -> None:
    """Serve until interrupted (Ctrl-C, SIGTERM)."""
    web.run_app(
        build_app(worker, settings),
        host=host,
        port=port,
        handler_cancellation=True,
        print=lambda line: print(f"{settings.name}: {line}", flush=True),
    )


@contextlib.contextmanager
def running(worker: Worker, settings: Settings, host: str = "127.0.0.1") -> Iterator[str]:
    """The server on a free port in a background thread, for tests and benchmarks: yields
    its base URL (`http://127.0.0.1:PORT`)."""
    loop = asyncio.new_event_loop()
    started: dict[str, Any] = {}
    ready = threading.Event()

    def main() -> None:
        asyncio.set_event_loop(loop)
        runner = loop.run_until_complete(_start(build_app(worker, settings), host, 0))
        started["runner"] = runner
        started["url"] = "http://{}:{}".format(*runner.addresses[0][:2])
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())

    thread = threading.Thread(target=main, name="codexlm-serve", daemon=True)
    thread.start()
    if not ready.wait(60):
        raise RuntimeError("the server did not start within 60 s")
    try:
        yield started["url"]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
