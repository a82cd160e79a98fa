"""Data pipeline: prepare and tokenize throughput and peak memory at two corpus sizes (flat
memory as the corpus grows: streaming). Each step in its own process calls what its stage
does: prepare (`codexlm.corpus.prepare`, params.yaml's data.*, scrubbing only on the
--scrub-mb slice), bpe (`codexlm.tokenizer.tokenize` of no split: the tokenizer, trained on
the stage's sample), encode (`tokenize` with it: every split). The corpus: 2-50 KB cuts of
the standard library's sources, a few identifiers renamed (no two equal, a growing vocabulary)."""

from __future__ import annotations

import argparse
import builtins
import contextlib
import importlib
import json
import keyword
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from codexlm.errors import run_stage  # (nothing heavy: the steps import what they need)

REPO = Path(__file__).resolve().parent.parent
MB = 1e6  # bytes
IDENT = re.compile(r"\b[a-z][a-z0-9_]{3,}\b")
COLS = [("mb", 8, 1), ("wall_s", 8, 1), ("mb_s", 7, 2), ("cores", 7, 2)]
COLS += [("base_mb", 8, 0), ("main_mb", 8, 0), ("tree_mb", 8, 0)]
SYLLABLES = ("ka", "to", "mi", "re", "su", "no", "vi", "la", "pe", "dor", "bin", "qu", "zel")


def lib(module: str) -> Any:
    """A codexlm module, imported when needed: a step's process loads only what its stage
    loads (prepare: no tokenizers or transformers), so its memory is the stage's."""
    return importlib.import_module(f"codexlm.{module}")


def write_corpus(path: Path, mb: float, seed: int = 1337) -> float:
    """A .jsonl corpus of `mb` MB of distinct documents; returns its MB of text."""
    raws = lib("corpus").iter_source("stdlib", [], "", 200_000)
    base = "\n".join(r.data.decode("utf-8", "replace") for r in raws if r.data)
    keep = set(keyword.kwlist) | set(dir(builtins)) | {"self", "none", "true", "false"}
    rng, size = random.Random(seed), 0
    with path.open("w", encoding="utf-8") as f:
        while size < mb * MB:
            start = base.find("\n", rng.randrange(len(base) - 60_000)) + 1
            doc = base[start : base.find("\n", start + rng.randint(2_000, 50_000))]
            names = [w for w in dict.fromkeys(IDENT.findall(doc, 0, 4_000)) if w not in keep]
            for name in rng.sample(names, min(3, len(names))):
                doc = doc.replace(name, f"{name}_{rng.choice(SYLLABLES)}{rng.choice(SYLLABLES)}")
            f.write(json.dumps({"text": f"# bench document (generated)\n{doc}\n"}) + "\n")
            size += len(doc.encode("utf-8"))
    return size / MB


def step(run: dict[str, Any], params: Path) -> dict[str, Any]:
    """One measured step, in this process (started by `measure`)."""
    p, d = lib("params").load(params), Path(run["dir"])
    cap = int(p.tokenizer.max_train_mb * MB)  # BPE's sample of the train split, as the stage
    mod = lib("corpus" if run["step"].startswith("prepare") else "tokenizer")
    base, cpu0 = psutil.Process().memory_info().rss / MB, resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()  # after imports
    with contextlib.redirect_stdout(sys.stderr):
        if run["step"].startswith("prepare"):
            data = {**p.data.model_dump(), "source": str(d / "corpus.jsonl")}
            data["data_format"] = data.pop("format")  # the library's name (`format` is a builtin)
            mod.prepare(**{**data, "scrub_secrets": run["step"] == "prepare+scrub"}, out_dir=d)
            mb = run["mb"]
        else:
            bpe = run["step"] == "bpe"
            init, splits = ("scratch", ()) if bpe else (str(d / "tok"), ("train", "val", "test"))
            tok_dir, out = d / ("tok" if bpe else "tok-copy"), d / run["step"]
            meta = mod.tokenize(d, init, 4096, p.tokenizer.min_frequency, tok_dir, out, splits, cap)
            mb = sum(meta["bytes"].values()) / MB
    wall = time.perf_counter() - started
    me, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    cpu = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime - cpu0.ru_utime - cpu0.ru_stime
    if run["step"] == "bpe":  # the stage's sample of the train split, read after the clock
        total = json.loads((d / "stats.json").read_text())["bytes"]["train"]
        docs = mod.evenly_spaced(mod.read_texts(d / "train.parquet"), total, cap)
        mb = sum(len(t.encode("utf-8")) for t in docs) / MB
    peak = me.ru_maxrss * 1024 / MB  # KiB on Linux
    return dict(mb=mb, wall_s=wall, cores=cpu / wall, base_mb=base, main_mb=peak)


