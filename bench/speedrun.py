"""Time to quality, in the style of the modded-nanogpt speedrun: candidate configurations
trained on the pipeline's own data side by side, each for the same token budget and for the
same wall-clock budget as the baseline (round one: the old default; round two: params.yaml),
each to its schedule's end.

Per candidate and budget: final validation bits per byte, test bits per byte (the evaluate
stage's exact rule, whole test split), and tokens to target: the tokens seen at the first
validation whose loss is at most the baseline's final one (bits per byte, so a candidate with
another vocabulary compares too). Training seconds exclude validation, include compiling:
every run compiles its own graph, as the train stage does. The time budget is the baseline's
measured train seconds; a time row is refitted to it from its own costs (`fit_to_time`).

Needs the tokenize stage's outputs (`dvc repro tokenize`); a candidate with another
`tokenizer.vocab_size` gets its own tokenizer and token files in a temporary folder.
Run on an otherwise idle machine: the wall-clock budget is the baseline's measured time.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import REPO, load_params, override

from codexlm import machine
from codexlm.batches import load_tokens
from codexlm.errors import UserError, run_stage
from codexlm.evaluate import evaluate_split
from codexlm.model import build_model
from codexlm.tokenizer import tokenize
from codexlm.train import Run, train

# The default of params.yaml before issue 15: the baseline every candidate is measured against.
OLD_DEFAULT: dict[str, Any] = {
    "tokenizer.vocab_size": 4096,
    "model.arch": "llama",
    "model.n_layer": 4,
    "model.n_head": 4,
    "model.d_model": 128,
    "model.context": 128,
    "train.steps": 500,
    "train.batch_size": 32,
    "train.optimizer": "adamw",
    "train.lr": 3e-3,
    "train.min_lr": 3e-4,
    "train.schedule": "cosine",
    "train.warmup_steps": 40,
    "train.embed_lr_scale": 1.0,
    "train.beta1": 0.9,
    "train.beta2": 0.95,
}

# The record log's rows: each adds a lever to the row before it (on top of OLD_DEFAULT).
MUON = {"train.optimizer": "muon"}
WSD = {**MUON, "train.schedule": "wsd"}
TUNED = {**WSD, "train.lr": 6e-3, "train.decay_fraction": 0.4}
EMBED = {**TUNED, "train.embed_lr_scale": 3.0}
BETAS = {**EMBED, "train.beta1": 0.8, "train.beta2": 0.99}
CANDIDATES: dict[str, dict[str, Any]] = {
    "baseline": {},
    "muon": MUON,
    "muon+wsd": WSD,
    "muon+wsd+lr": TUNED,
    "+vocab 2048": {**TUNED, "tokenizer.vocab_size": 2048},
    "+batch 16": {**TUNED, "train.batch_size": 16},
    "+context 256": {**TUNED, "model.context": 256, "train.batch_size": 16},
    "+embed lr x3": EMBED,
    "+betas 0.8/0.99": BETAS,
    "+batch 24": {**BETAS, "train.batch_size": 24},  # the default (params.yaml)
}

# Round two (issue 30): architecture, vocabulary and context levers, each alone on top of
# today's default: params.yaml as read (`--params`) is the round's baseline.
# Depth against width keeps the blocks' matrices at ~4 x 128^2 weights (L x d^2: 6 x 104^2,
# 2 x 184^2); context keeps the tokens a step (24 x 128). Document masking keeps each
# window's attention within its documents, and test scores it so (evaluate's doc_mask).
ROUND_TWO: dict[str, dict[str, Any]] = {
    "qk-norm (qwen3)": {"model.arch": "qwen3"},
    "gqa (2 kv heads)": {"model.n_kv_head": 2},
    "untied head": {"model.tie_embeddings": False},
    "relu2": {"model.activation": "relu2"},
    "deeper 6 x 104": {"model.n_layer": 6, "model.d_model": 104},
    "wider 2 x 184": {"model.n_layer": 2, "model.d_model": 184},
    "vocab 2048": {"tokenizer.vocab_size": 2048},
    "vocab 8192": {"tokenizer.vocab_size": 8192},
    "context 64": {"model.context": 64, "train.batch_size": 48},
    "context 256": {"model.context": 256, "train.batch_size": 12},
    "document mask": {"train.doc_mask": True},
}
# Round three (issue 47): round two's equal-time winner, vocabulary 2048, with what its ~40%
# more steps of a cheaper step may want re-tuned (the learning rate, the decay's share, the
# learning-rate/batch trade) and the capacity its smaller head frees (a wider MLP). Every row
# at the baseline's measured train seconds (`--budget time`).
V2048 = {"tokenizer.vocab_size": 2048}
ROUND_THREE: dict[str, dict[str, Any]] = {
    "vocab 2048": V2048,
    "v2048 lr 9e-3": {**V2048, "train.lr": 9e-3},
    "v2048 lr 4e-3": {**V2048, "train.lr": 4e-3},
    "v2048 decay 0.6": {**V2048, "train.decay_fraction": 0.6},
    "v2048 batch 32": {**V2048, "train.batch_size": 32},
    "v2048 mlp x4": {**V2048, "model.ffn_mult": 4},
}
# (the baseline: changes to params.yaml under every candidate's, the candidates)
ROUNDS = {1: (OLD_DEFAULT, CANDIDATES), 2: ({}, ROUND_TWO), 3: ({}, ROUND_THREE)}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--round",
        type=int,
        choices=sorted(ROUNDS),
        default=1,
        help="1: the first record log (baseline: the old default); 2: issue 30's levers, "
        "3: issue 47's (baseline: today's default)",
    )
    ap.add_argument("--candidates", default=None, help="comma-separated names (the round's all)")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE",
        help="a candidate of your own (repeatable): e.g. mine:train.lr=0.01",
    )
    ap.add_argument(
        "--common",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a change to every candidate, the baseline too: e.g. train.compile=false",
    )
    ap.add_argument("--budget", choices=["tokens", "time", "both"], default="both")
    ap.add_argument(
        "--recheck-baseline",
        action="store_true",
        help="train the baseline again after the candidates: the machine's drift over the "
        "round (its train seconds then and now)",
    )
    ap.add_argument("--eval-every", type=int, default=25, help="validation period, in steps")
    ap.add_argument("--scale", type=float, default=1.0, help="the budgets x this (a quick look)")
    ap.add_argument("--tokens", type=Path, default=REPO / "data/tokens")
    ap.add_argument("--prepared", type=Path, default=REPO / "data/prepared")
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml")
    s = ap.parse_args()
    baseline, known = ROUNDS[s.round]
    wanted = known if s.candidates is None else s.candidates.split(",")
    unknown = [n for n in wanted if n not in known and n != "baseline"]  # always run
    if unknown:
        raise UserError(
            f"--candidates: {', '.join(unknown)} not in round {s.round}'s ({', '.join(known)})"
        )
    s.candidates = {n: dict(known[n]) for n in wanted if n != "baseline"}
    for item in s.set:
        name, _, assignment = item.partition(":")
        key, eq, value = assignment.partition("=")
        if not (name and eq and key.split(".")[0] in ("tokenizer", "model", "train")):
            raise UserError(f"--set {item}: expected NAME:BLOCK.KEY=VALUE (tokenizer/model/train)")
        s.candidates.setdefault(name, {})[key] = yaml_value(value)
    s.candidates = {"baseline": {}, **s.candidates}  # the target comes from the baseline
    common = {}
    for item in s.common:
        key, eq, value = item.partition("=")
        if not (eq and key.split(".")[0] in ("tokenizer", "model", "train")):
            raise UserError(f"--common {item}: expected BLOCK.KEY=VALUE (tokenizer/model/train)")
        common[key] = yaml_value(value)
    # --common, then the candidate's own changes; configure puts the round's baseline under
    s.candidates = {n: {**common, **c} for n, c in s.candidates.items()}
    s.baseline = baseline
    return s


def yaml_value(text: str) -> Any:
    import yaml

    value = yaml.safe_load(text)
    try:
        return float(value) if isinstance(value, str) and "e" in value.lower() else value
    except ValueError:
        return value


def configure(p: Any, changes: dict[str, Any]) -> tuple[int, Any, Any]:
    """(vocab size, model block, train block) of params with `changes`."""
    blocks = {"model": p.model.model_dump(), "train": p.train.model_dump()}
    vocab = p.tokenizer.vocab_size
    for key, value in changes.items():
        block, name = key.split(".")
        if block == "tokenizer":
            vocab = int(value)
        else:
            blocks[block][name] = value
    model = type(p.model).model_validate(blocks["model"])
    return vocab, model, type(p.train).model_validate(blocks["train"])


class Clock:
    """Training seconds (compiling included, validation and logging excluded) and the
    validation curve, from the loop's callbacks."""

    def __init__(self) -> None:
        self.last = time.perf_counter()
        self.train_s = 0.0
        self.first_s: float | None = None  # the first step's, compiling included
        self.later_s: list[float] = []  # each later step's
        self.val: list[tuple[int, float]] = []

    def on_start(self, info: Any) -> None:
        self.last = time.perf_counter()

    def on_step_end(self, step: int) -> None:
        now = time.perf_counter()
        self.train_s += now - self.last
        if self.first_s is None:
            self.first_s = now - self.last
        else:
            self.later_s.append(now - self.last)
        self.last = now

    def on_validate(self, step: int, loss: float) -> None:
        self.val.append((step, loss))
        self.last = time.perf_counter()

    def on_log(self, step: int, metrics: dict) -> None:
        self.last = time.perf_counter()


