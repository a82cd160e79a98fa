"""Data pipeline: prepare and tokenize throughput and peak memory at two corpus sizes.

    .venv/bin/python bench/data_pipeline.py                          # 100 MB and 1000 MB
    .venv/bin/python bench/data_pipeline.py --small-mb 20 --large-mb 200 --scrub-mb 5
    .venv/bin/python bench/data_pipeline.py | tail -n 1 | python -m json.tool

Streaming means memory stays flat as the corpus grows: each stage is run on a generated
corpus of `--small-mb` and of `--large-mb` (MB = 10^6 bytes of document text), and the
ratio of their peak memory is printed, with MB/s and the CPU cores each stage kept busy.

The corpus: documents of 2-50 KB cut at line boundaries from the standard library's sources
(the default `data.source`), each with a numbered header and a few of its identifiers renamed
from a fixed-seed RNG, so no two are duplicates and the vocabulary keeps growing a little with
the corpus, as real code does. Written as one .jsonl file (or, with --format py, a folder of
.py files) under --workdir, deleted at the end unless --keep.

Each measured run is a separate process (this script with --run ...), so its peak memory is
its own, calling the library as the stages do:

- prepare: `codexlm.corpus.prepare` with params.yaml's data.* settings, but scrub_secrets off
  (detect-secrets runs well under 1 MB/s per core; its throughput is measured on its own, on
  the first --scrub-mb of the corpus, with scrub_secrets on).
- bpe: `codexlm.tokenizer.train_bpe` on the train split, sampled as the tokenize stage
  does (evenly spaced documents up to tokenizer.max_train_mb, or --bpe-mb), vocab 4096.
- encode: `codexlm.tokenizer.encode_split` of every split with that tokenizer. bpe + encode is
  what `codexlm.tokenizer.tokenize` does; split in two, the part that must stream (encoding)
  is measured apart from training the tokenizer, whose memory grows with distinct words.

Memory. prepare forks a ProcessPoolExecutor, so a process's own figure is not the stage's:
four figures are kept. `main` and `worker` are exact kernel peaks (ru_maxrss of the stage
process, and the largest ru_maxrss of its pool workers). `tree RSS` and `tree PSS` are sums
over the process and all its descendants, sampled every --interval s by this script: RSS
counts pages that forked workers share with the parent once per process (an upper bound),
PSS splits them (what the tree really holds); a sample can miss a peak shorter than the
interval. The large/small ratio is printed for `tree RSS` (the headline `peak_rss_ratio`),
`tree PSS` and `main`. The import baseline (RSS after imports, before work) is also printed:
it is most of a small run's peak, so the ratio alone understates growth; compare the growth
above the baseline too.

Throughput is document text bytes over the wall time of the library call (not the
interpreter's start and imports); cores is the CPU time of the process and its workers over
that wall time (2.0 = two cores busy).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import keyword
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import psutil

REPO = Path(__file__).resolve().parent.parent
MB = 1e6  # bytes
KB = 1024  # ru_maxrss is in KiB on Linux
VOCAB = 4096
SPLITS = ("train", "val", "test")
_IDENT = re.compile(r"\b[a-z][a-z0-9_]{3,}\b")
_SYLLABLES = ("ka", "to", "mi", "re", "su", "no", "vi", "la", "pe", "dor", "bin", "qu", "zel")


# ---------------------------------------------------------------- the corpus


def base_text() -> str:
    """The standard library's sources as the stdlib source reads them (no tests), joined."""
    from codexlm.corpus import iter_source

    parts = []
    for raw in iter_source("stdlib", ["**/*.py"], "text", 200_000):
        if isinstance(raw.data, bytes):
            with contextlib.suppress(UnicodeDecodeError):
                parts.append(raw.data.decode("utf-8").replace("\r\n", "\n"))
    return "\n".join(parts)


