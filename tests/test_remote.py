"""Sharing results through a git remote and a DVC remote, for real and offline: a bare git
repository and a local folder as DVC remote in a temporary folder. Clone A runs the tiny
pipeline with `make repro` and pushes (git, DVC, run-cache, an experiment, GTO tags); clone B
pulls instead of recomputing; `dvc artifacts get` fetches the model by name and version.

One module fixture runs the whole exchange once (one pipeline run, one experiment) and keeps
what each command printed; the tests only read it, so their order does not matter."""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
import string
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import ROOT, VENV_BIN, copy_repo, run, tiny_params

pytestmark = pytest.mark.slow

STAGES = ("prepare", "tokenize", "train", "evaluate", "export")
OUTPUTS = (
    "data/prepared",
    "data/tokens",
    "models/tokenizer",
    "models/trained",
    "models/export",
    "reports/train",
    "reports/evaluate",
)
EXP = "lr-low"
EXP_PARAMS = ["-S", "train.lr=0.001"]


def digests(folder: Path) -> dict[str, str]:
    return {
        f.relative_to(folder).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(folder.rglob("*"))
        if f.is_file()
    }


def make_repro(repo: Path) -> str:
    """`make repro` with this interpreter's venv (`-o`: never reinstall it from the clone's
    lock file, which is newer than the venv's stamp)."""
    venv = VENV_BIN.parent
    proc = run(["make", "-o", str(venv / ".installed-stamp"), "repro", f"VENV={venv}"], repo)
    return proc.stdout + proc.stderr


def git_identity(repo: Path) -> None:
    run(["git", "config", "user.name", "t"], repo)
    run(["git", "config", "user.email", "t@t"], repo)


def exp_metrics(shown: list[dict], name: str) -> dict:
    for commit in shown:
        for exp in commit.get("experiments") or []:
            if exp.get("name") == name:
                (rev,) = exp["revs"]
                return rev["data"]["metrics"]["reports/evaluate/metrics.json"]["data"]
    raise AssertionError(f"experiment {name} not in dvc exp show: {json.dumps(shown)[:2000]}")


@dataclass
class World:
    remote: Path
    a: Path
    b: Path
    secret: str
    out: dict[str, str] = field(default_factory=dict)  # what each step printed
    a_digests: dict[str, dict[str, str]] = field(default_factory=dict)
    b_digests: dict[str, dict[str, str]] = field(default_factory=dict)
    a_exp_export: dict[str, str] = field(default_factory=dict)
    a_exp_metrics: dict = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    tmp = tmp_path_factory.mktemp("share")
    corpus = tmp / "corpus"
    shutil.copytree(ROOT / "src" / "codexlm", corpus, ignore=shutil.ignore_patterns("__pycache__"))
    # a credential (generated here, never a literal) that prepare must redact before anything
    # is cached or pushed
    key = "AKIA" + "".join(secrets.choice(string.ascii_uppercase + "234567") for _ in range(16))
    (corpus / "settings.py").write_text(
        f'"""Deployment settings."""\n\nAWS_ACCESS_KEY_ID = "{key}"\nREGION = "eu-west-1"\n'
    )
    origin, remote = tmp / "origin.git", tmp / "remote"
    run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], tmp)
    w = World(remote=remote, a=tmp / "A", b=tmp / "B", secret=key)

    # ---- clone A: computes, then pushes
    a = copy_repo(w.a, tiny_params(str(corpus)))
    git_identity(a)
    run(["git", "branch", "-M", "main"], a)
    w.out["a_repro"] = make_repro(a)  # no remote yet: a plain `dvc repro`
    # an absolute path: DVC resolves a relative one against whatever checkout reads the
    # config (`dvc exp push`, `dvc artifacts get` read it from a commit, in a temp clone)
    run(["dvc", "remote", "add", "-d", "store", str(remote)], a)
    run(["git", "add", "-A"], a)
    run(["git", "commit", "-qm", "Results and a default remote"], a)
    run(["git", "remote", "add", "origin", str(origin)], a)
    run(["git", "push", "-q", "-u", "origin", "main"], a)
    w.out["a_push"] = run(["dvc", "push", "--run-cache"], a).stdout
    w.a_digests = {o: digests(a / o) for o in OUTPUTS}
    run(["gto", "register", "codexlm", "--version", "v1.0.0"], a)
    run(["gto", "assign", "codexlm", "--version", "v1.0.0", "--stage", "prod"], a)
    run(["git", "push", "-q", "origin", "--tags"], a)
    w.out["a_exp_run"] = run(["dvc", "exp", "run", "-n", EXP, *EXP_PARAMS], a).stdout
    w.a_exp_export = digests(a / "models/export")
    shown = json.loads(run(["dvc", "exp", "show", "--json"], a).stdout)
    w.a_exp_metrics = exp_metrics(shown, EXP)
    w.out["a_exp_push"] = run(["dvc", "exp", "push", "--run-cache", "origin", EXP], a).stdout

    # ---- clone B: pulls instead of recomputing
    run(["git", "clone", "-q", str(origin), str(w.b)], tmp)
    b = w.b
    git_identity(b)
    t0 = time.monotonic()
    w.out["b_repro"] = make_repro(b)
    w.seconds["b_repro"] = time.monotonic() - t0
    w.out["b_status"] = run(["dvc", "status"], b).stdout
    w.b_digests = {o: digests(b / o) for o in OUTPUTS}
    # A's params again, as a new experiment: the run-cache A pushed restores train
    w.out["b_exp_run"] = run(["dvc", "exp", "run", "--pull", "-n", "again", *EXP_PARAMS], b).stdout
    w.out["b_exp_run_export"] = json.dumps(digests(b / "models/export"))
    run(["git", "checkout", "--", "."], b)
    run(["dvc", "checkout", "-q"], b)
    w.out["b_exp_pull"] = run(["dvc", "exp", "pull", "origin", EXP], b).stdout
    w.out["b_exp_show"] = run(["dvc", "exp", "show", "--json"], b).stdout
    w.out["b_exp_show_table"] = run(
        ["dvc", "exp", "show", "--no-pager", "--md", "--only-changed", "--drop", ".*/.*|Created"],
        b,
    ).stdout
    run(["dvc", "exp", "apply", EXP], b)
    run(["dvc", "pull"], b)
    w.out["b_exp_apply_export"] = json.dumps(digests(b / "models/export"))

    # ---- a downstream project: the model by name, from the git repository and its remote
    for how, flag in (("v1.0.0", "--rev"), ("prod", "--stage")):
        w.out[f"get_{how}"] = run(
            ["dvc", "artifacts", "get", str(origin), "codexlm", flag, how, "-o", str(tmp / how)],
            tmp,
        ).stdout
    print(f"clone B's make repro took {w.seconds['b_repro']:.1f} s")
    print(w.out["b_exp_show_table"])
    return w


