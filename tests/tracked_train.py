"""A tiny real train() run logged to DVCLive and the trackers, in a process of its own (for
tests/test_trackers.py): `python tests/tracked_train.py SPEC.json`, where the spec names the
folder, the trackers, a step to die at by SIGKILL, whether to count the network connections
the process attempts, and the later stages' metrics and files to log at the end.

The counting is an audit hook (PEP 578): every socket connect and name lookup this
interpreter makes, whatever library makes it, passes through it first.
"""

from __future__ import annotations

import atexit
import ipaddress
import json
import os
import signal
import socket
import sys
from pathlib import Path

SPEC = json.loads(Path(sys.argv[1]).read_text())
OUT = Path(SPEC["dir"])
attempts: list[str] = []


def loopback(address: object) -> bool:
    if isinstance(address, str | bytes):  # an AF_UNIX path: no network
        return True
    host = address[0] if isinstance(address, tuple) else address
    if host in ("localhost", "", None):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:  # a host name to look up: the network
        return False


def audit(event: str, args: tuple) -> None:
    if event == "socket.connect":
        sock, address = args
        if sock.family != socket.AF_UNIX and not loopback(address):
            attempts.append(f"connect {address}")
    elif event == "socket.getaddrinfo" and not loopback(args[0]):
        attempts.append(f"getaddrinfo {args[0]}")


if SPEC.get("audit"):
    sys.addaudithook(audit)
    # written however the run ends, so a failed run still says what it tried
    atexit.register(lambda: (OUT / "attempts.json").write_text(json.dumps(attempts)))

import numpy as np  # noqa: E402
from conftest import model_args, train_args  # noqa: E402

from codexlm import train as train_mod  # noqa: E402
from codexlm.live import LiveLogger  # noqa: E402
from codexlm.model import build_model  # noqa: E402
from codexlm.trackers import Trackers, check, log_results  # noqa: E402

VOCAB, CONTEXT = 64, 16
TRAIN = dict(optimizer="adamw", embed_lr_scale=1.0, steps=8, batch_size=4, grad_accum=1)
TRAIN.update(lr=1e-2, min_lr=1e-3, warmup_steps=2, precision="fp32", compile=False)
TRAIN.update(eval_every=4, eval_batches=1, log_every=1, checkpoint_every=2, keep_checkpoints=2)


def tokens() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    base = np.tile(np.arange(VOCAB, dtype=np.uint16), 60)
    noise = rng.integers(0, VOCAB, size=base.size).astype(np.uint16)
    data = np.where(rng.random(base.size) < 0.1, noise, base)
    return data[:3000], data[3000:]


def die_at(step: int) -> None:
    """SIGKILL while the batches of `step` are drawn: no handler, no flush, no cleanup."""
    real = train_mod.train_batch

    def dying(toks, seed, s, *a, **k):
        if s == step:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(toks, seed, s, *a, **k)

    train_mod.train_batch = dying


def main() -> None:
    loggers = ["dvclive", *SPEC["trackers"]]
    cfg = train_args(**TRAIN, loggers=loggers)
    root, log = OUT / "trackers", OUT / "log"
    check(cfg.loggers, root)
    if SPEC.get("kill_at") is not None:
        die_at(SPEC["kill_at"])
    model = build_model(
        model_args(n_layer=1, n_head=2, d_model=32, context=CONTEXT), VOCAB, 0, 1, 0
    )
    run = train_mod.Run(0, CONTEXT, OUT / "ckpt", "fp-tracked", log_dir=log)
    params = {"seed": 0, "train": cfg.model_dump()}
    callbacks = [LiveLogger(log), Trackers(cfg.loggers, root, log, params, "fp-tracked")]
    train_mod.train(model, *tokens(), cfg, run, callbacks)
    if SPEC.get("results"):  # what the evaluate and export stages log at the end
        files = [OUT / f for f in SPEC.get("files", [])]
        log_results(log, root, SPEC["results"], files)


if __name__ == "__main__":
    main()