def documents(base: str, seed: int) -> Iterator[str]:
    """Endless distinct documents of 2-50 KB, the same sequence for the same seed."""
    import builtins

    keep = set(keyword.kwlist) | set(dir(builtins)) | {"self", "class", "none", "true", "false"}
    rng = random.Random(seed)
    n = len(base) - 60_000
    i = 0
    while True:
        start = base.find("\n", rng.randrange(n)) + 1
        end = base.find("\n", start + rng.randint(2_000, 50_000))
        doc = base[start:end]
        # rename up to 3 identifiers of the document's first lines, everywhere in it
        names = [w for w in dict.fromkeys(_IDENT.findall(doc, 0, 4_000)) if w not in keep]
        for name in rng.sample(names, min(3, len(names))):
            doc = doc.replace(name, f"{name}_{rng.choice(_SYLLABLES)}{rng.choice(_SYLLABLES)}")
        yield f"# bench document {i} (seed {seed}): generated, not real code\n{doc}\n"
        i += 1


def write_corpus(base: str, out: Path, mb: float, fmt: str, seed: int) -> dict[str, Any]:
    """Write documents until they hold `mb` MB of text; return the source path and sizes."""
    target = int(mb * MB)
    text_bytes = n = 0
    docs = documents(base, seed)
    if fmt == "jsonl":
        source = out / "corpus.jsonl"
        out.mkdir(parents=True, exist_ok=True)
        with source.open("w", encoding="utf-8") as f:
            while text_bytes < target:
                doc = next(docs)
                f.write(json.dumps({"text": doc}) + "\n")
                text_bytes += len(doc.encode("utf-8"))
                n += 1
        disk = source.stat().st_size
    else:
        source = out / "corpus"
        disk = 0
        while text_bytes < target:
            data = next(docs).encode("utf-8")
            path = source / f"{n // 1000:04d}" / f"{n:07d}.py"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            text_bytes += len(data)
            disk += len(data)
            n += 1
    return {"source": source, "documents": n, "text_bytes": text_bytes, "disk_bytes": disk}


# ---------------------------------------------------------------- one measured run (child)


def _usage() -> tuple[float, float, float, float]:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (
        me.ru_utime + me.ru_stime,
        kids.ru_utime + kids.ru_stime,
        me.ru_maxrss * KB / MB,
        kids.ru_maxrss * KB / MB,
    )


def child_prepare(args: argparse.Namespace) -> dict[str, Any]:
    from codexlm import params
    from codexlm.corpus import prepare

    d = params.load(args.params).data
    stats = prepare(
        source=str(args.source),
        include=d.include,
        text_column=d.text_column,
        min_chars=d.min_chars,
        max_chars=d.max_chars,
        val_fraction=d.val_fraction,
        test_fraction=d.test_fraction,
        scrub_secrets=args.scrub,
        out_dir=args.out,
    )
    return {
        "documents": sum(stats["documents"].values()),
        "dropped": stats["dropped"],
        "secrets": sum(stats["secrets"].values()),
        "out_bytes": sum((args.out / f"{s}.parquet").stat().st_size for s in SPLITS),
    }


def child_bpe(args: argparse.Namespace) -> dict[str, Any]:
    import json

    from codexlm import params
    from codexlm.tokenizer import evenly_spaced, read_texts, train_bpe

    p = params.load(args.params)
    cap = int((args.bpe_mb or p.tokenizer.max_train_mb) * MB)
    total = json.loads((args.prepared / "stats.json").read_text())["bytes"]["train"]
    seen = {"bytes": 0, "documents": 0}

    def texts() -> Iterator[str]:  # the tokenize stage's sample, counted
        for t in evenly_spaced(read_texts(args.prepared / "train.parquet"), total, cap):
            seen["bytes"] += len(t.encode("utf-8"))
            seen["documents"] += 1
            yield t

    tok = train_bpe(texts(), VOCAB, p.tokenizer.min_frequency)
    tok.save_pretrained(args.tok_dir)
    return {"text_bytes": seen["bytes"], "documents": seen["documents"], "vocab": len(tok)}


class _TimedBackend:
    """Proxy of a `tokenizers.Tokenizer` that times encode_batch_fast (the Rayon-parallel part)."""

    totals: ClassVar[dict[str, float]] = {"wall_s": 0.0, "cpu_s": 0.0, "calls": 0}

    def __init__(self, inner: Any) -> None:
        object.__setattr__(self, "_inner", inner)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._inner, name, value)

    def encode_batch_fast(self, *args: Any, **kwargs: Any) -> Any:
        t, c = time.perf_counter(), time.process_time()
        try:
            return self._inner.encode_batch_fast(*args, **kwargs)
        finally:
            self.totals["wall_s"] += time.perf_counter() - t
            self.totals["cpu_s"] += time.process_time() - c
            self.totals["calls"] += 1


