"""A tiny tokenizer and model for the GRPO and DPO tests: seconds to build, on the task set."""

from __future__ import annotations

import functools

import torch
from conftest import ROOT, model_args

from codexlm.model import build_model
from codexlm.rl.tasks import load_tasks
from codexlm.tokenizer import train_bpe

TRAIN = ROOT / "tasks" / "train.jsonl"


@functools.cache
def tokenizer():
    tasks = load_tasks(str(TRAIN), "test")
    return train_bpe((t.prompt + t.canonical_solution for t in tasks), 400, 2)


def model(seed: int = 0, **overrides) -> torch.nn.Module:
    tok = tokenizer()
    cfg = model_args(n_layer=1, n_head=2, d_model=32, context=128, **overrides)
    m = build_model(cfg, len(tok), tok.eos_token_id, tok.pad_token_id, seed)
    m.train()
    return m