def measure(run: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Run one step; sample the RSS sum of its process tree (prepare's pool) as it runs."""
    cmd = [sys.executable, __file__, "--params", str(args.params), "--run", json.dumps(run)]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    proc, tree = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env), 0.0
    while proc.poll() is None:
        rss = 0
        with contextlib.suppress(psutil.Error):
            top = psutil.Process(proc.pid)
            for q in [top, *top.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    rss += q.memory_info().rss
        tree = max(tree, rss / MB)
        time.sleep(0.2)  # the RSS sampling period (the step runs for seconds to minutes)
    out = proc.communicate()[0]
    if proc.returncode:
        sys.exit(f"step {run['step']}: exited {proc.returncode} (its stderr is above)")
    r = json.loads(out.splitlines()[-1])
    r.update(mb_s=r["mb"] / r["wall_s"], tree_mb=max(tree, r["main_mb"]))
    return {k: round(v, 3) for k, v in r.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small-mb", type=float, default=100, help="the small corpus, MB of text")
    ap.add_argument("--large-mb", type=float, default=1000, help="the large corpus, MB of text")
    ap.add_argument("--scrub-mb", type=float, default=20, help="prepare + scrub_secrets; 0: skip")
    ap.add_argument("--workdir", type=Path, help="where the corpora go (~3x their size)")
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml")
    ap.add_argument("--run", type=json.loads, help=argparse.SUPPRESS)  # one step (a child)
    args = ap.parse_args()
    if args.run:
        print(json.dumps(step(args.run, args.params)))
        return
    if not 0 < args.small_mb < args.large_mb:
        ap.error("need 0 < --small-mb < --large-mb")
    print(f"{os.cpu_count()} cores; mb: 10^6 bytes of text; cores: CPU time / wall; RSS (MB):")
    print("base: after imports; main: peak of the step's process; tree: peak of its process tree")
    print(f"{'step':<20}" + "".join(f"{k:>{w}}" for k, w, _ in COLS))
    runs: dict[str, dict[str, Any]] = {}
    tok = ["prepare", "bpe", "encode"]
    plan = [(args.small_mb, tok), (args.scrub_mb, ["prepare+scrub"]), (args.large_mb, tok)]
    for mb, names in plan:
        with tempfile.TemporaryDirectory(prefix="codexlm-bench-", dir=args.workdir) as d:
            run = dict(dir=d, mb=write_corpus(Path(d) / "corpus.jsonl", mb) if mb else 0)
            for name in names if mb else []:
                r = runs[f"{name} {mb:g}"] = measure({**run, "step": name}, args)
                (Path(d) / "corpus.jsonl").unlink(missing_ok=True)  # read by prepare only
                print(f"{name + f' {mb:g}':<20}" + "".join(f"{r[k]:>{w}.{p}f}" for k, w, p in COLS))
    small, large = f"{args.small_mb:g}", f"{args.large_mb:g}"
    ratio = {s: runs[f"{s} {large}"]["tree_mb"] / runs[f"{s} {small}"]["tree_mb"] for s in tok}
    print("peak tree RSS, large / small: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratio.items()))
    print(json.dumps({"peak_rss_ratio": ratio, "runs": runs}))


if __name__ == "__main__":
    run_stage(main)  # a mistake in params or data: one line, exit status 2
