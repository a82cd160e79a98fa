"""Sources -> documents: read, clean, scrub secrets, dedup and split (the prepare stage).

Documents stream from the source through the cleaning workers to a temporary parquet file,
so memory does not grow with the texts: what is kept per document is its 32-byte content
digest (exact dedup), the digest of its whitespace-collapsed content and a 128-value MinHash
signature of its character 5-grams (512 bytes). Documents whose collapsed contents are equal,
or whose estimated Jaccard similarity reaches `near_dup_threshold`, form a near-duplicate
group (connected components), and a whole group goes to the train split. Held-out splits
measure text unlike anything trained on; a family of near-copies, hashed into a held-out split
as a whole, would dominate it (the standard library's 48 charmap codec tables alone were 63%
of the test bytes) and hand `xz -9`, which compresses a split as one stream, the copies that
the model's context windows cannot see. A document in no group is split by the hash of its
own content, as before, so the split does not depend on the order documents are read in.

Stability: adding documents never moves a document between splits unless it joins a
near-duplicate group (and so moves to train). Only then are the texts copied from the
temporary file to the three split files.
"""

from __future__ import annotations

import contextlib
import fnmatch
import itertools
import json
import os
import platform
import stat
import sysconfig
import tarfile
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from datasketch import MinHash, MinHashLSH
from tqdm import tqdm

from codexlm import datakind
from codexlm.atomic import write_json, write_text
from codexlm.codeeval.decontam import N as NGRAM
from codexlm.codeeval.decontam import contaminated
from codexlm.errors import MachineFault, UserError
from codexlm.hashing import contents_sha256, text_sha256
from codexlm.params import TABLE_EXTS, is_archive
from codexlm.records import COLUMNS as RECORD_COLUMNS
from codexlm.records import cell as record_cell
from codexlm.records import check_columns, contents, dumps, example_of, loads, scrubbed
from codexlm.scrub import scrub

SPLITS = ("train", "val", "test")
# The built-in default corpus: CPython 3.11.7's standard-library .py sources (tests excluded),
# a fixed archive in the repository, so that the default data is the same bytes on every
# machine and interpreter (corpus/README.md: why a snapshot, and how it was made).
SNAPSHOT = "corpus/cpython-3.11.7-lib.tar.xz"
SCHEMA = pa.schema([("name", pa.string()), ("text", pa.string())])
# Standard-library folders that hold test suites, not library code.
_STDLIB_SKIP = {"test", "tests", "idle_test", "site-packages", "__pycache__"}
# Documents in flight to the cleaning workers at once (Executor.map alone would read the whole
# source before returning the first result).
_WINDOW = 1024
# Near-duplicate detection (see the module docstring and docs/data.md). Character 5-grams
# of the whitespace-collapsed text: measured on the standard library, they put the charmap
# codec tables (Lib/encodings/cp*.py, iso8859_*.py, mac_*.py, which differ only in their
# character tables) at Jaccard 0.7-1.0 with each other, while the closest ordinary modules
# that share boilerplate stay below (ctypes/macholib dylib.py and framework.py 0.62, bz2.py
# and lzma.py 0.58). Longer shingles (9-, 13-grams, words, lines) split the codec tables
# into more, smaller families at the same threshold.
SHINGLE_CHARS = 5
NUM_PERM = 128  # signature size: 128 uint32 values, 512 bytes a document
MINHASH_SEED = 1  # fixed: the same corpus gives the same signatures, groups and splits
# The LSH index favours recall: candidates are checked by their estimated Jaccard anyway, so
# a false positive costs only time, while a missed pair leaves near copies in two splits.
# With weights (0.05, 0.95) datasketch picks 21 bands of 6 rows at 0.7: a pair right at the
# threshold is a candidate with probability 0.93 (0.44 with its default equal weights), one
# at 0.75 with 0.98. It needs two bands at least, which it cannot tune above 0.99.
_LSH_WEIGHTS = (0.05, 0.95)
_LSH_MAX_THRESHOLD = 0.99
# near-duplicate groups named in stats.json (the largest first)
_EXAMPLE_GROUPS = 5


