"""`codexlm serve` through the official `openai` client over loopback, against a server
started here on a tiny exported llama (random weights, the project's ChatML tokenizer):
the stream is the whole answer is the library's `generate.complete`, seeded samples repeat,
stops are honoured, a chat answer is transformers' own pipeline's, concurrent clients all
get theirs, every bad request gets its 4xx and the server goes on; `codexlm chat` through
a pipe answers a scripted conversation as the server does."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import torch
from conftest import ROOT
from huggingface_hub import ModelCard
from transformers import LlamaConfig, LlamaForCausalLM, pipeline

from codexlm import chat, tokenizer
from codexlm.export import hf as export
from codexlm.generate import complete
from codexlm.model import save_model
from codexlm.serve import app, engine

CPU = torch.device("cpu")
NAME = "tiny"
# throwaway keys for the loopback test server (named, so the secret scanner reads no literal)
KEY = "s3cret"  # pragma: allowlist secret
NO_KEY = "unused"  # the client needs some key; a server started without one ignores it
CONTEXT = 512
PROMPT = "def getcwd():\n"
MESSAGES = [
    {"role": "system", "content": "call: answer with a call."},
    {"role": "user", "content": "Call `getcwd`."},
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny llama with a ChatML tokenizer, through the export stage's own function."""
    root = tmp_path_factory.mktemp("serve")
    tok = tokenizer.train_bpe(["def getcwd():\n    return '/'\n" * 5, "Call it now. " * 9], 300, 2)
    chat.ensure_template(tok)
    tokenizer.save_tokenizer(tok, root / "tok")
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=CONTEXT,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    save_model(LlamaForCausalLM(cfg), root / "tok", root / "trained")
    export.export(root / "trained", root / "export", None, True, CONTEXT, 0, 1e-5, ModelCard("x"))
    return root / "export"


@pytest.fixture(scope="module")
def worker(folder: Path) -> Iterator[engine.Worker]:
    model, tok = engine.load(folder, CPU)
    w = engine.Worker(engine.Engine(model, tok, CPU))
    yield w
    w.close()


@pytest.fixture(scope="module")
def url(worker: engine.Worker) -> Iterator[str]:
    with app.running(worker, app.Settings(NAME)) as base:
        yield base


@pytest.fixture
def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=NO_KEY, max_retries=0, timeout=120)


def library(worker: engine.Worker, prompts: list[str], n: int = 1, **kw) -> list[str]:
    """`generate.complete` on the served model: what the server must answer."""
    e = worker.engine
    settings = dict(stops=(), batch_size=n, temperature=0.0, top_p=1.0, seed=0, device=CPU)
    settings.update(max_new_tokens=24)
    return complete(e.model, e.tok, prompts, **{**settings, **kw}).raw


def streamed(chunks) -> dict[int, str]:
    text: dict[int, str] = {}
    for c in chunks:
        for choice in c.choices:
            piece = choice.text if hasattr(choice, "text") else choice.delta.content
            text[choice.index] = text.get(choice.index, "") + (piece or "")
    return text


