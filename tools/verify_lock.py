"""Check that the committed dvc.lock is what this code computes: run the pipeline from scratch
in a clean clone and compare every hash it records.

    python tools/verify_lock.py                 # HEAD of this repository (make verify-lock)
    python tools/verify_lock.py --update        # ... then take the clone's dvc.lock, reports/
                                                #     and outputs into this workspace

The clone has no outputs, no checkpoints and no cache, and `dvc repro --no-run-cache` runs
every stage, so nothing is restored or resumed. Compared: each stage's command, deps and
params, and the outputs that are deterministic. `reports/` carry wall-clock throughput and are
not compared. Exit status 1 names every entry that differs. Only committed files are used:
uncommitted changes are not part of what is verified.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

WALL_CLOCK = "reports/"  # logs and metrics that carry throughput: neither outs nor deps compared
DETERMINISTIC = (
    "data/prepared",
    "data/tokens",
    "models/tokenizer",
    "models/trained",
    "models/export",
)


def entries(lock: dict[str, Any]) -> dict[str, Any]:
    """A flat {stage: what, ...} view of a dvc.lock: command, deps, params, compared outs."""
    flat: dict[str, Any] = {}
    for stage, spec in lock.get("stages", {}).items():
        flat[f"{stage}: cmd"] = spec.get("cmd")
        for dep in spec.get("deps", []):
            if not dep["path"].startswith(WALL_CLOCK):
                flat[f"{stage}: dep {dep['path']}"] = dep.get("md5")
        for file, values in (spec.get("params") or {}).items():
            for key, value in values.items():
                flat[f"{stage}: param {file}:{key}"] = value
        for out in spec.get("outs", []):
            if out["path"] in DETERMINISTIC:
                flat[f"{stage}: out {out['path']}"] = out.get("md5")
    return flat


def differences(committed: dict[str, Any], produced: dict[str, Any]) -> list[str]:
    a, b = entries(committed), entries(produced)
    return [
        f"{key}: committed {a.get(key)!r}, produced {b.get(key)!r}"
        for key in sorted(a.keys() | b.keys())
        if a.get(key) != b.get(key)
    ]


# dvc, and the `python` its stages run, from this environment
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def run_clean(repo: Path, rev: str, work: Path) -> Path:
    clone = work / "clone"
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(repo), str(clone)], check=True)
    subprocess.run(["git", "-C", str(clone), "checkout", "-q", rev], check=True)
    subprocess.run(["dvc", "repro", "--no-run-cache"], cwd=clone, env=ENV, check=True)
    return clone


def update(repo: Path, clone: Path) -> None:
    """Take the clone's results as this workspace's: cache objects, dvc.lock, reports/."""
    shutil.copytree(clone / ".dvc/cache", repo / ".dvc/cache", dirs_exist_ok=True)
    shutil.copy2(clone / "dvc.lock", repo / "dvc.lock")
    shutil.rmtree(repo / "reports", ignore_errors=True)
    shutil.copytree(clone / "reports", repo / "reports")
    subprocess.run(["dvc", "checkout", "--force"], cwd=repo, env=ENV, check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", type=Path, default=Path.cwd())
    ap.add_argument("--rev", default="HEAD")
    ap.add_argument("--update", action="store_true", help="take the clone's results here")
    args = ap.parse_args()
    repo = args.repo.resolve()
    started = time.monotonic()
    shown = subprocess.run(
        ["git", "-C", str(repo), "show", f"{args.rev}:dvc.lock"], capture_output=True, text=True
    )
    if shown.returncode != 0:
        print(f"verify-lock: {args.rev} has no committed dvc.lock", file=sys.stderr)
        return 2
    committed = yaml.safe_load(shown.stdout)
    with tempfile.TemporaryDirectory(prefix="verify-lock-") as tmp:
        clone = run_clean(repo, args.rev, Path(tmp))
        produced = yaml.safe_load((clone / "dvc.lock").read_text())
        diff = differences(committed, produced)
        if args.update:
            update(repo, clone)
    minutes = (time.monotonic() - started) / 60
    for line in diff:
        print(f"verify-lock: differs: {line}")
    if diff:
        print(f"verify-lock: FAILED, {len(diff)} entries differ ({minutes:.1f} min)")
        return 1
    checked = ", ".join(DETERMINISTIC)
    print(f"verify-lock: ok, dvc.lock is what this code computes ({checked}; {minutes:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