def child_encode(args: argparse.Namespace) -> dict[str, Any]:
    from unittest import mock

    import tokenizers

    from codexlm import tokenizer as codexlm_tokenizer
    from codexlm.tokenizer import read_texts

    tok = codexlm_tokenizer.load_pretrained(args.tok_dir)
    dtype = codexlm_tokenizer.token_dtype(len(tok))
    args.out.mkdir(parents=True, exist_ok=True)

    class TimedTokenizer:
        @staticmethod
        def from_str(s: str) -> _TimedBackend:
            return _TimedBackend(tokenizers.Tokenizer.from_str(s))

    if not hasattr(codexlm_tokenizer, "Tokenizer"):
        raise RuntimeError("codexlm.tokenizer no longer uses Tokenizer; update this bench")
    n_tokens = n_bytes = 0
    with mock.patch.object(codexlm_tokenizer, "Tokenizer", TimedTokenizer):
        for s in SPLITS:
            t, b = codexlm_tokenizer.encode_split(
                tok, read_texts(args.prepared / f"{s}.parquet"), args.out / f"{s}.bin", dtype
            )
            n_tokens += t
            n_bytes += b
    timed = _TimedBackend.totals
    return {
        "text_bytes": n_bytes,
        "tokens": n_tokens,
        "encode_batch_wall_s": timed["wall_s"],
        "encode_batch_cores": timed["cpu_s"] / max(timed["wall_s"], 1e-9),
    }


CHILDREN = {"prepare": child_prepare, "bpe": child_bpe, "encode": child_encode}


def run_child(args: argparse.Namespace) -> None:
    # imports first, so the baseline and the timing leave them out
    importlib.import_module("codexlm.corpus" if args.run == "prepare" else "codexlm.tokenizer")
    base_rss = psutil.Process().memory_info().rss / MB
    cpu0, kids0, _, _ = _usage()
    started = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # stdout: the one JSON line below
        result = CHILDREN[args.run](args)
    wall = time.perf_counter() - started
    cpu1, kids1, maxrss, kids_maxrss = _usage()
    result.update(
        wall_s=wall,
        cpu_s=cpu1 - cpu0 + kids1 - kids0,
        main_cpu_s=cpu1 - cpu0,
        base_rss_mb=base_rss,
        main_rss_mb=maxrss,
        worker_rss_mb=kids_maxrss,  # 0: no child process (the largest one otherwise)
    )
    print(json.dumps(result))


# ---------------------------------------------------------------- the driver


def measure(cmd: list[str], interval: float) -> dict[str, Any]:
    """Run one child; sample the RSS and PSS sums of its process tree while it runs."""
    env = {**os.environ, "TQDM_DISABLE": "1"}
    host0 = psutil.cpu_times()
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    top = psutil.Process(proc.pid)
    peak_rss = peak_pss = 0.0
    while proc.poll() is None:
        rss = pss = 0.0
        try:
            tree = [top, *top.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        for p in tree:
            try:
                mem = p.memory_full_info()
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                continue
            rss += mem.rss
            pss += mem.pss
        peak_rss, peak_pss = max(peak_rss, rss / MB), max(peak_pss, pss / MB)
        time.sleep(interval)
    out, _ = proc.communicate()
    host1 = psutil.cpu_times()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[2:])}: exited {proc.returncode} (its stderr is above)")
    result = json.loads(out.strip().splitlines()[-1])
    result.update(
        tree_rss_mb=max(peak_rss, result["main_rss_mb"]),  # the kernel's peak if sampling missed
        tree_pss_mb=peak_pss,
        process_wall_s=time.perf_counter() - started,
        # every process on the machine, over the child's whole life: other work running at
        # the same time takes cores from the run, and shows here
        host_cores=_busy(host0, host1) / (time.perf_counter() - started),
    )
    return result


def _busy(a: Any, b: Any) -> float:
    idle = (b.idle - a.idle) + (getattr(b, "iowait", 0.0) - getattr(a, "iowait", 0.0))
    return sum(b) - sum(a) - idle


HEADER = (
    f"{'run':<22}{'MB':>8}{'wall s':>9}{'MB/s':>8}{'cores':>7}{'host':>6}{'base':>7}"
    f"{'main':>7}{'worker':>8}{'tree RSS':>10}{'tree PSS':>10}"
)