@dataclass(frozen=True)
class Raw:
    """One document as read: its name, its bytes or text, or why it was skipped."""

    name: str
    data: bytes | str | None
    skip: str | None = None
    example: bool = False  # data is an instruction example's canonical JSON (codexlm.records)


@dataclass
class Stats:
    documents: Counter[str] = field(default_factory=Counter)
    bytes: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    secrets: Counter[str] = field(default_factory=Counter)
    near_duplicates: dict[str, object] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {
            "documents": {s: self.documents[s] for s in SPLITS},
            "bytes": {s: self.bytes[s] for s in SPLITS},
            "dropped": dict(sorted(self.dropped.items())),
            "secrets": dict(sorted(self.secrets.items())),
            "near_duplicates": self.near_duplicates,
        }


# ---------------------------------------------------------------- reading sources


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _stdlib_files() -> Iterator[Path]:
    return _walk(stdlib_root(), ["**/*.py"], _STDLIB_SKIP)


def stdlib_identity() -> dict[str, object]:
    """What `data.source: stdlib` reads on this interpreter: its version, and the number and
    sha256 of the standard-library files (names and contents) that it reads."""
    root = stdlib_root()
    files = ((p.relative_to(root).as_posix(), p.read_bytes()) for p in _stdlib_files())
    n, digest = contents_sha256(files)
    return {"python": platform.python_version(), "files": n, "sha256": digest}


def archive_identity(path: Path, include: list[str]) -> dict[str, object]:
    """What an archive source holds for prepare: its name, and the number and content digest
    of the files that `include` selects (for the snapshot: the standard library's digest)."""
    files = ((m.name, data) for m, data in archive_files(path, include))
    n, digest = contents_sha256(files)
    return {"archive": path.name, "files": n, "sha256": digest}