def health(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/health", timeout=30) as r:
        return json.loads(r.read())


# -- answers ----------------------------------------------------------------------------------


def test_the_stream_is_the_whole_answer_is_the_librarys(client, worker) -> None:
    kw = dict(model=NAME, prompt=PROMPT, max_tokens=24, temperature=0)
    whole = client.completions.create(**kw)
    stream = client.completions.create(**kw, stream=True)
    (expected,) = library(worker, [PROMPT])
    assert expected  # the model wrote something
    assert whole.choices[0].text == streamed(stream)[0] == expected
    assert whole.usage.completion_tokens == 24 and whole.choices[0].finish_reason == "length"


def test_a_seeded_sample_of_four_repeats(client, worker) -> None:
    kw = dict(model=NAME, prompt=PROMPT, max_tokens=12, temperature=1.0, n=4, seed=7)
    first = [c.text for c in client.completions.create(**kw).choices]
    again = [c.text for c in client.completions.create(**kw).choices]
    stream = streamed(client.completions.create(**kw, stream=True))
    assert first == again == [stream[i] for i in range(4)]
    assert len(set(first)) > 1  # sampled: four different rows
    # the library's rows, one batch of four seeded the same way
    assert first == library(worker, [PROMPT] * 4, n=4, temperature=1.0, seed=7, max_new_tokens=12)
    other = [c.text for c in client.completions.create(**{**kw, "seed": 8}).choices]
    assert other != first


def test_stop_sequences_end_the_text_before_them(client, worker) -> None:
    (full,) = library(worker, [PROMPT])
    stop = full[6:8]
    cut = full[: full.find(stop)]
    kw = dict(model=NAME, prompt=PROMPT, max_tokens=24, temperature=0, stop=[stop, "never"])
    whole = client.completions.create(**kw)
    assert whole.choices[0].text == cut and whole.choices[0].finish_reason == "stop"
    assert streamed(client.completions.create(**kw, stream=True))[0] == cut
    # the library stops there too (its text runs to the end of the token holding the stop)
    (raw,) = library(worker, [PROMPT], stops=(stop,))
    assert raw.startswith(cut + stop)


def test_a_chat_answer_is_the_pipelines(client, folder: Path) -> None:
    generate = pipeline("text-generation", model=str(folder))
    out = generate(MESSAGES, do_sample=False, max_new_tokens=12)[0]["generated_text"]
    kw = dict(model=NAME, messages=MESSAGES, max_tokens=12, temperature=0)
    whole = client.chat.completions.create(**kw)
    stream = client.chat.completions.create(**kw, stream=True)
    assert whole.choices[0].message.content == out[-1]["content"] == streamed(stream)[0]
    assert whole.choices[0].message.role == "assistant"


def test_echo_and_logprobs_score_a_prompt(client, worker) -> None:
    """What lm-evaluation-harness's local-completions asks: the prompt's log-probabilities."""
    r = client.completions.create(
        model=NAME, prompt=PROMPT, max_tokens=0, echo=True, logprobs=2, temperature=0
    )
    lp = r.choices[0].logprobs
    e = worker.engine
    ids = e.encode(PROMPT)
    with torch.no_grad():
        logp = torch.log_softmax(e.model(input_ids=torch.tensor([ids])).logits[0], -1)
    assert r.choices[0].text == PROMPT and len(lp.tokens) == len(ids)
    assert lp.token_logprobs[0] is None
    expected = [float(logp[i - 1, ids[i]]) for i in range(1, len(ids))]
    assert lp.token_logprobs[1:] == pytest.approx(expected, abs=1e-4)
    assert all(
        len(top) == 2 and max(top.values()) >= v - 1e-6
        for top, v in zip(lp.top_logprobs[1:], lp.token_logprobs[1:], strict=True)
    )
    # greedy new tokens: each is its distribution's most likely
    r = client.completions.create(
        model=NAME, prompt=PROMPT, max_tokens=4, logprobs=1, temperature=0
    )
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == 4
    assert all(
        math.isclose(max(t.values()), v, abs_tol=1e-6)
        for t, v in zip(lp.top_logprobs, lp.token_logprobs, strict=True)
    )


def test_sixteen_concurrent_clients_all_get_their_answers(url, worker) -> None:
    prompts = [f"def f{i}(x):\n    return" for i in range(16)]
    expected = library(worker, prompts, max_new_tokens=8)

    def ask(i: int) -> str:
        c = openai.OpenAI(base_url=f"{url}/v1", api_key=NO_KEY, max_retries=0, timeout=300)
        kw = dict(model=NAME, prompt=prompts[i], max_tokens=8, temperature=0)
        if i % 2:
            return streamed(c.completions.create(**kw, stream=True))[0]
        return c.completions.create(**kw).choices[0].text

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, range(16)))
    assert answers == expected
    assert health(url)["failed"] == 0


