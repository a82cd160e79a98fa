"""What a result is a function of: every stage's deps cover the code it imports and the
packages that compute it, and a checkpoint is resumed only by the code that wrote it."""

from __future__ import annotations

import ast
import re
import sys
from importlib import metadata
from modulefinder import ModuleFinder
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT, model_args

from codexlm import corpus, provenance
from codexlm.checkpoint import files as checkpoint_files
from codexlm.checkpoint import policy as checkpoint_policy
from codexlm.errors import UserError
from codexlm.model import build_model, uses_dropout

STAGES = {
    "prepare": "stages/prepare_stage.py",
    "tokenize": "stages/tokenize_stage.py",
    "train": "stages/train_stage.py",
    "evaluate": "stages/evaluate_stage.py",
    "export": "stages/export_stage.py",
    "codeeval": "stages/codeeval_stage.py",
}


def project_closure(script: str) -> set[str]:
    """The stage script and every project module it imports, directly or not, as paths."""
    finder = ModuleFinder(path=[str(ROOT / "src")])  # only this project's modules are found
    finder.run_script(str(ROOT / script))
    files = {script}
    for name, module in finder.modules.items():
        if name.split(".")[0] == "codexlm" and module.__file__:
            files.add(Path(module.__file__).resolve().relative_to(ROOT).as_posix())
    return files


def third_party_imports(path: Path) -> set[str]:
    """Top-level names of the non-stdlib, non-project modules a file imports, anywhere in it."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "codexlm"}


def canonical(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


def requirement_closure(dists: set[str]) -> set[str]:
    """The distributions and everything they require (extras aside), canonically named."""
    seen: set[str] = set()
    todo = [canonical(d) for d in dists]
    while todo:
        d = todo.pop()
        if d in seen:
            continue
        seen.add(d)
        try:
            reqs = metadata.requires(d) or []
        except metadata.PackageNotFoundError:
            continue
        for r in reqs:
            if "extra ==" not in r:
                todo.append(canonical(re.split(r"[\s<>=!~;\[(]", r, maxsplit=1)[0]))
    return seen


def computing_packages(files: set[str]) -> set[str]:
    """The packages of versions.yaml that a stage's code uses, directly or through another."""
    dist_of = metadata.packages_distributions()
    dists = {
        d for f in files for name in third_party_imports(ROOT / f) for d in dist_of.get(name, [])
    }
    return requirement_closure(dists) & set(provenance.COMPUTING)


def declared(stage: str) -> tuple[set[str], set[str]]:
    """(code deps, versions.yaml params) of a stage in dvc.yaml."""
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]
    code = {d for d in spec["deps"] if d.startswith(("src/", "stages/"))}
    versions: set[str] = set()
    for entry in spec.get("params", []):
        if isinstance(entry, dict) and "versions.yaml" in entry:
            versions = set(entry["versions.yaml"])
    return code, versions


@pytest.mark.parametrize("stage", STAGES)
def test_stage_deps_are_its_import_closure(stage: str) -> None:
    code, _ = declared(stage)
    closure = project_closure(STAGES[stage])
    assert closure - code == set(), f"{stage}: dvc.yaml lacks deps on modules it imports"
    assert code - closure == set(), f"{stage}: dvc.yaml deps on modules it does not import"


@pytest.mark.parametrize("stage", STAGES)
def test_stage_declares_the_packages_that_compute_it(stage: str) -> None:
    _, versions = declared(stage)
    assert versions == computing_packages(project_closure(STAGES[stage])), stage


def test_closure_finds_a_dropped_dep(tmp_path: Path) -> None:
    """The check above can see through a stage: evaluate imports load_trained from model.py."""
    assert "src/codexlm/model.py" in project_closure(STAGES["evaluate"])
    assert "src/codexlm/provenance.py" in project_closure(STAGES["train"])


def test_no_function_local_imports_of_project_modules() -> None:
    # a module imported inside a function is loaded only when the function runs: neither
    # modulefinder's closure nor the run-time code digest could be trusted to see it
    for path in [*(ROOT / "src").rglob("*.py"), *(ROOT / "stages").glob("*.py")]:
        tree = ast.parse(path.read_text())
        # and `if TYPE_CHECKING:` at the top: for type hints only, never run (modulefinder
        # still counts them, so a closure errs on the side of too many deps)
        hints = [
            n.body
            for n in tree.body
            if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING"
        ]
        top = set(map(id, tree.body)) | {id(n) for body in hints for n in body}
        for node in ast.walk(tree):
            mod = (
                node.module
                if isinstance(node, ast.ImportFrom)
                else node.names[0].name
                if isinstance(node, ast.Import)
                else None
            )
            if mod and mod.split(".")[0] == "codexlm":
                assert id(node) in top, f"{path.relative_to(ROOT)}:{node.lineno}"