def row(name: str, r: dict[str, Any], mb_in: float) -> str:
    return (
        f"{name:<22}{mb_in:>8.1f}{r['wall_s']:>9.1f}{mb_in / r['wall_s']:>8.2f}"
        f"{r['cpu_s'] / r['wall_s']:>7.2f}{r['host_cores']:>6.2f}{r['base_rss_mb']:>7.0f}"
        f"{r['main_rss_mb']:>7.0f}"
        f"{r['worker_rss_mb']:>8.0f}{r['tree_rss_mb']:>10.0f}{r['tree_pss_mb']:>10.0f}"
    )


def summarize(r: dict[str, Any], mb_in: float) -> dict[str, Any]:
    keep = {k: v for k, v in r.items() if not isinstance(v, float)}
    keep.update({k: round(v, 3) for k, v in r.items() if isinstance(v, float)})
    keep["input_mb"] = round(mb_in, 2)
    keep["mb_s"] = round(mb_in / r["wall_s"], 3)
    keep["cores"] = round(r["cpu_s"] / r["wall_s"], 2)
    keep["main_cores"] = round(r["main_cpu_s"] / r["wall_s"], 2)
    return keep


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small-mb", type=float, default=100, help="the small corpus, MB of text")
    ap.add_argument("--large-mb", type=float, default=1000, help="the large corpus, MB of text")
    ap.add_argument(
        "--scrub-mb", type=float, default=20, help="slice prepared with scrub_secrets (0: skip)"
    )
    ap.add_argument(
        "--bpe-mb",
        type=float,
        default=0,
        help="BPE sample cap, MB (0: tokenizer.max_train_mb, as the tokenize stage)",
    )
    ap.add_argument("--format", choices=["jsonl", "py"], default="jsonl", help="corpus layout")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--interval", type=float, default=0.2, help="memory sampling period, s")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/codexlm-bench"))
    ap.add_argument("--keep", action="store_true", help="keep the generated data")
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml")
    # one measured run (what the driver starts in a child process)
    ap.add_argument("--run", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    ap.add_argument("--source", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--prepared", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--tok-dir", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--scrub", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run:
        run_child(args)
        return
    if not 0 < args.small_mb < args.large_mb:
        ap.error("need 0 < --small-mb < --large-mb")

    me = [sys.executable, str(Path(__file__).resolve()), "--params", str(args.params)]
    args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=args.workdir))
    print(
        f"cores: {os.cpu_count()}; corpus: {args.format}, stdlib chunks of 2-50 KB with renamed "
        f"identifiers, seed {args.seed}; data under {work}"
        + ("" if args.keep else " (deleted at the end)")
    )
    print(
        "MB = 10^6 bytes of document text; cores = the run's CPU time / wall; host = busy cores "
        "of the whole machine meanwhile (other work included); base = RSS after imports; "
        "main/worker = exact peak RSS; tree = sampled sum over the process tree (MB)",
        flush=True,
    )
    base = base_text()
    runs: dict[str, dict[str, Any]] = {}
    corpora: dict[str, dict[str, Any]] = {}
    try:
        print(HEADER, flush=True)
        sizes = [("small", args.small_mb), ("large", args.large_mb)]
        if args.scrub_mb:
            sizes.insert(1, ("scrub", args.scrub_mb))
        for label, mb in sizes:
            d = work / label
            started = time.perf_counter()
            c = write_corpus(base, d, mb, args.format, args.seed)
            corpora[label] = {
                "mb": mb,
                "documents": c["documents"],
                "text_mb": round(c["text_bytes"] / MB, 2),
                "disk_mb": round(c["disk_bytes"] / MB, 2),
                "generate_s": round(time.perf_counter() - started, 1),
            }
            mb_in = c["text_bytes"] / MB
            name = f"{mb:g}"
            cmd = [*me, "--run", "prepare", "--source", str(c["source"])]
            cmd += ["--out", str(d / "prepared")]
            if label == "scrub":
                r = measure([*cmd, "--scrub"], args.interval)
                runs["scrub"] = summarize(r, mb_in)
                print(row(f"prepare+scrub {name}", r, mb_in), flush=True)
                if not args.keep:
                    shutil.rmtree(d)
                continue
            r = measure(cmd, args.interval)
            runs[f"prepare_{name}"] = summarize(r, mb_in)
            print(row(f"prepare {name}", r, mb_in), flush=True)
            if not args.keep and c["source"].is_dir():
                shutil.rmtree(c["source"])  # the prepared splits are all the rest reads
            elif not args.keep:
                c["source"].unlink()

            prepared = ["--prepared", str(d / "prepared"), "--tok-dir", str(d / "tokenizer")]
            r = measure(
                [*me, "--run", "bpe", *prepared, "--bpe-mb", str(args.bpe_mb)], args.interval
            )
            runs[f"bpe_{name}"] = summarize(r, r["text_bytes"] / MB)
            print(row(f"bpe train {name}", r, r["text_bytes"] / MB), flush=True)

            r = measure(
                [*me, "--run", "encode", *prepared, "--out", str(d / "tokens")], args.interval
            )
            runs[f"encode_{name}"] = summarize(r, r["text_bytes"] / MB)
            print(row(f"encode {name}", r, r["text_bytes"] / MB), flush=True)
            if not args.keep:
                shutil.rmtree(d)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    small, large = f"{args.small_mb:g}", f"{args.large_mb:g}"

    def ratio(stage: str, key: str) -> float:
        return round(runs[f"{stage}_{large}"][key] / runs[f"{stage}_{small}"][key], 3)

    def growth(stage: str) -> tuple[float, float]:
        s, g = runs[f"{stage}_{small}"], runs[f"{stage}_{large}"]
        return s["tree_rss_mb"] - s["base_rss_mb"], g["tree_rss_mb"] - g["base_rss_mb"]

    print(f"peak memory, {large} MB corpus / {small} MB corpus:")
    stages = ("prepare", "bpe", "encode")
    for stage in stages:
        lo, hi = growth(stage)
        print(
            f"  {stage:<8} tree RSS {ratio(stage, 'tree_rss_mb'):.2f}x, tree PSS "
            f"{ratio(stage, 'tree_pss_mb'):.2f}x, main {ratio(stage, 'main_rss_mb'):.2f}x; "
            f"above the import baseline {lo:.0f} -> {hi:.0f} MB"
        )
    for size in (small, large):
        p = runs[f"prepare_{size}"]
        print(
            f"prepare {size}: {p['cores']:.2f} cores, of which the main process (reading, "
            f"dedup, split, parquet) {p['main_cores']:.2f} and the cleaning workers "
            f"{p['cores'] - p['main_cores']:.2f}"
        )
    for size in (small, large):
        e = runs[f"encode_{size}"]
        print(
            f"encode {size}: {e['cores']:.2f} cores over the run; encode_batch_fast (Rayon) "
            f"{e['encode_batch_wall_s']:.1f} s of {e['wall_s']:.1f} s at "
            f"{e['encode_batch_cores']:.2f} cores, the rest is single-threaded Python"
        )
    if "scrub" in runs:
        s, p = runs["scrub"], runs[f"prepare_{small}"]
        print(
            f"scrub_secrets: prepare at {s['mb_s']:.2f} MB/s with it ({s['input_mb']:.0f} MB "
            f"slice), {p['mb_s']:.2f} MB/s without; {s['secrets']} findings redacted"
        )

    summary = {
        "small_mb": args.small_mb,
        "large_mb": args.large_mb,
        "cores": os.cpu_count(),
        "format": args.format,
        "mb_s": {
            f"{st}_{sz}": runs[f"{st}_{sz}"]["mb_s"] for st in stages for sz in (small, large)
        },
        "peak_rss_mb": {
            f"{st}_{sz}": runs[f"{st}_{sz}"]["tree_rss_mb"]
            for st in stages
            for sz in (small, large)
        },
        "peak_rss_ratio": {st: ratio(st, "tree_rss_mb") for st in stages},
        "peak_pss_ratio": {st: ratio(st, "tree_pss_mb") for st in stages},
        "main_rss_ratio": {st: ratio(st, "main_rss_mb") for st in stages},
        "encode_cores": {sz: runs[f"encode_{sz}"]["cores"] for sz in (small, large)},
        "scrub_mb_s": runs["scrub"]["mb_s"] if "scrub" in runs else None,
        "corpora": corpora,
        "runs": runs,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