class Data:
    """Token files per vocabulary size: the pipeline's own, or made in a temporary folder."""

    def __init__(self, s: argparse.Namespace, default_vocab: int) -> None:
        self.s, self.default_vocab = s, default_vocab
        self.tmp = tempfile.TemporaryDirectory(prefix="speedrun-")
        self.cache: dict[int, Path] = {}

    def get(self, vocab: int) -> tuple[dict, Path]:
        """(meta.json, the token folder) for a vocabulary size."""
        if vocab == self.default_vocab:
            out = self.s.tokens
        elif vocab in self.cache:
            out = self.cache[vocab]
        else:
            out = Path(self.tmp.name) / f"{vocab}"
            print(f"speedrun: tokenizing with a vocabulary of {vocab}", file=sys.stderr)
            tokenize(
                self.s.prepared, "scratch", vocab, 2, Path(self.tmp.name) / f"tok-{vocab}", out
            )
            self.cache[vocab] = out
        return json.loads((out / "meta.json").read_text()), out


def bits(loss: float, meta: dict, split: str) -> float:
    """A loss in nats per token as bits per byte of the split (its bytes per token)."""
    return loss / math.log(2) / (meta["bytes"][split] / meta["tokens"][split])


def run_one(
    p: Any, vocab: int, model_cfg: Any, cfg: Any, data: Data, eval_every: int, test: bool = True
) -> dict[str, Any]:
    meta, token_dir = data.get(vocab)
    # every run compiles its own graph, as the train stage does: a graph compiled for an
    # earlier run's shapes would otherwise be recompiled with dynamic shapes (slower
    # kernels), or reused (its compiling not counted)
    torch._dynamo.reset()
    model = build_model(model_cfg, meta["vocab_size"], meta["eot_id"], meta["pad_id"], p.seed)
    train_cfg = override(
        cfg,
        eval_every=eval_every,
        checkpoint_every=cfg.steps,
        log_every=min(cfg.log_every, cfg.steps),
        keep_checkpoints=1,
        resume="never",
        final="last",
    )
    clock = Clock()
    with tempfile.TemporaryDirectory(prefix="speedrun-ckpt-") as ckpt:
        run = Run(p.seed, model_cfg.context, Path(ckpt), "speedrun", eot_id=meta["eot_id"])
        stdout, sys.stdout = sys.stdout, sys.stderr  # the loop's prints: not the table
        try:
            train(
                model,
                load_tokens(token_dir, "train"),
                load_tokens(token_dir, "val"),
                train_cfg,
                run,
                [clock],
            )
        finally:
            sys.stdout = stdout
    per_step = cfg.batch_size * cfg.grad_accum * model_cfg.context
    curve = [(step * per_step, bits(loss, meta, "val")) for step, loss in clock.val]
    out = {
        "steps": cfg.steps,
        "tokens": cfg.steps * per_step,
        "train_s": clock.train_s,
        "first_s": clock.first_s,
        "step_s": statistics.median(clock.later_s) if clock.later_s else clock.first_s,
        "val_bpb": curve[-1][1],
        "curve": curve,
    }
    if test:
        result = evaluate_split(
            model,
            token_dir,
            data.s.prepared,
            "test",
            model_cfg.context,
            32,
            torch.device("cpu"),
            desc="test",
            doc_mask=cfg.doc_mask,
        )
        out.update(
            test_bpb=result.bits_per_byte,
            test_se=result.bits_per_byte_se,
            xz_bpb=result.xz_bits_per_byte,
        )
        print(
            f"speedrun: {cfg.steps} steps, {clock.train_s:.0f} s: val {out['val_bpb']:.4f}, "
            f"test {out['test_bpb']:.4f} bits/byte",
            file=sys.stderr,
        )
    return out