LOCK = ROOT / "requirements.lock"


def test_versions_file_is_what_the_lock_pins(tmp_path: Path) -> None:
    written = provenance.write_versions(LOCK, tmp_path / "versions.yaml")
    assert (tmp_path / "versions.yaml").read_text() == (ROOT / "versions.yaml").read_text()
    assert sorted(written) == sorted(provenance.COMPUTING)
    assert written["torch"] == torch.__version__.split("+")[0]


def test_environment_check_refuses_other_versions(tmp_path: Path) -> None:
    good = tmp_path / "versions.yaml"
    good.write_text((ROOT / "versions.yaml").read_text())
    installed = provenance.check_environment(good)
    assert installed["torch"] == torch.__version__
    bad = tmp_path / "bad.yaml"
    bad.write_text(re.sub(r"(?m)^numpy: .*$", "numpy: 0.0.1", good.read_text()))
    with pytest.raises(UserError, match=r"bad.yaml: numpy 0.0.1 is declared .* is installed"):
        provenance.check_environment(bad)


def test_code_digest_covers_the_loaded_modules(tmp_path: Path, monkeypatch) -> None:
    loaded = provenance.loaded_code()
    assert {"codexlm.provenance", "codexlm.checkpoint.files", "codexlm.model"} <= set(loaded)
    before = provenance.code_digest()
    # the same module over other contents (a comment appended): another digest
    copy = tmp_path / "provenance.py"
    copy.write_text(Path(provenance.__file__).read_text() + "# a comment\n")
    monkeypatch.setattr(provenance, "__file__", str(copy))
    assert provenance.code_digest() != before


def test_stale_checkpoints_are_named_with_the_reason(tmp_path: Path) -> None:
    identity = {"params": "p", "code": "c", "packages": "k"}
    for step, ident in [
        (1, {**identity, "code": "old"}),
        (2, {**identity, "params": "x"}),
        (3, identity),
    ]:
        checkpoint_files.write(tmp_path, step, {"w": torch.ones(1)}, {}, {"identity": ident})
    (tmp_path / "step-00000004").mkdir()  # unreadable state.json: corrupt, not another run's
    removed = checkpoint_policy.remove_stale(tmp_path, identity)
    assert removed == [
        f"removed {tmp_path / 'step-00000002'} (written by other params or data)",
        f"removed {tmp_path / 'step-00000001'} (written by other code)",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000003", "step-00000004"]
    with pytest.warns(UserWarning, match="step-00000004"):
        assert checkpoint_policy.find_resumable(tmp_path).step == 3


def test_compiled_dropout_draws_other_masks_than_eager() -> None:
    """Why `compile` is in the run's fingerprint whenever dropout is on."""

    def f(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.dropout(x, 0.5, training=True)

    x = torch.ones(4096)
    torch.manual_seed(0)
    eager = f(x)
    torch.manual_seed(0)
    compiled = torch.compile(f)(x)
    torch.manual_seed(0)
    assert torch.equal(f(x), eager)  # eager is reproducible from the seed
    assert not torch.equal(compiled, eager)


def test_uses_dropout() -> None:
    def model(arch: str, dropout: float) -> torch.nn.Module:
        cfg = model_args(arch=arch, n_layer=1, n_head=2, d_model=32, context=32, dropout=dropout)
        return build_model(cfg, 300, 0, 1, 0)

    assert not uses_dropout(model("llama", 0.0))
    assert uses_dropout(model("llama", 0.1))  # attention dropout: a config float
    assert not uses_dropout(model("gpt2", 0.0))
    assert uses_dropout(model("gpt2", 0.1))  # nn.Dropout modules


def test_stdlib_marker_refuses_another_standard_library(tmp_path: Path, monkeypatch) -> None:
    marker = tmp_path / "stdlib"
    identity = corpus.write_stdlib_marker(marker)
    assert corpus.check_stdlib_marker(marker) == identity
    assert identity["files"] > 100 and identity["python"] == ".".join(
        map(str, sys.version_info[:3])
    )
    other = tmp_path / "lib"
    (other / "json").mkdir(parents=True)
    (other / "json" / "__init__.py").write_text("x = 1\n")
    monkeypatch.setattr(corpus, "stdlib_root", lambda: other)
    with pytest.raises(
        UserError,
        match=r"this interpreter's standard library \(Python [0-9.]+, 1 files.* run `make stdlib`",
    ):
        corpus.check_stdlib_marker(marker)
