"""The built-in default corpus is a fixed archive in the repository: the same content on every
machine and interpreter, read as an archive source, and a DVC dependency of prepare."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, copy_repo, default_params, run, tiny_params

from codexlm import corpus
from codexlm.corpus import iter_source
from codexlm.errors import UserError

# What `data.source: stdlib` read on CPython 3.11.7, the interpreter that wrote the records
# before the snapshot (its ./stdlib marker): the snapshot is that content, file for file.
STDLIB_3_11_7 = (
    734,
    "0a00970da829c5a1971e40879dbc4b56c42c3df86e18fab7fa01fd1f90531885",  # pragma: allowlist secret
)


def test_the_default_corpus_is_the_snapshot_of_cpython_3_11_7() -> None:
    source = default_params()["data"]["source"]
    assert source == corpus.SNAPSHOT and (ROOT / source).is_file()
    identity = corpus.archive_identity(ROOT / source, ["**/*.py"])
    assert (identity["files"], identity["sha256"]) == STDLIB_3_11_7
    assert (ROOT / "corpus/LICENSE-PSF.txt").read_text().startswith("A. HISTORY OF THE SOFTWARE")


def tar_of(files: dict[str, bytes], path: Path, mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("pkg/link.py")  # not a regular file: never a document
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    return path


def test_an_archive_source_yields_its_matching_files_in_archive_order(tmp_path: Path) -> None:
    files = {"pkg/b.py": b"print('b')\n", "pkg/a.py": b"x = 1\n", "README.md": b"# no\n"}
    files["pkg/big.py"] = b"#" * 1000
    archive = tar_of(files, tmp_path / "src.tar.gz")
    raws = list(iter_source(str(archive), ["**/*.py"], "text", max_chars=200))
    assert [(r.name, r.data, r.skip) for r in raws] == [
        ("pkg/b.py", b"print('b')\n", None),
        ("pkg/a.py", b"x = 1\n", None),
        ("pkg/big.py", None, "too_long"),
    ]


def test_an_unreadable_archive_is_one_line(tmp_path: Path) -> None:
    files = {f"{i}.py": bytes(range(256)) * 40 for i in range(4)}  # incompressible enough
    archive = tar_of(files, tmp_path / "src.tar.xz", "w:xz")
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])  # truncated: the xz stream ends mid-member
    with pytest.raises(UserError, match=r"src.tar.xz: not a readable tar archive"):
        list(iter_source(str(archive), ["**/*.py"], "text", max_chars=10_000))


def test_one_byte_of_the_archive_reruns_prepare_and_what_follows(tmp_path: Path) -> None:
    """The archive's hash is prepare's dependency: one byte changed inside it reruns prepare
    and, its output changed, tokenize; the same content packed again reruns prepare only."""
    src = {
        p.relative_to(ROOT / "src").as_posix(): p.read_bytes()
        for p in sorted((ROOT / "src/codexlm").glob("*.py"))
    }
    repo = copy_repo(tmp_path / "repo", tiny_params("corpus/mine.tar.gz"))
    archive = tar_of(src, repo / "corpus/mine.tar.gz")  # untracked by git, a dep of DVC
    run(["dvc", "repro", "tokenize"], repo)
    stats = json.loads((repo / "data/prepared/stats.json").read_text())
    assert stats["source"]["files"] == len(src)
    assert json.loads(run(["dvc", "status", "--json"], repo).stdout).keys() == {
        "train",
        "evaluate",
        "export",
        "codeeval",
    }

    first = next(iter(src))
    tar_of({**src, first: src[first].replace(b"\n", b"\n#", 1)}, archive)
    status = json.loads(run(["dvc", "status", "--json", "prepare"], repo).stdout)
    assert status == {"prepare": [{"changed deps": {"corpus/mine.tar.gz": "modified"}}]}
    out = run(["dvc", "repro", "tokenize"], repo).stdout
    assert "Running stage 'prepare'" in out and "Running stage 'tokenize'" in out

    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    tar_of({**src, first: src[first].replace(b"\n", b"\n#", 1)}, archive, "w:xz")  # other bytes
    out = run(["dvc", "repro", "tokenize"], repo).stdout
    assert "Running stage 'prepare'" in out and "Running stage 'tokenize'" not in out
    after = yaml.safe_load((repo / "dvc.lock").read_text())
    assert after["stages"]["tokenize"] == lock["stages"]["tokenize"]
