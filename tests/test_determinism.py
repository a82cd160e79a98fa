"""Same params, same weights: two training processes end bit-identical, compiled included."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

SCRIPT = """
import contextlib, hashlib, io, sys, tempfile
from pathlib import Path
import numpy as np, torch
from types import SimpleNamespace
from codexlm import train as T
from codexlm.model import build_model

rng = np.random.default_rng(0)
tokens = rng.integers(0, 512, size=200_000).astype(np.uint16)
model_cfg = SimpleNamespace(arch="llama", n_layer=2, n_head=4, d_model=64, context=64, dropout=0.0)
model = build_model(model_cfg, 512, 0, 0, seed=0)
cfg = SimpleNamespace(
    steps=6, batch_size=16, grad_accum=1, optimizer=sys.argv[2], lr=3e-3, min_lr=3e-4,
    schedule="cosine", warmup_steps=2, decay_fraction=0.2, embed_lr_scale=3.0,
    weight_decay=0.1, beta1=0.9, beta2=0.95, grad_clip=1.0, precision="fp32",
    compile=sys.argv[1] == "compile", compile_mode="default", eval_every=6, eval_batches=1,
    log_every=3, checkpoint_every=6, keep_checkpoints=1, resume="never", final="last",
    max_bad_steps=3, strategy="ddp", max_stop_seconds=60.0, doc_mask=False)
with tempfile.TemporaryDirectory() as d, contextlib.redirect_stdout(io.StringIO()):
    T.train(model, tokens, tokens[:20_000], cfg, T.Run(0, 64, Path(d), "det"))
digest = hashlib.sha256()
for name, tensor in sorted(model.state_dict().items()):
    digest.update(name.encode() + tensor.detach().numpy().tobytes())
print(digest.hexdigest())
"""


# each mode once and each optimizer once: only the model is compiled, so a compiled AdamW run
# compiles the same graphs as the compiled Muon run (~100 s of the suite for no new kernel)
@pytest.mark.parametrize(
    ("mode", "optimizer"),
    [("eager", "adamw"), pytest.param("compile", "muon", marks=pytest.mark.slow)],  # 2 compiles
)
def test_two_processes_train_identical_weights(tmp_path: Path, mode: str, optimizer: str) -> None:
    """With two CPU threads, as a real run has (the suite itself runs single-threaded):
    compiled kernels once summed the embedding's gradient with atomic adds across threads,
    so the last bits of the weights changed from run to run."""
    script = tmp_path / "train_once.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": str(ROOT / "src")}
    digests = []
    for _ in range(2):
        proc = subprocess.run(
            [sys.executable, str(script), mode, optimizer], env=env, capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        digests.append(proc.stdout.split()[-1])
    assert digests[0] == digests[1]
