"""The prepared GPU run's scripts work where the device image has no dvc, dvclive or pydantic.

They run on the CPU here (a GPU is rarely at hand), so they cannot rot between GPU runs.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from conftest import ROOT, run

BLOCKED = ("dvc", "dvclive", "pydantic")  # what the H200 image lacks
pytestmark = pytest.mark.slow  # each test starts python with torch and transformers


@pytest.fixture
def image_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """PYTHONPATH with a sitecustomize that makes the image's missing packages unimportable."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in BLOCKED)
    )
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), str(ROOT / "src")]))
    return site


def test_blocking_works(image_env: Path) -> None:
    proc = run([sys.executable, "-c", "import dvclive"], cwd=ROOT, check=False)
    assert proc.returncode != 0 and "dvclive" in proc.stderr


def test_gpu_checks_pass_on_cpu(image_env: Path) -> None:
    proc = run([sys.executable, "bench/gpu_check.py", "--device", "cpu"], cwd=ROOT)
    lines = proc.stdout.splitlines()
    oks = [line for line in lines if line.startswith("ok ")]
    assert len(oks) == 5, proc.stdout
    assert lines[-1] == "gpu_check: 5 of 5 checks passed"


def test_gpu_check_refuses_without_cuda(image_env: Path) -> None:
    proc = run([sys.executable, "bench/gpu_check.py"], cwd=ROOT, check=False)
    if proc.returncode == 0:  # a machine with a GPU: the checks ran there
        assert "checks passed" in proc.stdout
        return
    assert proc.returncode == 1 and "no CUDA device" in proc.stderr


def test_throughput_bench_reports_a_ratio(image_env: Path) -> None:
    cmd = [sys.executable, "bench/train_throughput.py", "--no-compile", "--device", "cpu"]
    proc = run([*cmd, "--steps", "1", "--warmup", "1", "--rounds", "1"], cwd=ROOT)
    summary = json.loads(proc.stdout.splitlines()[-1])
    assert summary["device"] == "cpu"
    assert summary["ours_tokens_per_s"] > 0 and summary["hf_tokens_per_s"] > 0
    assert summary["ratio"] == pytest.approx(
        summary["ours_tokens_per_s"] / summary["hf_tokens_per_s"], rel=1e-2
    )
    assert 0 <= summary["data_overhead_pct"] < 100
    assert summary["variants"]["ours"]["log_includes_dvclive"] is False


def test_throughput_bench_runs_a_subset(image_env: Path) -> None:
    cmd = [sys.executable, "bench/train_throughput.py", "--device", "cpu", "--variants", "ours"]
    proc = run([*cmd, "--steps", "1", "--warmup", "1", "--rounds", "1"], cwd=ROOT)
    summary = json.loads(proc.stdout.splitlines()[-1])
    assert list(summary["variants"]) == ["ours"]
    assert summary["hf_tokens_per_s"] is None and summary["ratio"] is None


@pytest.mark.parametrize("variants", ["ours,foo", "ours_compile --no-compile"])
def test_throughput_bench_refuses_unknown_variants(image_env: Path, variants: str) -> None:
    name, *flags = variants.split()
    cmd = [sys.executable, "bench/train_throughput.py", "--variants", name, *flags]
    proc = run(cmd, cwd=ROOT, check=False)
    assert proc.returncode == 2 and "--variants: choose among" in proc.stderr