def tokens_to(curve: list[tuple[int, float]], target: float) -> int | None:
    return next((tokens for tokens, bpb in curve if bpb <= target), None)


def with_steps(cfg: Any, steps: int) -> Any:
    return type(cfg).model_validate({**cfg.model_dump(), "steps": max(1, steps)})


PROBE_STEPS = 30
# A time row counts when its train seconds are within this share of the baseline's; else it
# is trained again with steps refitted from its own costs, FIT_TRIES runs at most.
TIME_TOLERANCE = 0.02
FIT_TRIES = 3


def step_costs(run: dict[str, Any]) -> tuple[float, float]:
    """(seconds of the first step, compiling included; the mean later step's) of a run: the
    mean, because the budget is a total of train seconds."""
    if run["steps"] == 1:
        return run["first_s"], run["first_s"]
    return run["first_s"], (run["train_s"] - run["first_s"]) / (run["steps"] - 1)


def probe(p: Any, vocab: int, model_cfg: Any, cfg: Any, data: Data) -> dict[str, Any]:
    """A short untested run of PROBE_STEPS, for a candidate with no token-budget run to read
    its step costs from."""
    return run_one(p, vocab, model_cfg, with_steps(cfg, PROBE_STEPS), data, PROBE_STEPS, False)


def fit_to_time(
    p: Any,
    vocab: int,
    model_cfg: Any,
    cfg: Any,
    data: Data,
    eval_every: int,
    budget_s: float,
    costs: tuple[float, float],
) -> dict[str, Any]:
    """The run whose train seconds are the budget's: steps from the costs known (a token run's
    or a probe's), then, while it misses by more than TIME_TOLERANCE, from the last run's own
    costs. The schedule ends at its end either way; the closest run is the row."""
    tried: dict[int, dict[str, Any]] = {}
    for _ in range(FIT_TRIES):
        first, per_step = costs
        steps = max(1, 1 + round((budget_s - first) / per_step))
        if steps in tried:
            break
        print(f"speedrun: {steps} steps (time budget {budget_s:.1f} s)", file=sys.stderr)
        run = tried[steps] = run_one(p, vocab, model_cfg, with_steps(cfg, steps), data, eval_every)
        if abs(run["train_s"] - budget_s) <= TIME_TOLERANCE * budget_s:
            break
        costs = step_costs(run)
    best = min(tried.values(), key=lambda r: abs(r["train_s"] - budget_s))
    return {**best, "fit_runs": len(tried), "budget_s": budget_s}