def check_stdlib_marker(marker: Path) -> dict[str, object]:
    """This interpreter's default corpus, refused unless it is the one `marker` records.

    DVC sees the default corpus only through the marker file, so another interpreter's
    standard library must not silently become data/prepared under the same dvc.lock.
    """
    try:
        recorded = yaml.safe_load(marker.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise UserError(f"{marker}: unreadable ({type(e).__name__}); run `make stdlib`") from None
    current = stdlib_identity()
    if not isinstance(recorded, dict) or {k: recorded.get(k) for k in current} != current:
        have = recorded if isinstance(recorded, dict) else {}
        raise UserError(
            f"data.source: stdlib: this interpreter's standard library (Python "
            f"{current['python']}, {current['files']} files, sha256 {current['sha256'][:12]}) "
            f"is not the one {marker} records (Python {have.get('python')}, {have.get('files')} "
            f"files, sha256 {str(have.get('sha256'))[:12]}); run `make stdlib` to record this "
            "one (prepare then reruns)"
        )
    return current


def write_stdlib_marker(marker: Path) -> dict[str, object]:
    """Record this interpreter's default corpus in `marker` (what `make stdlib` runs)."""
    identity = stdlib_identity()
    lines = [
        "# data.source: stdlib reads the running interpreter's standard-library .py sources",
        "# (tests excluded). dvc.yaml depends on ${data.source}, which is this file for the",
        "# default corpus: it records which standard library that is, and prepare refuses",
        "# another one. `make stdlib` rewrites it for the interpreter in use.",
        # JSON-quoted: YAML would read a digest such as 1e5... as a number
        *(f"{k}: {json.dumps(v)}" for k, v in identity.items()),
    ]
    lines[-1] += "  # pragma: allowlist secret (a digest, for detect-secrets)"
    write_text(marker, "\n".join(lines) + "\n")
    return identity


def _walk(root: Path, include: list[str], skip_dirs: set[str] = frozenset()) -> Iterator[Path]:
    """Files under root matching any include glob, in a stable order; links to folders are not
    followed (a symlink loop cannot hang the walk)."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if d not in skip_dirs)
        for name in sorted(filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if any(_glob_match(rel, pat) for pat in include):
                yield path


def _glob_match(rel: str, pattern: str) -> bool:
    # fnmatch's * crosses "/", so each "**/" already matches one or more folders; it must also
    # match none: "**/*.py" a file at the top level, "src/**/*.py" a file directly in src/
    pieces = pattern.split("**/")
    for kept in itertools.product(("**/", ""), repeat=len(pieces) - 1):
        candidate = pieces[0] + "".join(k + p for k, p in zip(kept, pieces[1:], strict=True))
        if fnmatch.fnmatchcase(rel, candidate):
            return True
    return False


def _read_files(root: Path, paths: Iterator[Path], max_bytes: int) -> Iterator[Raw]:
    for path in paths:
        name = path.relative_to(root).as_posix()
        if not _is_utf8(name):
            # bytes that are not UTF-8 (os.walk gives them as surrogates) cannot be stored
            yield Raw(
                name.encode("utf-8", "surrogateescape").decode("utf-8", "replace"),
                None,
                "invalid_file_name",
            )
            continue
        try:
            st = path.stat()
            if not stat.S_ISREG(st.st_mode):
                # a FIFO or a link to a device would block or never end on read
                yield Raw(name, None, "unreadable:not_a_regular_file")
                continue
            if st.st_size > max_bytes:
                # decided from the size, so a huge file is never read into memory
                yield Raw(name, None, "too_long")
                continue
            yield Raw(name, path.read_bytes())
        except FileNotFoundError as e:
            if path.is_symlink():  # a dangling link is part of the corpus: counted, skipped
                yield Raw(name, None, f"unreadable:{type(e).__name__}")
                continue
            # listed, then gone: the corpus changed under prepare, and dvc.lock would record
            # a hash of data/prepared's sources that no longer holds
            raise MachineFault(
                f"{path}: vanished between listing and reading; the corpus in {root} changed "
                "while prepare ran: rerun prepare once nothing writes to it"
            ) from None
        except OSError as e:
            yield Raw(name, None, f"unreadable:{type(e).__name__}")


def archive_files(path: Path, include: list[str]) -> Iterator[tuple[tarfile.TarInfo, bytes]]:
    """The regular files of a tar archive that match `include`, in archive order, read
    without extracting anything (a member's name never becomes a path on disk)."""
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                if member.isfile() and any(_glob_match(member.name, p) for p in include):
                    f = tar.extractfile(member)
                    yield member, f.read() if f is not None else b""
    except (tarfile.TarError, EOFError, OSError) as e:  # EOFError: a truncated xz/gz stream
        raise UserError(f"data.source: {path}: not a readable tar archive ({e})") from None


def _read_archive(path: Path, include: list[str], max_bytes: int) -> Iterator[Raw]:
    for member, data in archive_files(path, include):
        # the archive is read whole anyway (a compressed stream); the size rule is the files'
        yield (
            Raw(member.name, None, "too_long")
            if member.size > max_bytes
            else Raw(member.name, data)
        )


def _read_jsonl(path: Path, column: str) -> Iterator[Raw]:
    seen_column = False
    with path.open("rb") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except UnicodeDecodeError:
                yield Raw(f"{path.name}:{i}", None, "not_utf8")
                continue
            except (ValueError, RecursionError):
                yield Raw(f"{path.name}:{i}", None, "malformed_line")
                continue
            if isinstance(row, dict) and column not in row and not seen_column:
                # the first record already lacks it: the column is misnamed, not missing
                raise UserError(
                    f"{path}:{i}: no key {column!r} (keys: {', '.join(map(str, row)) or 'none'}); "
                    "set data.text_column"
                )
            if not isinstance(row, dict) or column not in row:
                yield Raw(f"{path.name}:{i}", None, "missing_text")
            else:
                seen_column = True
                yield _cell(f"{path.name}:{i}", row[column])


def _read_table(path: Path, column: str) -> Iterator[Raw]:
    """Rows of a .csv or .parquet file, streamed in record batches."""
    try:
        if path.suffix == ".parquet":
            pf = pq.ParquetFile(path, pre_buffer=False)  # pre-buffering keeps every row group alive
            if column not in pf.schema_arrow.names:
                raise UserError(
                    f"{path}: no column {column!r} (columns: {', '.join(pf.schema_arrow.names)}); "
                    "set data.text_column"
                )
            batches = pf.iter_batches(columns=[column], batch_size=1024)
        else:
            import pyarrow.csv as pacsv

            reader = pacsv.open_csv(
                path,
                read_options=pacsv.ReadOptions(block_size=1 << 22),
                # code has newlines inside quoted cells; without this, reading fails at the
                # first block boundary that falls inside one
                parse_options=pacsv.ParseOptions(newlines_in_values=True),
                # read as bytes and decode per row: a few rows in another encoding are dropped
                # as not_utf8, rather than failing the file or turning every row to bytes
                convert_options=pacsv.ConvertOptions(column_types={column: pa.binary()}),
            )
            if column not in reader.schema.names:
                raise UserError(
                    f"{path}: no column {column!r} (columns: {', '.join(reader.schema.names)}); "
                    "set data.text_column"
                )
            batches = reader
        row = 0
        for batch in batches:
            for value in batch.column(column).to_pylist():
                row += 1
                yield _cell(f"{path.name}:{row}", value)
    except (pa.ArrowInvalid, OSError) as e:
        raise UserError(f"{path}: cannot read: {str(e).splitlines()[0]}") from None


def _cell(name: str, value: object) -> Raw:
    """A table cell as a document: its text, or why not."""
    if isinstance(value, bytes):  # csv cells are read as bytes: decoded here, row by row
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            return Raw(name, None, "not_utf8")
    if isinstance(value, str):
        return Raw(name, value)
    return Raw(name, None, "null_text")


def _read_records(path: Path, data_format: str) -> Iterator[Raw]:
    """The instruction examples of a .jsonl/.csv/.parquet file, checked record by record: the
    first malformed one stops prepare with its file, record number and problem."""
    if path.suffix == ".jsonl":
        with path.open("rb") as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path}: record {i}"
                try:
                    record = json.loads(line)
                except UnicodeDecodeError:
                    raise UserError(f"{where}: not UTF-8") from None
                except (ValueError, RecursionError):
                    raise UserError(f"{where}: not a JSON object on one line") from None
                yield Raw(
                    f"{path.name}:{i}", dumps(example_of(record, data_format, where)), example=True
                )
        return
    columns = list(RECORD_COLUMNS[data_format])
    try:
        if path.suffix == ".parquet":
            pf = pq.ParquetFile(path, pre_buffer=False)
            check_columns(path, pf.schema_arrow.names, data_format)
            batches = pf.iter_batches(columns=columns, batch_size=1024)
        else:
            import pyarrow.csv as pacsv

            reader = pacsv.open_csv(
                path,
                read_options=pacsv.ReadOptions(block_size=1 << 22),
                parse_options=pacsv.ParseOptions(newlines_in_values=True),
                convert_options=pacsv.ConvertOptions(
                    column_types=dict.fromkeys(columns, pa.binary())
                ),
            )
            check_columns(path, reader.schema.names, data_format)
            batches = reader
        row = 0
        for batch in batches:
            for values in zip(*(batch.column(c).to_pylist() for c in columns), strict=True):
                row += 1
                where = f"{path}: record {row}"
                try:
                    record = {c: record_cell(v) for c, v in zip(columns, values, strict=True)}
                except UnicodeDecodeError:
                    raise UserError(f"{where}: not UTF-8") from None
                yield Raw(
                    f"{path.name}:{row}",
                    dumps(example_of(record, data_format, where)),
                    example=True,
                )
    except (pa.ArrowInvalid, OSError) as e:
        raise UserError(f"{path}: cannot read: {str(e).splitlines()[0]}") from None


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: from undecodable file names, or JSON escapes
        return False
    return True


def iter_source(
    source: str, include: list[str], text_column: str, max_chars: int, data_format: str = "text"
) -> Iterator[Raw]:
    """Every document of `data.source`: "stdlib", a folder, a tar archive (files matching
    `include`, in archive order), or a .jsonl/.csv/.parquet file; with `data_format` other than
    text, the instruction examples of a table file (codexlm.records)."""
    max_bytes = 4 * max_chars  # a UTF-8 character is at most 4 bytes
    if datakind.of_format(data_format) == datakind.EXAMPLES:
        if Path(source).suffix not in TABLE_EXTS:
            raise UserError(
                f"data.format: {data_format} needs a {'/'.join(TABLE_EXTS)} data.source"
            )
        yield from _read_records(Path(source), data_format)
        return
    if source == "stdlib":
        yield from _read_files(stdlib_root(), _stdlib_files(), max_bytes)
        return
    path = Path(source)
    if not path.exists():
        raise UserError(
            f"data.source: {source!r} does not exist (use 'stdlib', a folder or a file)"
        )
    if path.is_dir():
        yield from _read_files(path, _walk(path, include), max_bytes)
    elif is_archive(path):
        yield from _read_archive(path, include, max_bytes)
    elif path.suffix == ".jsonl":
        yield from _read_jsonl(path, text_column)
    elif path.suffix in (".csv", ".parquet"):
        yield from _read_table(path, text_column)
    else:
        raise UserError(
            f"data.source: {source!r} is not a folder, a tar archive or a "
            f"{'/'.join(TABLE_EXTS)} file"
        )


# ---------------------------------------------------------------- cleaning


def clean(
    raw: Raw, min_chars: int, max_chars: int, scrub_secrets: bool, decontaminate: str = "none"
) -> tuple[str | None, str | None, Counter[str]]:
    """Decode and filter one document: (text, None, secrets) or (None, reason, {}).
    `decontaminate` names a problem set (`humaneval`) whose 13-grams drop a document."""
    found: Counter[str] = Counter()
    if raw.skip:
        return None, raw.skip, found
    if raw.example:
        return _clean_example(raw, min_chars, max_chars, scrub_secrets, decontaminate)
    data = raw.data
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            # binary data is rarely valid UTF-8: most of it is caught here
            return None, "binary" if b"\0" in data else "not_utf8", found
    if "\0" in data:  # anywhere, not only in a prefix: NUL is never in source text
        return None, "binary", found
    if not _is_utf8(data):
        return None, "invalid_unicode", found
    text = data.replace("\r\n", "\n").replace("\r", "\n")
    if len(text) < min_chars:
        return None, "too_short", found
    if len(text) > max_chars:
        return None, "too_long", found
    if scrub_secrets:
        text = scrub(text, found, filename=raw.name)
    if decontaminate != "none" and contaminated(text, decontaminate):
        return None, "contaminated", Counter()
    return text, None, found


def _clean_example(
    raw: Raw, min_chars: int, max_chars: int, scrub_secrets: bool, decontaminate: str
) -> tuple[str | None, str | None, Counter[str]]:
    """clean() for an instruction example: the length rules count its contents' characters;
    every content is scrubbed; NUL or lone surrogates anywhere drop it."""
    found: Counter[str] = Counter()
    assert isinstance(raw.data, str)
    example = loads(raw.data)
    text = contents(example)
    if "\0" in text:
        return None, "binary", found
    if not _is_utf8(raw.data):
        return None, "invalid_unicode", found
    if len(text) < min_chars:
        return None, "too_short", found
    if len(text) > max_chars:
        return None, "too_long", found
    if scrub_secrets:
        example = scrubbed(example, scrub, found, raw.name)
    if decontaminate != "none" and contaminated(contents(example), decontaminate):
        return None, "contaminated", Counter()
    return dumps(example), None, found


def split_of_digest(key: bytes, val_fraction: float, test_fraction: float) -> str:
    """Stable split from a content digest: the same digest always lands in the same split."""
    h = int.from_bytes(key[:8], "big") / 2**64
    if h < test_fraction:
        return "test"
    if h < test_fraction + val_fraction:
        return "val"
    return "train"


def split_of(text: str, val_fraction: float, test_fraction: float) -> str:
    """Stable split from the content hash: a document in no near-duplicate group lands here."""
    return split_of_digest(text_sha256(text), val_fraction, test_fraction)


# ---------------------------------------------------------------- near duplicates


def normalised(text: str) -> str:
    """The content near-duplicate detection compares: whitespace runs collapsed to one space."""
    return " ".join(text.split())


def _identity(h: np.uint32) -> np.uint32:
    return h


def shingle_hashes(norm: str) -> np.ndarray:
    """Distinct 32-bit hashes of the text's character 5-grams (the whole text if shorter).

    A polynomial hash of the code points, computed for all windows at once with numpy (a
    Python-level hash per shingle costs seconds on the standard library)."""
    cps = np.frombuffer(norm.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    k = min(SHINGLE_CHARS, len(cps))
    n = len(cps) - k + 1
    h = np.zeros(n, dtype=np.uint64)
    for i in range(k):  # uint64 arithmetic wraps: a hash modulo 2**64
        h = h * np.uint64(0x100000001B3) + cps[i : i + n] + np.uint64(1)
    return np.unique(((h >> np.uint64(32)) ^ h).astype(np.uint32))


def signature(text: str) -> np.ndarray:
    """The document's MinHash signature (NUM_PERM uint32 values, fixed seed)."""
    m = MinHash(num_perm=NUM_PERM, seed=MINHASH_SEED, hashfunc=_identity, scheme="affine32")
    hashes = shingle_hashes(normalised(text))
    for i in range(0, len(hashes), 8192):  # bounds the (shingles x NUM_PERM) work array
        m.update_batch(hashes[i : i + 8192])
    return m.hashvalues.copy()


def _minhash(sig: np.ndarray) -> MinHash:
    return MinHash(seed=MINHASH_SEED, hashvalues=sig, scheme="affine32")


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)


@dataclass
class _Kept:
    """What prepare keeps per document until the groups are known: no texts."""

    names: list[str] = field(default_factory=list)
    digests: list[bytes] = field(default_factory=list)
    norm_first: dict[bytes, int] = field(default_factory=dict)  # collapsed digest -> first doc
    same_norm: list[tuple[int, int]] = field(default_factory=list)
    signatures: list[np.ndarray] = field(default_factory=list)


def near_duplicate_groups(kept: _Kept, threshold: float) -> list[int]:
    """Each document's group (the smallest index in it): documents are linked when their
    collapsed contents are equal or their signatures' estimated Jaccard is >= threshold.

    MinHashLSH finds the candidate pairs (a pair is a candidate when it shares a band of
    the signature, the same whichever is inserted first), and each candidate is kept only if
    the estimated Jaccard reaches the threshold: the links, and so the groups, do not depend on
    the order of the documents."""
    uf = _UnionFind(len(kept.digests))
    for i, j in kept.same_norm:
        uf.union(i, j)
    lsh = MinHashLSH(
        threshold=min(threshold, _LSH_MAX_THRESHOLD), num_perm=NUM_PERM, weights=_LSH_WEIGHTS
    )
    for i, sig in enumerate(kept.signatures):
        m = _minhash(sig)
        for j in lsh.query(m):
            if np.count_nonzero(kept.signatures[j] == sig) / NUM_PERM >= threshold:
                uf.union(i, j)
        lsh.insert(i, m, check_duplication=False)
    return [uf.find(i) for i in range(len(kept.digests))]


def assign_splits(
    kept: _Kept, threshold: float, val_fraction: float, test_fraction: float
) -> tuple[list[str], dict[str, object]]:
    """Each document's split (a group of near-duplicates trains; a document in none goes by
    its content hash) and the near_duplicates summary for stats.json."""
    group = near_duplicate_groups(kept, threshold)
    members: dict[int, list[int]] = {}
    for i, g in enumerate(group):
        members.setdefault(g, []).append(i)
    split_of_group = {
        g: "train"
        if len(m) > 1
        else split_of_digest(kept.digests[m[0]], val_fraction, test_fraction)
        for g, m in members.items()
    }
    splits = [split_of_group[g] for g in group]
    multi = [sorted(kept.names[i] for i in m) for m in members.values() if len(m) > 1]
    multi.sort(key=lambda names: (-len(names), names[0]))
    moved = sum(
        s != split_of_digest(d, val_fraction, test_fraction)
        for s, d in zip(splits, kept.digests, strict=True)
    )
    summary = {
        "threshold": threshold,
        "groups": len(multi),
        "documents": sum(map(len, multi)),
        "largest": len(multi[0]) if multi else 0,
        # documents in train that their own content hash would have held out
        "moved": moved,
        "examples": [{"size": len(names), "names": names[:3]} for names in multi[:_EXAMPLE_GROUPS]],
    }
    return splits, summary


# ---------------------------------------------------------------- cleaning in the workers


def _clean_star(
    args: tuple[Raw, int, int, bool, str],
) -> tuple[str, str | None, str | None, Counter[str], bytes | None, np.ndarray | None]:
    """clean() in a worker, plus what near-duplicate detection needs of a kept document."""
    raw = args[0]
    text, reason, found = clean(*args)
    if text is None:
        return raw.name, None, reason, found, None, None
    return raw.name, text, None, found, text_sha256(normalised(text)), signature(text)


def _clean_all(pool: ProcessPoolExecutor, jobs: Iterator[tuple[Raw, int, int, bool, str]]):
    """pool.map over jobs, in source order, with at most _WINDOW documents read ahead."""
    while window := list(itertools.islice(jobs, _WINDOW)):
        yield from pool.map(_clean_star, window, chunksize=16)


# ---------------------------------------------------------------- the stage


class _SplitFiles:
    """One parquet file per name (the splits, or the staging file), written under temporary
    names in batches of 512 rows and renamed into place only by `commit`, so a failed
    prepare leaves nothing behind."""

    def __init__(self, out_dir: Path, names: tuple[str, ...] = SPLITS) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.out_dir, self.names = out_dir, names
        self.tmp = {s: out_dir / f".{s}.parquet.tmp" for s in names}
        self.writers = {s: pq.ParquetWriter(self.tmp[s], SCHEMA, compression="zstd") for s in names}
        self.buffers: dict[str, list[tuple[str, str]]] = {s: [] for s in names}

    def add(self, split: str, name: str, text: str) -> None:
        self.buffers[split].append((name, text))
        if len(self.buffers[split]) >= 512:
            self._flush(split)

    def _flush(self, split: str) -> None:
        if self.buffers[split]:
            names, texts = zip(*self.buffers[split], strict=True)
            table = pa.table({"name": names, "text": texts}, schema=SCHEMA)
            self.writers[split].write_table(table)
            self.buffers[split].clear()

    def close(self) -> None:
        for s in self.names:
            self._flush(s)
            self.writers[s].close()

    def discard(self) -> None:
        for w in self.writers.values():
            w.close()
        for t in self.tmp.values():
            t.unlink(missing_ok=True)

    def commit(self) -> None:
        for s in self.names:
            os.replace(self.tmp[s], self.out_dir / f"{s}.parquet")


def _keep(results: Iterator, stats: Stats, staging: _SplitFiles) -> _Kept:
    """Count the drops, skip exact duplicates, and stage each kept document (its text to the
    staging file, its digests and signature in memory)."""
    kept, seen = _Kept(), set()
    for name, text, reason, found, norm, sig in tqdm(results, desc="prepare", unit="doc"):
        if reason:
            stats.dropped[reason.split(":")[0]] += 1
            continue
        key = text_sha256(text)
        if key in seen:
            stats.dropped["duplicate"] += 1
            continue
        seen.add(key)
        stats.secrets.update(found)
        i = len(kept.digests)
        kept.names.append(name)
        kept.digests.append(key)
        kept.signatures.append(sig)
        first = kept.norm_first.setdefault(norm, i)
        if first != i:
            kept.same_norm.append((first, i))
        staging.add("all", name, text)
    return kept


def _route(staged: Path, splits: list[str], stats: Stats, files: _SplitFiles) -> None:
    """Copy the staged documents, in source order, to the split files."""
    i = 0
    pf = pq.ParquetFile(staged, pre_buffer=False)
    for batch in pf.iter_batches(columns=["name", "text"], batch_size=512):
        for name, text in zip(
            batch.column("name").to_pylist(), batch.column("text").to_pylist(), strict=True
        ):
            split = splits[i]
            stats.documents[split] += 1
            stats.bytes[split] += len(text.encode("utf-8"))
            files.add(split, name, text)
            i += 1


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not empty: a file someone else put there stays
        folder.rmdir()


def prepare(
    source: str,
    include: list[str],
    text_column: str,
    min_chars: int,
    max_chars: int,
    val_fraction: float,
    test_fraction: float,
    scrub_secrets: bool,
    out_dir: Path,
    near_dup_threshold: float = 0.7,
    workers: int | None = None,
    source_identity: dict[str, object] | None = None,
    decontaminate: str = "none",
    data_format: str = "text",
) -> dict[str, object]:
    """Write out_dir/{train,val,test}.parquet and stats.json; return the stats.

    `source_identity` (what the source is, e.g. `stdlib_identity()`) is recorded in stats.json.
    With `data_format` prompt_completion or messages, each row's text is an instruction example's
    canonical JSON (codexlm.records), and stats.json says so (`format`) for tokenize.
    """
    docs = iter_source(source, include, text_column, max_chars, data_format)
    # the source's own checks (it exists, its text column does) fail on the first document:
    # read it before anything is written or shown
    docs = itertools.chain(list(itertools.islice(docs, 1)), docs)
    created = not out_dir.exists()  # removed again if the stage fails: no empty output
    staging, stats = _SplitFiles(out_dir, ("all",)), Stats()
    files: _SplitFiles | None = None
    jobs = ((raw, min_chars, max_chars, scrub_secrets, decontaminate) for raw in docs)
    try:
        with ProcessPoolExecutor(workers or min(os.cpu_count() or 1, 8)) as pool:
            # map() keeps the source order, so the output does not depend on scheduling
            kept = _keep(_clean_all(pool, jobs), stats, staging)
        staging.close()
        splits, stats.near_duplicates = assign_splits(
            kept, near_dup_threshold, val_fraction, test_fraction
        )
        del kept
        files = _SplitFiles(out_dir)
        _route(staging.tmp["all"], splits, stats, files)
        files.close()
    except BaseException:
        # a source that fails part way (unreadable table, missing column, malformed record)
        # leaves nothing behind
        if files is not None:
            files.discard()
        staging.discard()
        if created:
            _remove_if_empty(out_dir)
        raise
    staging.discard()
    empty = [s for s in SPLITS if stats.documents[s] == 0]
    if empty:
        files.discard()
        if created:
            _remove_if_empty(out_dir)
        kept_docs = sum(stats.documents.values())
        raise UserError(
            f"data.source: {source!r} gave {kept_docs} usable documents (dropped: "
            f"{dict(stats.dropped) or 'none'}), leaving the {'/'.join(empty)} split empty; "
            f"add documents or adjust {_knobs(stats.dropped)}"
        )
    files.commit()
    # examples: their data.format first; text: nothing (datakind.stats_entry)
    result = {**datakind.stats_entry(data_format), **stats.as_dict()}
    if source_identity is not None:
        result["source"] = source_identity
    result["decontamination"] = {
        "problems": decontaminate,
        "ngram_words": NGRAM,
        "dropped": stats.dropped["contaminated"],
    }
    write_json(out_dir / "stats.json", result)
    return result


def _knobs(dropped: Counter[str]) -> str:
    """The params that decide the drops seen, for the message when nothing is left."""
    knobs = ["data.min_chars/max_chars/include"]
    if dropped["missing_text"] or dropped["null_text"]:
        knobs.insert(0, "data.text_column")
    return " or ".join(knobs)
