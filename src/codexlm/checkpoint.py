"""Atomic save and verified load of the whole training state.

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

import hashlib
import json
import os
import random
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from codexlm.atomic import sha256_file

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


def fingerprint(obj: Any) -> str:
    """A stable hash of a JSON-able value (params, data hashes, versions)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


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


def save(
    root: Path,
    step: int,
    weights: dict[str, torch.Tensor],
    optimizer: dict[str, Any],
    state: dict[str, Any],
    log_dir: Path | None = None,
) -> Path:
    """Write checkpoint `step` under root atomically, with a copy of `log_dir` (the training
    log up to this step) when given; return its folder."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:08d}"
    tmp = root / f".tmp-{final.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    plain_rng, tensor_rng = rng_state()
    # clone: safetensors refuses tensors that share storage (tied embeddings)
    save_file(
        {k: v.detach().contiguous().cpu().clone() for k, v in weights.items()},
        tmp / "model.safetensors",
    )
    torch.save(optimizer, tmp / "optimizer.pt")
    torch.save(tensor_rng, tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps({**state, "step": step, "rng": plain_rng}))
    if log_dir is not None and log_dir.is_dir():
        shutil.copytree(log_dir, tmp / LOG)
    files = sorted(f for f in tmp.rglob("*") if f.is_file())
    manifest = {f.relative_to(tmp).as_posix(): sha256_file(f) for f in files}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    for f in [*files, tmp / "manifest.json"]:
        with f.open("rb") as fh:
            os.fsync(fh.fileno())
    for folder in sorted((p for p in tmp.rglob("*") if p.is_dir()), reverse=True):
        _fsync_dir(folder)
    _fsync_dir(tmp)
    if final.exists():  # a finished run's checkpoint rewritten by a forced rerun
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(root)
    return final


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
        if sha256_file(f) != digest:
            raise CheckpointError(f"{f}: sha256 mismatch (corrupt or truncated)")
    state = _read_state(path)
    if state is None:
        raise CheckpointError(f"{path / 'state.json'}: unreadable")
    return state


def load(ckpt: Checkpoint, device: torch.device | str = "cpu") -> tuple[dict, dict, dict]:
    """(weights, optimizer state, tensor RNG states) of a verified checkpoint."""
    weights = load_file(ckpt.path / "model.safetensors", device=str(device))
    optimizer = torch.load(ckpt.path / "optimizer.pt", map_location=device, weights_only=True)
    rng = torch.load(ckpt.path / "rng.pt", map_location="cpu", weights_only=True)
    return weights, optimizer, rng


def _read_state(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads((path / "state.json").read_text())
    except (OSError, ValueError):
        return None


def candidates(root: Path) -> list[Path]:
    """Complete checkpoint folders, newest first."""
    if not root.is_dir():
        return []
    return sorted((p for p in root.glob(f"{PREFIX}*") if p.is_dir()), reverse=True)


# what each part of a run's identity covers, for the message when a checkpoint is removed
IDENTITY_PARTS = {
    "params": "other params or data",
    "code": "other code",
    "packages": "other packages",
    "arithmetic": "other precisions",
}


def stale_reason(state: dict[str, Any], identity: dict[str, str]) -> str | None:
    """Why a checkpoint with this state.json is not this run's (None: it is)."""
    theirs = state.get("identity")
    if not isinstance(theirs, dict):
        return "an older codexlm without a run identity"
    differ = [why for part, why in IDENTITY_PARTS.items() if theirs.get(part) != identity[part]]
    return ", ".join(differ) or None


def remove_stale(root: Path, identity: dict[str, str]) -> list[str]:
    """Remove interrupted writes and the checkpoints of other runs; say what went and why.

    A checkpoint written under other params, data, code or packages must never be resumed:
    its weights are not what this run computes. One whose state.json is unreadable is left
    for `find_resumable` to skip as corrupt.
    """
    for path in root.glob(".tmp-*") if root.is_dir() else []:
        shutil.rmtree(path)  # a write that was interrupted
    removed = []
    for path in candidates(root):
        state = _read_state(path)
        why = stale_reason(state, identity) if state is not None else None
        if why is not None:
            shutil.rmtree(path)
            removed.append(f"removed {path} (written by {why})")
    return removed


def find_resumable(root: Path) -> Checkpoint | None:
    """The newest checkpoint that verifies, or None; a corrupt one is named and skipped."""
    for path in candidates(root):
        try:
            return Checkpoint(path, verify(path))
        except CheckpointError as e:
            warnings.warn(
                f"checkpoint skipped: {e}; falling back to the previous one", stacklevel=2
            )
    return None


def best(root: Path) -> Checkpoint | None:
    """The checkpoint with the lowest validation loss (ties: the newest), among those
    validated at their own step (a checkpoint written on a stop carries an older loss)."""
    scored = []
    for path in candidates(root):
        state = _read_state(path)
        if state and state.get("val_loss") is not None and state.get("val_step") == state["step"]:
            scored.append((state["val_loss"], -state["step"], path, state))
    if not scored:
        return None
    _, _, path, state = min(scored)
    return Checkpoint(path, state)


def prune(root: Path, keep: int) -> None:
    """Keep the newest `keep` checkpoints and the best one; called after a save completes."""
    keep_best = best(root)
    for path in candidates(root)[keep:]:
        if keep_best is None or path != keep_best.path:
            shutil.rmtree(path)


def clear(root: Path) -> list[Path]:
    """Remove every checkpoint (and interrupted write) under root; return what was removed."""
    removed = [*candidates(root), *root.glob(".tmp-*")] if root.is_dir() else []
    for path in removed:
        shutil.rmtree(path)
    return removed


def folder_digest(path: Path) -> str:
    """sha256 over the names and contents of every file in a folder (a model to fine-tune)."""
    h = hashlib.sha256()
    for f in sorted(p for p in Path(path).rglob("*") if p.is_file()):
        h.update(f.relative_to(path).as_posix().encode())
        h.update(sha256_file(f).encode())
    return h.hexdigest()