def main() -> None:
    s = parse_args()
    p = load_params(s.params)
    data = Data(s, p.tokenizer.vocab_size)
    print(machine.line())  # the CPU's ISA decides step times: every table names its machine
    configs = {n: configure(p, {**s.baseline, **c}) for n, c in s.candidates.items()}
    _, base_model, base_train = configs["baseline"]
    budget_tokens = round(base_train.steps * s.scale) * base_train.batch_size * base_model.context
    results: dict[str, dict[str, Any]] = {}
    for name, (vocab, model_cfg, cfg) in configs.items():
        if name != "baseline" and s.budget == "time":
            continue
        steps = round(budget_tokens / (cfg.batch_size * cfg.grad_accum * model_cfg.context))
        print(f"speedrun: {name}: {steps} steps (token budget)", file=sys.stderr)
        results.setdefault(name, {})["tokens"] = run_one(
            p, vocab, model_cfg, with_steps(cfg, steps), data, s.eval_every
        )
    base = results["baseline"]["tokens"]
    # the time budget is the baseline's measured train seconds (compiling included)
    budget_s = base["train_s"]
    if s.budget in ("time", "both"):
        for name, (vocab, model_cfg, cfg) in configs.items():
            own = results.get(name, {}).get("tokens")
            # a token run already within the tolerance (the baseline's always) is the time row
            if own is not None and abs(own["train_s"] - budget_s) <= TIME_TOLERANCE * budget_s:
                results[name]["time"] = {**own, "fit_runs": 0, "budget_s": budget_s}
                continue
            print(f"speedrun: {name}: fitting to the time budget", file=sys.stderr)
            costs = step_costs(own or probe(p, vocab, model_cfg, cfg, data))
            results.setdefault(name, {})["time"] = fit_to_time(
                p, vocab, model_cfg, cfg, data, s.eval_every, budget_s, costs
            )
    if s.recheck_baseline:
        vocab, model_cfg, cfg = configs["baseline"]
        print("speedrun: the baseline again (the machine's drift)", file=sys.stderr)
        again = run_one(p, vocab, model_cfg, with_steps(cfg, base["steps"]), data, s.eval_every)
        results["baseline"]["again"] = again
    report(results, base["val_bpb"], s)


