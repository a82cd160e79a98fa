"""Write, or check, the built-in default corpus: the standard-library .py sources that
`data.source: stdlib` reads (tests excluded) of the running CPython, as a tar.xz archive.

    python tools/snapshot_corpus.py --check   # this interpreter's stdlib against the snapshot
    python tools/snapshot_corpus.py --write   # (re)write it from this interpreter (3.11.7)

The archive is deterministic: members in the order prepare read the folder (each folder's
files sorted, then its subfolders sorted), no timestamps, owners or modes of the machine.
What prepare depends on is its content (names and bytes), whose digest `--check` compares;
another xz build may compress the same content to other bytes.
"""

from __future__ import annotations

import argparse
import io
import lzma
import platform
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from codexlm import corpus  # noqa: E402

SNAPSHOT = REPO / corpus.SNAPSHOT


def write(out: Path) -> None:
    root = corpus.stdlib_root()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in corpus._stdlib_files():
            data = path.read_bytes()
            info = tarfile.TarInfo(path.relative_to(root).as_posix())
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(lzma.compress(buffer.getvalue(), preset=9 | lzma.PRESET_EXTREME))
    tmp.replace(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="write the snapshot from this Python")
    ap.add_argument("--check", action="store_true", help="compare it with this Python's stdlib")
    args = ap.parse_args()
    if args.write:
        write(SNAPSHOT)
        print(f"wrote {SNAPSHOT.relative_to(REPO)} ({SNAPSHOT.stat().st_size:,} bytes)")
    snap = corpus.archive_identity(SNAPSHOT, ["**/*.py"])
    here = corpus.stdlib_identity()
    print(f"snapshot: {snap['files']} files, content sha256 {snap['sha256']}")
    print(f"Python {platform.python_version()}: {here['files']} files, sha256 {here['sha256']}")
    if args.check and (snap["files"], snap["sha256"]) != (here["files"], here["sha256"]):
        sys.exit("check: this interpreter's standard library is not the snapshot's")


if __name__ == "__main__":
    main()
