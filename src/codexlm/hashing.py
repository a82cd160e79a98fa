"""Content hashing, in one place: files, folders, text, JSON-able values, sets of named files.

Every digest the project records or compares (token files in meta.json, checkpoint manifests,
run fingerprints, the code digest, the split key of a document) is computed here, so two
places can never hash "the same thing" two ways.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    """sha256 (hex) of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def bytes_sha256(data: bytes) -> str:
    """sha256 (hex) of bytes in memory (a checkpoint file before it is written)."""
    return hashlib.sha256(data).hexdigest()


def folder_sha256(path: Path) -> str:
    """sha256 (hex) over the relative names and contents of every file in a folder."""
    h = hashlib.sha256()
    for f in sorted(p for p in Path(path).rglob("*") if p.is_file()):
        h.update(f.relative_to(path).as_posix().encode())
        h.update(file_sha256(f).encode())
    return h.hexdigest()


def text_sha256(text: str) -> bytes:
    """The raw sha256 of a text's UTF-8 bytes (the stable split key of a document)."""
    return hashlib.sha256(text.encode("utf-8")).digest()


def fingerprint(obj: Any) -> str:
    """A stable short hash of a JSON-able value (params, data hashes, versions)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def named_files_fingerprint(files: Mapping[str, Path]) -> str:
    """A short hash over (name, contents) of named files, in name order (the loaded code)."""
    h = hashlib.sha256()
    for key, path in sorted(files.items()):
        h.update(key.encode() + b"\0" + hashlib.sha256(Path(path).read_bytes()).digest())
    return h.hexdigest()[:16]


def contents_sha256(files: Iterable[tuple[str, bytes]]) -> tuple[int, str]:
    """The number of (name, bytes) files and the sha256 (hex) of their names and contents, in
    the order given: the same for a folder read from disk and for an archive of it (the
    standard library and its snapshot)."""
    h, n = hashlib.sha256(), 0
    for name, data in files:
        h.update(name.encode() + b"\0")
        h.update(hashlib.sha256(data).digest())
        n += 1
    return n, h.hexdigest()