def test_a_first_run_without_remote_is_a_plain_repro(world: World) -> None:
    out = world.out["a_repro"]
    assert "/dvc repro" in out and "--pull" not in out  # make echoes the command it runs
    for stage in STAGES:
        assert f"Running stage '{stage}'" in out
    assert "WARNING" not in out and "ERROR" not in out


def test_clone_b_runs_no_stage_and_is_byte_identical(world: World) -> None:
    out = world.out["b_repro"]
    assert "/dvc repro --pull" in out  # the default remote is in the project's config
    assert "Running stage" not in out, out
    assert "WARNING" not in out and "ERROR" not in out
    assert world.out["b_status"].strip() == "Data and pipelines are up to date."
    for o in OUTPUTS:
        assert world.b_digests[o], o
        assert world.b_digests[o] == world.a_digests[o], o


def test_experiment_travels_and_its_params_restore_from_the_run_cache(world: World) -> None:
    assert "Running stage 'train'" in world.out["a_exp_run"]
    # B, with A's params: train and export come from the run-cache A pushed (evaluate has an
    # uncached output, reports/evaluate, so DVC reruns it, byte for byte the same)
    rerun = world.out["b_exp_run"]
    assert "Stage 'train' is cached - skipping run" in rerun
    assert "Running stage 'train'" not in rerun
    assert "Running stage 'prepare'" not in rerun and "Running stage 'tokenize'" not in rerun
    assert json.loads(world.out["b_exp_run_export"]) == world.a_exp_export
    # the experiment A pushed, pulled: same metrics in B's `dvc exp show`, and its model
    shown = json.loads(world.out["b_exp_show"])
    assert exp_metrics(shown, EXP) == world.a_exp_metrics
    assert exp_metrics(shown, "again") == world.a_exp_metrics
    assert json.loads(world.out["b_exp_apply_export"]) == world.a_exp_export
    assert world.a_exp_export != world.a_digests["models/export"]  # another model indeed


@pytest.mark.parametrize("how", ["v1.0.0", "prod"])
def test_artifacts_get_by_version_and_stage_loads_in_transformers(world: World, how) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    got = world.remote.parent / how
    assert digests(got) == world.a_digests["models/export"]
    model = AutoModelForCausalLM.from_pretrained(got)
    tok = AutoTokenizer.from_pretrained(got)
    ids = tok("def add(a, b):", return_tensors="pt").input_ids
    assert model(ids).logits.shape[-1] >= len(tok)


def test_remote_holds_no_checkpoint_and_no_unscrubbed_text(world: World) -> None:
    files = [f for f in world.remote.rglob("*") if f.is_file()]
    assert any(f.relative_to(world.remote).parts[0] == "runs" for f in files), "run-cache pushed"
    # no checkpoint file, by content (log/ excepted: the final checkpoint's copy of the
    # training log is reports/train itself, which is pushed)
    ckpts = world.a / "models/checkpoints"
    assert any(ckpts.glob("step-*/optimizer.pt"))
    ckpt_md5 = {
        hashlib.md5(f.read_bytes()).hexdigest()
        for f in ckpts.rglob("*")
        if f.is_file() and "log" not in f.relative_to(ckpts).parts
    }
    remote_md5 = {f.parent.name + f.name for f in files if f.parent.parent.name == "md5"}
    assert remote_md5 and not ckpt_md5 & remote_md5
    # ...nor by name, in any directory listing DVC pushed
    for f in files:
        if f.suffix == ".dir":
            names = [e["relpath"] for e in json.loads(f.read_text())]
            assert not any(n.endswith((".pt", "state.json")) for n in names), names
    # the planted credential was found and redacted; no remote file holds it (parquet
    # pages are compressed: their text is read back with pyarrow)
    stats = json.loads((world.a / "data/prepared/stats.json").read_text())
    assert sum(stats["secrets"].values()) >= 1, stats
    secret = world.secret.encode()
    parquet = 0
    for f in files:
        data = f.read_bytes()
        assert secret not in data, f
        if data[:4] == b"PAR1":
            parquet += 1
            for col in pq.read_table(f).columns:
                assert not any(world.secret in str(v) for v in col.to_pylist()), f
    assert parquet == 3  # the three prepared splits
