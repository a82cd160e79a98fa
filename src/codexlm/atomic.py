"""Atomic writes: nothing is ever left half written where a reader (or DVC) would see it."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        tmp.unlink(missing_ok=True)  # never leave a half-written temp file behind
        if e.filename is None:  # a write's error names no file: name the one it was for
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise
    os.replace(tmp, path)


def write_json(path: Path, obj: object) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


@contextmanager
def replace_dir(path: Path) -> Iterator[Path]:
    """Yield a temp folder beside `path`; on success it replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    if tmp.exists():  # a previous write that never finished (killed, full disk)
        shutil.rmtree(tmp)
        print(f"removed {tmp}, left by a write that did not finish", file=sys.stderr)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = path.with_name(f".{path.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