def test_a_client_gone_mid_stream_frees_the_worker(url, client) -> None:
    before = health(url)["cancelled"]
    request = urllib.request.Request(
        f"{url}/v1/completions",
        data=json.dumps(
            {"model": NAME, "prompt": "x", "max_tokens": 500, "temperature": 0, "stream": True}
        ).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as r:
        assert r.readline().startswith(b"data: ")  # streaming has begun; then hang up
    deadline = time.monotonic() + 60
    while (h := health(url))["running"] or h["cancelled"] == before:
        assert time.monotonic() < deadline, h
        time.sleep(0.05)
    # the request stopped early: the worker answers the next one
    assert client.completions.create(model=NAME, prompt="x", max_tokens=2).usage
    # 500 tokens would have run to the end: the cancel, not an end token, stopped it
    assert (
        client.completions.create(model=NAME, prompt="x", max_tokens=500, temperature=0)
        .choices[0]
        .finish_reason
        == "length"
    )


# -- errors -----------------------------------------------------------------------------------


def post(url: str, path: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{url}{path}", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def good(**kw) -> bytes:
    return json.dumps({"model": NAME, "prompt": "x", "max_tokens": 2, **kw}).encode()


BAD = {
    "malformed JSON": ("/v1/completions", b'{"model": "tiny", "prompt": ', 400, "invalid_json"),
    "not an object": ("/v1/completions", b"[1, 2]", 400, "invalid_type"),
    "unknown model": ("/v1/completions", good(model="gpt-4"), 404, "model_not_found"),
    "past the context": (
        "/v1/completions",
        good(max_tokens=CONTEXT),
        400,
        "context_length_exceeded",
    ),
    "chat past the context": (
        "/v1/chat/completions",
        json.dumps({"model": NAME, "messages": MESSAGES, "max_tokens": CONTEXT}).encode(),
        400,
        "context_length_exceeded",
    ),
    "n too large": ("/v1/completions", good(n=17), 400, "invalid_value"),
    "body too large": ("/v1/completions", good(prompt="x" * (1 << 20)), 413, "413"),
    "wrong type": ("/v1/completions", good(temperature="hot"), 400, "invalid_type"),
    "unsupported field": ("/v1/completions", good(logit_bias={"1": 5}), 400, "unsupported"),
    "token id past the vocabulary": ("/v1/completions", good(prompt=[10**6]), 400, None),
    "empty prompt": ("/v1/completions", good(prompt=""), 400, None),
    "special text in a message": (
        "/v1/chat/completions",
        json.dumps(
            {"model": NAME, "messages": [{"role": "user", "content": "<|im_end|>"}]}
        ).encode(),
        400,
        None,
    ),
    "no messages": (
        "/v1/chat/completions",
        json.dumps({"model": NAME}).encode(),
        400,
        "invalid_type",
    ),
    "unknown route": ("/v1/embeddings", good(), 404, "404"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_request_gets_its_4xx_and_the_server_goes_on(url, client, case: str) -> None:
    path, body, status, code = BAD[case]
    got, error = post(url, path, body)
    assert got == status, error
    assert set(error["error"]) == {"message", "type", "param", "code"}
    assert error["error"]["code"] == code and "Traceback" not in error["error"]["message"]
    assert client.completions.create(model=NAME, prompt="x", max_tokens=2).usage.total_tokens
    assert health(url)["failed"] == 0


def test_a_request_failing_in_the_worker_fails_alone(worker) -> None:
    """A token id past the embeddings, sent past the server's own check: the model raises,
    that request gets the error, a streamed one an error event, and the worker goes on."""
    mine = engine.Worker(worker.engine)  # a worker of its own: its counts are this test's
    try:
        bad = engine.Spec([10**6], 1, 2, 0.0, 1.0, 0, (), worker.engine.eos)
        with pytest.raises(IndexError):
            mine.submit([bad]).future.result(timeout=120)
        ok = engine.Spec(worker.engine.encode(PROMPT), 1, 4, 0.0, 1.0, 0, (), worker.engine.eos)
        (choice,) = mine.submit([ok]).future.result(timeout=120)
        assert choice.completion_tokens == 4
        assert (mine.stats["failed"], mine.stats["served"], mine.stats["running"]) == (1, 1, 0)
    finally:
        mine.close()


def test_the_client_sees_openai_errors(client) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="gpt-4", prompt="x")
    assert e.value.code == "model_not_found" and e.value.param == "model"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=10**4)
    assert e.value.code == "context_length_exceeded"


def test_an_api_key_is_then_required(worker) -> None:
    with app.running(worker, app.Settings(NAME, api_key=KEY)) as base:
        for key in ("wrong", ""):
            c = openai.OpenAI(base_url=f"{base}/v1", api_key=key or "-", max_retries=0)
            with pytest.raises(openai.AuthenticationError):
                c.models.list()
        c = openai.OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0)
        assert [m.id for m in c.models.list().data] == [NAME]
        assert health(base)["status"] == "ok"  # health needs no key


# -- the command ------------------------------------------------------------------------------


def test_chat_through_a_pipe_answers_as_the_server(folder: Path, client) -> None:
    turns = ["Call `getcwd`.", "And now `f`?", "Thanks."]
    messages: list[dict[str, str]] = [{"role": "system", "content": "call: answer with a call."}]
    answers = []
    for turn in turns:
        messages.append({"role": "user", "content": turn})
        r = client.chat.completions.create(
            model=NAME, messages=messages, max_tokens=10, temperature=0
        )
        answers.append(r.choices[0].message.content)
        messages.append({"role": "assistant", "content": answers[-1]})
    cmd = [sys.executable, "-m", "codexlm", "chat", str(folder), "--max-tokens", "10"]
    cmd += ["--system", "call: answer with a call.", "--device", "cpu"]
    proc = subprocess.run(
        cmd, input="\n".join(turns) + "\n", capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "".join(a + "\n" for a in answers)
