"""The checkpoint file format: atomic write, verification and read of the whole training
state. It decides nothing: `codexlm.checkpoint.policy` chooses what to resume, when to write
and what to keep, and calls `write`, `verify`, `read` and `complete` here.

A checkpoint is a folder `step-00000200/` holding the trainable weights (safetensors), the
optimizer state and RNG states (torch.save, loaded with weights_only=True), `state.json`
(step, tokens seen, validation loss, the run's fingerprint, python/numpy RNG states) and
`manifest.json` (the sha256 of every other file), and `log/`, the training log as it stood at
that step (DVC removes the train stage's report folder before it reruns the stage, so a
resumed run takes its log history from here). It is written under a temporary name and
renamed into place, so a folder named `step-*` is complete unless something corrupted it
later, which the manifest catches.
"""

from __future__ import annotations

import errno
import io
import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from safetensors.torch import save as save_tensors

from codexlm.errors import MachineFault, free_bytes
from codexlm.hashing import bytes_sha256, file_sha256

PREFIX = "step-"
REQUIRED = {"model.safetensors", "optimizer.pt", "rng.pt", "state.json"}  # besides the manifest
LOG = "log"  # the copy of the training log inside a checkpoint


class CheckpointError(Exception):
    """A checkpoint that failed verification; the message names the file."""


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    state: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.state["step"])


def rng_state() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(JSON-able states, tensor states) of every RNG a step can consume."""
    py = random.getstate()
    np_state = np.random.get_state()
    plain = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda_{i}"] = s
    return plain, tensors


def set_rng_state(plain: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    v, state, gauss = plain["python"]
    random.setstate((v, tuple(state), gauss))
    name, keys, pos, has_gauss, cached = plain["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("cuda_")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _torch_bytes(obj: Any) -> bytes:
    # serialised in memory and written by Python: a full disk is then an OSError (ENOSPC)
    # naming the file, where torch.save onto the disk reports "unexpected pos" from C++
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def serialise(
    weights: dict[str, torch.Tensor],
    optimizer: dict[str, Any],
    state: dict[str, Any],
    log_dir: Path | None,
) -> dict[str, bytes]:
    """Every file of a checkpoint (its relative name -> bytes), manifest included."""
    plain_rng, tensor_rng = rng_state()
    # clone: safetensors refuses tensors that share storage (tied embeddings)
    out = {
        "model.safetensors": save_tensors(
            {k: v.detach().contiguous().cpu().clone() for k, v in weights.items()}
        ),
        "optimizer.pt": _torch_bytes(optimizer),
        "rng.pt": _torch_bytes(tensor_rng),
        "state.json": json.dumps({**state, "rng": plain_rng}).encode(),
    }
    if log_dir is not None and log_dir.is_dir():
        for f in sorted(p for p in log_dir.rglob("*") if p.is_file()):
            out[f"{LOG}/{f.relative_to(log_dir).as_posix()}"] = f.read_bytes()
    manifest = {name: bytes_sha256(data) for name, data in sorted(out.items())}
    out["manifest.json"] = json.dumps(manifest, indent=1).encode()
    return out


def size(contents: dict[str, bytes]) -> int:
    return sum(len(data) for data in contents.values())


def space_message(root: Path, what: str, needed: int, free: int | None) -> str:
    """The one line for a checkpoint folder without room, naming what a resume starts from."""
    last = complete(root)
    resumes = f"a rerun resumes from {last[0].name}" if last else "no checkpoint to resume yet"
    free_s = f"{free:,} bytes are free" if free is not None else "free space unknown"
    return (
        f"no space left in {root} for {what}: it needs {needed:,} bytes, {free_s}; free space "
        f"there or lower train.keep_checkpoints ({resumes}, unchanged)"
    )


def write(
    root: Path,
    step: int,
    weights: dict[str, torch.Tensor],
    optimizer: dict[str, Any],
    state: dict[str, Any],
    log_dir: Path | None = None,
) -> Path:
    """Write checkpoint `step` under root atomically, with a copy of `log_dir` (the training
    log up to this step) when given; return its folder. Without room for all of it, nothing
    is left behind and MachineFault names the folder and the bytes needed."""
    contents = serialise(weights, optimizer, {**state, "step": step}, log_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:08d}"
    tmp = root / f".tmp-{final.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    needed, free = size(contents), free_bytes(root)
    if free is not None and free < needed:  # known before a byte is written
        raise MachineFault(space_message(root, f"the checkpoint of step {step}", needed, free))
    try:
        _write_all(tmp, contents)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)  # the next run would remove it as well
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        what = f"the checkpoint of step {step}"
        raise MachineFault(space_message(root, what, needed, free_bytes(root))) from None
    if final.exists():  # a finished run's checkpoint rewritten by a forced rerun
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(root)
    return final


def _write_all(tmp: Path, contents: dict[str, bytes]) -> None:
    tmp.mkdir()
    for name, data in contents.items():
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    for folder in sorted((p for p in tmp.rglob("*") if p.is_dir()), reverse=True):
        _fsync_dir(folder)
    _fsync_dir(tmp)


def verify(path: Path) -> dict[str, Any]:
    """Check every file against the manifest; return state.json. Raise CheckpointError."""
    manifest_path = path / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{manifest_path}: unreadable ({e.__class__.__name__})") from None
    if not isinstance(manifest, dict) or not set(manifest) >= REQUIRED:
        listed = sorted(manifest) if isinstance(manifest, dict) else type(manifest).__name__
        raise CheckpointError(f"{manifest_path}: lists {listed}, not every file it needs")
    for name, digest in manifest.items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{f}: missing")
        if file_sha256(f) != digest:
            raise CheckpointError(f"{f}: sha256 mismatch (corrupt or truncated)")
    state = read_state(path)
    if state is None:
        raise CheckpointError(f"{path / 'state.json'}: unreadable")
    return state


def read(ckpt: Checkpoint, device: torch.device | str = "cpu") -> tuple[dict, dict, dict]:
    """(weights, optimizer state, tensor RNG states) of a verified checkpoint."""
    weights = load_file(ckpt.path / "model.safetensors", device=str(device))
    optimizer = torch.load(ckpt.path / "optimizer.pt", map_location=device, weights_only=True)
    rng = torch.load(ckpt.path / "rng.pt", map_location="cpu", weights_only=True)
    return weights, optimizer, rng


def read_state(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads((path / "state.json").read_text())
    except (OSError, ValueError):
        return None


def complete(root: Path) -> list[Path]:
    """Complete checkpoint folders, newest first."""
    if not root.is_dir():
        return []
    return sorted((p for p in root.glob(f"{PREFIX}*") if p.is_dir()), reverse=True)


def interrupted_writes(root: Path) -> list[Path]:
    """Temporary folders of writes that never finished (a crash, a full disk)."""
    return sorted(root.glob(".tmp-*")) if root.is_dir() else []
