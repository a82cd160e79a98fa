"""`codexlm serve` against the library it serves: tokens/s and time to first token for 1 and
N concurrent streams through the official `openai` client over loopback, side by side with
`codexlm.generate.complete` on the same model, prompts and token budget (greedy, so both
produce the same tokens). Printed as ratios, with the machine and its load average.

The model is a folder (`--model`, e.g. models/export) or, by default, params.yaml's model
shape with random weights and a BPE of tokenizer.vocab_size trained on this library's
sources: throughput does not depend on what the weights say. Each side runs `--rounds`
times in alternating order and the fastest is kept (a shared machine's noise only slows).

The server runs one request at a time (docs/serving.md), so N streams queue: their tokens/s
is the 1-stream figure, and their time to first token grows with the queue; the library's
batch of N is the figure a batching server could reach."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import openai
import torch

from codexlm import machine, paramsfile, tokenizer
from codexlm.generate import complete
from codexlm.model import build_model, save_model
from codexlm.serve import app, engine

REPO = Path(__file__).resolve().parent.parent
PROMPTS = [
    "def add(a, b):\n",
    "import os\n\n\ndef walk(top):\n",
    "class Stack:\n    def __init__(self):\n",
    "def fib(n):\n    if n < 2:\n",
    "with open(path) as f:\n",
    "def parse(line: str) -> dict:\n",
    "for i, item in enumerate(items):\n",
    "try:\n    import json\nexcept ImportError:\n",
]


def random_model(out: Path, params: Path, small: bool) -> Path:
    """params.yaml's model shape (or a 1 x 32 one, `--small`), random weights, saved as a
    folder `engine.load` reads."""
    p = paramsfile.load_yaml(params)
    cfg = SimpleNamespace(**p["model"])
    vocab = p["tokenizer"]["vocab_size"]
    if small:
        cfg.n_layer, cfg.n_head, cfg.d_model, vocab = 1, 2, 32, 300
    texts = [f.read_text(encoding="utf-8") for f in sorted((REPO / "src/codexlm").rglob("*.py"))]
    tok = tokenizer.train_bpe(texts, vocab, 2)
    tokenizer.save_tokenizer(tok, out / "tok")
    model = build_model(cfg, len(tok), tok.eos_token_id, tok.pad_token_id, seed=0)
    save_model(model, out / "tok", out / "model")
    return out / "model"


def library_one(e: engine.Engine, prompts: list[str], tokens: int) -> dict[str, float]:
    """complete() on each prompt alone (batch 1); first token: a 1-token completion."""
    kw = dict(stops=(), temperature=0.0, top_p=1.0, seed=0, device=e.device)
    n = seconds = first = 0.0
    for p in prompts:
        started = time.perf_counter()
        complete(e.model, e.tok, [p], max_new_tokens=1, batch_size=1, **kw)
        first += time.perf_counter() - started
        g = complete(e.model, e.tok, [p], max_new_tokens=tokens, batch_size=1, **kw)
        n, seconds = n + g.tokens, seconds + g.seconds
    return {"tokens": n, "seconds": seconds, "ttft_s": first / len(prompts)}


def library_batch(e: engine.Engine, prompts: list[str], tokens: int) -> dict[str, float]:
    kw = dict(stops=(), temperature=0.0, top_p=1.0, seed=0, device=e.device)
    g = complete(e.model, e.tok, prompts, max_new_tokens=tokens, batch_size=len(prompts), **kw)
    return {"tokens": g.tokens, "seconds": g.seconds}


def connect(url: str) -> openai.OpenAI:
    """One client per stream, made before the clock starts (a client's setup, its SSL
    context, costs more than a tiny model's first token)."""
    return openai.OpenAI(base_url=f"{url}/v1", api_key="-", max_retries=0, timeout=600)


def stream_one(
    client: openai.OpenAI, name: str, prompt: str, tokens: int, start: float
) -> dict[str, float]:
    """One streamed completion: seconds to its first text and to its end, from `start`."""
    chunks = client.completions.create(
        model=name,
        prompt=prompt,
        max_tokens=tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    first, used = None, 0
    for c in chunks:
        if first is None and c.choices and c.choices[0].text:
            first = time.perf_counter() - start
        if c.usage is not None:
            used = c.usage.completion_tokens
    end = time.perf_counter() - start
    return {"ttft_s": end if first is None else first, "end_s": end, "tokens": used}


def server_streams(url: str, name: str, prompts: list[str], tokens: int, streams: int) -> dict:
    """`streams` clients at once, each streaming its prompts in turn."""
    results: list[dict[str, float]] = []
    lock = threading.Lock()
    clients = [connect(url) for _ in range(streams)]
    start = time.perf_counter()

    def run(k: int) -> None:
        for p in prompts[k::streams]:
            r = stream_one(clients[k], name, p, tokens, time.perf_counter())
            with lock:
                results.append(r)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    n = sum(r["tokens"] for r in results)
    return {
        "tokens": n,
        "seconds": wall,
        "ttft_s": sum(r["ttft_s"] for r in results) / len(results),
        "ttft_max_s": max(r["ttft_s"] for r in results),
    }


def fastest(runs: list[dict]) -> dict:
    return min(runs, key=lambda r: r["seconds"] / max(r["tokens"], 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, help="a model folder (default: a random one)")
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml")
    ap.add_argument("--small", action="store_true", help="a 1 x 32 random model (smoke runs)")
    ap.add_argument("--tokens", type=int, default=64, help="new tokens per completion")
    ap.add_argument("--prompts", type=int, default=8, help="how many prompts (of 8, cycled)")
    ap.add_argument("--streams", default="1,8", help="concurrent streams to measure")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's own)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    streams = [int(s) for s in a.streams.split(",")]
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(a.prompts)]
    device = torch.device("cpu")
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        folder = a.model or random_model(Path(tmp), a.params, a.small)
        model, tok = engine.load(folder, device)
        e = engine.Engine(model, tok, device)
        worker = engine.Worker(e)
        info = machine.describe()
        load_before = os.getloadavg()
        print(machine.line(info))
        size = sum(p.numel() for p in model.parameters())
        print(
            f"model: {folder if a.model else 'random'}, {size:,} parameters, "
            f"{a.prompts} prompts x {a.tokens} new tokens, greedy"
        )
        print(f"load average before: {load_before[0]:.2f} (1 min), {load_before[1]:.2f} (5 min)")
        rows: dict[str, dict] = {}
        with app.running(worker, app.Settings("bench")) as url:
            stream_one(connect(url), "bench", prompts[0], 4, time.perf_counter())  # warm-up
            library_one(e, prompts[:1], 4)
            runs: dict[str, list] = {}
            for _ in range(a.rounds):
                runs.setdefault("generate, batch 1", []).append(library_one(e, prompts, a.tokens))
                for s in streams:
                    key = f"server, {s} stream{'s' if s > 1 else ''}"
                    runs.setdefault(key, []).append(
                        server_streams(url, "bench", prompts, a.tokens, s)
                    )
                    if s > 1:
                        key = f"generate, batch {s}"
                        batches = [prompts[i : i + s] for i in range(0, len(prompts), s)]
                        totals = [library_batch(e, b, a.tokens) for b in batches]
                        runs.setdefault(key, []).append(
                            {k: sum(t[k] for t in totals) for k in ("tokens", "seconds")}
                        )
            rows = {k: fastest(v) for k, v in runs.items()}
        worker.close()
    load_after = os.getloadavg()
    for r in rows.values():
        r["tokens_per_s"] = r["tokens"] / r["seconds"]
    print(f"{'':24} {'tokens':>7} {'tokens/s':>9} {'first token (mean, s)':>22}")
    for k, r in rows.items():
        ttft = f"{r['ttft_s']:.4f}" if "ttft_s" in r else ""
        print(f"{k:24} {r['tokens']:7.0f} {r['tokens_per_s']:9.1f} {ttft:>22}")
    one, lib = rows["server, 1 stream"] if 1 in streams else None, rows["generate, batch 1"]
    ratios: dict[str, float] = {}
    if one is not None:
        # time per token, server over library: the server's overhead at one stream
        ratios["overhead_1_stream"] = lib["tokens_per_s"] / one["tokens_per_s"]
        ratios["ttft_1_stream"] = one["ttft_s"] / lib["ttft_s"]
    for s in streams:
        if s > 1:
            srv, batch = rows[f"server, {s} streams"], rows[f"generate, batch {s}"]
            ratios[f"throughput_{s}_streams_vs_batch_1"] = srv["tokens_per_s"] / lib["tokens_per_s"]
            ratios[f"throughput_{s}_streams_vs_batch_{s}"] = (
                srv["tokens_per_s"] / batch["tokens_per_s"]
            )
    for k, v in ratios.items():
        print(f"ratio {k}: {v:.3f}")
    print(f"load average after: {load_after[0]:.2f} (1 min)")
    summary = {
        "machine": info,
        "load_average": {"before": load_before, "after": load_after},
        "tokens": a.tokens,
        "prompts": a.prompts,
        "rows": rows,
        "ratios": ratios,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    sys.exit(main())