def report(results: dict, target: float, s: argparse.Namespace) -> None:
    base_tokens = tokens_to(results["baseline"]["tokens"]["curve"], target)
    print(f"\ntarget: the baseline's final val bits/byte, {target:.4f}\n")
    print(
        "| lever | budget | steps | train s | val bits/byte | test bits/byte | xz -9 | "
        "tokens to target | ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    out = []
    budgets = ("tokens", "time") if s.budget == "both" else (s.budget,)
    budgets += ("again",)  # --recheck-baseline's run
    for name, by_budget in results.items():
        for budget, r in by_budget.items():
            if budget not in budgets:
                continue
            reached = tokens_to(r["curve"], target)
            ratio = reached / base_tokens if reached and base_tokens else None
            print(
                f"| {name} | {budget} | {r['steps']} | {r['train_s']:.0f} | {r['val_bpb']:.4f} | "
                f"{r['test_bpb']:.4f} ± {r['test_se']:.4f} | {r['xz_bpb']:.4f} | "
                f"{f'{reached:,}' if reached else 'not reached'} | "
                f"{f'{ratio:.2f}' if ratio else '-'} |"
            )
            out.append(
                {
                    "lever": name,
                    "budget": budget,
                    "changes": s.candidates[name],
                    "tokens_to_target": reached,
                    "ratio": ratio,
                    **{k: v for k, v in r.items() if k != "curve"},
                }
            )
    print(json.dumps({"target_val_bpb": target, "results": out}))


if __name__ == "__main__":
    run_stage(main)
