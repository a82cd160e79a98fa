"""dvc.lock tells the truth: a code change retrains, the stages that import a module rerun
when it changes, a computing package's pin reruns the stages that use it, and
tools/verify_lock.py names a committed hash that the code does not reproduce."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, run

from codexlm import provenance


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def changed_stages(repo: Path) -> set[str]:
    return set(json.loads(run(["dvc", "status", "--json"], repo).stdout))


def states(repo: Path) -> dict[str, dict]:
    root = repo / "models/checkpoints"
    return {p.name: json.loads((p / "state.json").read_text()) for p in root.glob("step-*")}


def declaring(repo: Path, package: str) -> set[str]:
    """The stages whose params include versions.yaml's `package`."""
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    return {
        name
        for name, spec in stages.items()
        for entry in spec.get("params", [])
        if isinstance(entry, dict) and package in entry.get("versions.yaml", [])
    }


@pytest.fixture
def finished(built: Path, tmp_path: Path) -> Path:
    """A copy of the tiny pipeline after a completed run, checkpoints included."""
    repo = tmp_path / "repo"
    shutil.copytree(built, repo, symlinks=True)
    assert changed_stages(repo) == set()
    return repo


@pytest.mark.slow
def test_code_change_retrains_from_step_0(finished: Path) -> None:
    repo = finished
    trained = sha(repo / "models/trained/model.safetensors")
    before = states(repo)
    with (repo / "src/codexlm/loss.py").open("a") as f:  # imported by train only
        f.write("# a comment changes the code's identity, not what it computes\n")
    out = run(["dvc", "repro"], repo)
    log = out.stdout + out.stderr
    assert "Running stage 'train'" in log
    assert "Running stage 'prepare'" not in log and "Running stage 'tokenize'" not in log
    assert "starting from step 0" in log and "resuming" not in log
    for name in before:
        assert f"removed models/checkpoints/{name} (written by other code)" in log
    after = states(repo)
    old_code = {s["identity"]["code"] for s in before.values()}
    assert after and all(s["identity"]["code"] not in old_code for s in after.values())
    # deterministic: the same computation over a comment gives the same weights
    assert sha(repo / "models/trained/model.safetensors") == trained

    # a real change (the schedule's decay) gives other weights
    optim_py = repo / "src/codexlm/optim.py"
    code = optim_py.read_text()
    assert "(lr - min_lr) * (1 - progress)" in code
    optim_py.write_text(code.replace("(lr - min_lr) * (1 - progress)", "(lr - min_lr) * 0.5"))
    log = run(["dvc", "repro", "train"], repo).stdout
    assert "starting from step 0" in log
    assert sha(repo / "models/trained/model.safetensors") != trained


def test_each_change_reruns_the_stages_that_use_it(finished: Path) -> None:
    repo = finished
    model = repo / "src/codexlm/model.py"  # load_trained: evaluate and export load with it
    model.write_text(model.read_text() + "# edited\n")
    assert changed_stages(repo) == {"train", "evaluate", "export", "codeeval"}
    run(["git", "checkout", "--", "src/codexlm/model.py"], repo)
    card = repo / "src/codexlm/export/card.py"  # the export's alone
    card.write_text(card.read_text() + "# edited\n")
    assert changed_stages(repo) == {"export"}
    run(["git", "checkout", "--", "src/codexlm/export/card.py"], repo)
    assert changed_stages(repo) == set()

    # a pin changed in requirements.lock reaches versions.yaml through `make install`
    lock, versions = repo / "requirements.lock", repo / "versions.yaml"
    pinned = lock.read_text()
    for package, stages in [
        ("torch", {"train", "evaluate", "export", "codeeval"}),
        ("pyarrow", declaring(repo, "pyarrow")),  # prepare, tokenize (and what imports them)
        ("ruff", set()),  # a dev tool: nothing to rerun
    ]:
        lock.write_text(re.sub(rf"(?m)^{package}==\S+", f"{package}==9.9.9", pinned))
        provenance.write_versions(lock, versions)
        assert changed_stages(repo) == stages, package
    assert {"prepare", "tokenize"} <= declaring(repo, "pyarrow")
    lock.write_text(pinned)
    provenance.write_versions(lock, versions)
    assert changed_stages(repo) == set()


def test_a_stage_refuses_other_package_versions(finished: Path) -> None:
    versions = finished / "versions.yaml"
    versions.write_text(re.sub(r"(?m)^numpy: .*$", "numpy: 0.0.1", versions.read_text()))
    proc = run([sys.executable, "stages/export_stage.py"], finished, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: versions.yaml: numpy 0.0.1 is declared")


@pytest.mark.slow  # a clone and a from-scratch run
def test_verify_lock_names_what_the_code_does_not_reproduce(finished: Path, tmp_path) -> None:
    """Also the pipeline's determinism, end to end: a clean clone with the same params (no
    outputs, no cache, no run-cache) reproduces every other entry of the lock byte for byte,
    data, tokenizer, trained weights and every file of the export (its card included)."""
    repo = finished
    run(["git", "add", "dvc.lock"], repo)
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    tokens = next(o for o in lock["stages"]["tokenize"]["outs"] if o["path"] == "data/tokens")
    tokens["md5"] = "0" * 32 + ".dir"  # a claim this code never produced
    (repo / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "lock"], repo)
    tool = ROOT / "tools/verify_lock.py"
    cmd = [sys.executable, str(tool), "--repo", str(repo), "--update"]
    proc = run(cmd, tmp_path, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    differs = [line for line in proc.stdout.splitlines() if "differs:" in line]
    # everything else, rerun from scratch in a clean clone, matched the committed lock
    assert len(differs) == 1 and "tokenize: out data/tokens: committed '000" in differs[0]
    # --update took the clean run's lock and outputs: the claim is true again
    assert "0" * 32 not in (repo / "dvc.lock").read_text()
    assert changed_stages(repo) == set()
