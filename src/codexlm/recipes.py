"""Named param sets for bigger machines (recipes/*.yaml): each a few blocks' keys over
params.yaml, applied with `dvc exp run -S` so the experiment is an ordinary one.

`python -m codexlm.recipes NAME` (or `make recipe NAME=...`) validates the recipe over
params.yaml, builds its model on the meta device (no memory, no GPU), and prints its
parameter count, training FLOPs per token and, as estimates only, tokens/s and memory on an
assumed GPU; `--run` then runs the experiment. Nothing here is measured on a GPU.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from codexlm import params
from codexlm.errors import UserError, run_stage
from codexlm.metrics import PEAK_BF16_FLOPS, flops_per_token
from codexlm.model import build_model, check_arch, count_params
from codexlm.optim import hidden_matrices

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
# The assumptions behind every estimate, printed with it: an H100 SXM's dense bf16 peak and
# a model FLOPs utilisation typical of a compiled dense decoder of this size (not measured)
ASSUMED_GPU = "H100"
ASSUMED_MFU = 0.40
# Bytes a parameter holds while training: fp32 weights and gradients, plus the optimizer's
# fp32 state: AdamW two moments (16 B in all); Muon one momentum for the hidden matrices
# (12 B), the AdamW half's two for the rest
ADAMW_BYTES, MUON_BYTES = 16, 12
# Activation bytes kept per token per layer under bf16 with fused (flash) attention: ~34 x
# d_model (Korthikanti et al. 2022, table 2, without the s/h attention-score term)
ACT_BYTES_PER_D = 34


@dataclass(frozen=True)
class Estimate:
    params: int
    flops_per_token: float
    tokens_per_s: float  # all GPUs together
    state_gb: float  # weights, gradients and optimizer state per GPU
    activation_gb: float  # per GPU, one micro-batch


def names() -> list[str]:
    return sorted(p.stem for p in RECIPES.glob("*.yaml"))


def load(name: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(the recipe's own `recipe:` block, its params changes by block)."""
    path = RECIPES / f"{name}.yaml"
    if not path.is_file():
        raise UserError(f"recipe {name!r}: no {path.name} in recipes/ (have: {', '.join(names())})")
    raw = params.load_yaml(path)
    meta = raw.pop("recipe")
    return meta, raw


def overrides(changes: dict[str, dict[str, Any]]) -> list[str]:
    """The recipe as `dvc exp run -S` assignments, in file order."""
    return [
        f"{block}.{k}={str(v).lower() if isinstance(v, bool) else v}"
        for block, keys in changes.items()
        for k, v in keys.items()
    ]


def apply(base: dict[str, Any], changes: dict[str, dict[str, Any]]) -> params.Params:
    """params.yaml with the recipe's keys, validated as the stages validate it."""
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for block, keys in changes.items():
        merged[block].update(keys)
    p = params.parse(merged, origin="params.yaml + recipe")
    check_arch(p.model)
    return p


def meta_model(p: params.Params) -> torch.nn.Module:
    """The recipe's model with its shapes and no storage: counts without allocating."""
    with torch.device("meta"):
        return build_model(p.model, p.tokenizer.vocab_size, 0, 1, p.seed)


def estimate(p: params.Params, gpus: int) -> Estimate:
    m, t = p.model, p.train
    model = meta_model(p)
    n = count_params(model)
    hidden = sum(q.numel() for q in hidden_matrices(model)) if t.optimizer == "muon" else 0
    fpt = flops_per_token(n, m.n_layer, m.d_model, m.context)
    tokens_per_s = gpus * ASSUMED_MFU * PEAK_BF16_FLOPS[ASSUMED_GPU] / fpt
    shards = gpus if t.strategy == "fsdp" else 1
    state = (hidden * MUON_BYTES + (n - hidden) * ADAMW_BYTES) / shards
    activations = t.batch_size * m.context * m.n_layer * m.d_model * ACT_BYTES_PER_D
    return Estimate(n, fpt, tokens_per_s, state / 1e9, activations / 1e9)


def describe(name: str, meta: dict[str, Any], p: params.Params, e: Estimate) -> str:
    m, t = p.model, p.train
    per_step = t.batch_size * t.grad_accum * meta["gpus"] * m.context
    return "\n".join(
        [
            f"recipe {name}: {meta['description']}",
            f"  model: {m.arch} {m.n_layer} x {m.d_model} ({m.n_head} heads), context "
            f"{m.context}, vocabulary {p.tokenizer.vocab_size}",
            f"  parameters: {e.params:,} ({e.params / 1e6:.1f}M)",
            f"  training FLOPs per token: {e.flops_per_token:.3g} (metrics.flops_per_token)",
            f"  tokens a step: {per_step:,}; {t.steps} steps: {per_step * t.steps / 1e9:.2f}B",
            f"  estimate, not measured: {e.tokens_per_s:,.0f} tokens/s on {meta['gpus']} x "
            f"{ASSUMED_GPU} (bf16 peak {PEAK_BF16_FLOPS[ASSUMED_GPU] / 1e12:.0f} TFLOP/s, "
            f"MFU {ASSUMED_MFU:.0%} assumed): {per_step * t.steps / e.tokens_per_s / 3600:.1f} h",
            f"  estimate, not measured: {e.state_gb:.1f} GB of weights, gradients and "
            f"{t.optimizer} state per GPU, + ~{e.activation_gb:.1f} GB of activations per "
            f"micro-batch of {t.batch_size} (logits excluded: the loss is chunked)",
        ]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name", help=f"one of: {', '.join(names())}")
    ap.add_argument("--run", action="store_true", help="run `dvc exp run` with the recipe")
    ap.add_argument("--params", type=Path, default=Path(params.PARAMS_FILE))
    s = ap.parse_args()
    meta, changes = load(s.name)
    p = apply(params.load_yaml(s.params), changes)
    print(describe(s.name, meta, p, estimate(p, meta["gpus"])))
    cmd = ["dvc", "exp", "run", "-n", s.name]
    for assignment in overrides(changes):
        cmd += ["-S", assignment]
    print("  command: " + " ".join(cmd))
    if s.run:
        sys.exit(subprocess.call(cmd))


if __name__ == "__main__":
    run_stage(main)
