"""The benchmarks run: the prepared GPU run's scripts where the device image has no dvc,
dvclive or pydantic, and the CPU benches at tiny sizes, so none can rot between runs.

No timing is asserted, only that each bench runs the library and reports its figures.
"""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path

import pytest
from conftest import ROOT, run, tiny_params, write_params

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
    # the Trainer stepping our optimizer (Muon + AdamW): a ratio of its own
    assert summary["hf_ours_opt_tokens_per_s"] > 0
    assert summary["ratio_same_optimizer"] == pytest.approx(
        summary["ours_tokens_per_s"] / summary["hf_ours_opt_tokens_per_s"], rel=1e-2
    )
    assert "ratio, the Trainer stepping our optimizer (muon)" in proc.stdout
    # utilisation against the matmul peak measured in the same run, for both loops
    peak = summary["matmul_peak_flops"]
    assert peak > 0 and "measured matmul peak" in proc.stdout
    for loop, variant in (("ours", "ours"), ("hf", "hf_trainer")):
        row = summary["variants"][variant]
        assert row["model_flops_per_s"] == pytest.approx(row["tokens_per_s"] * flops(summary))
        assert summary[f"{loop}_peak_utilisation"] == pytest.approx(row["model_flops_per_s"] / peak)


def flops(summary: dict) -> float:
    """Training FLOPs per token of the bench's model, from its summary (PaLM appendix B)."""
    m = summary["model"]
    return 6 * m["params"] + 12 * m["n_layer"] * m["d_model"] * m["context"]


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


def test_checkpoint_overhead_without_pydantic(image_env: Path, tmp_path: Path) -> None:
    p = tiny_params("stdlib")
    p["train"].update(eval_every=3)  # a validation between two checkpoints: not a step's time
    write_params(tmp_path, p)
    cmd = [sys.executable, "bench/train_throughput.py", "--checkpoints", "2", "--steps", "6"]
    cmd += ["--warmup", "1", "--device", "cpu", "--params", str(tmp_path / "params.yaml")]
    summary = json.loads(run(cmd, cwd=ROOT).stdout.splitlines()[-1])
    assert summary["checkpoint_every"] == 2 and len(summary["checkpoints"]) == 3  # 2, 4, 6
    files = summary["checkpoints"][-1]["files"]
    assert "model.safetensors" in files and summary["checkpoint_mb"] > 0
    assert summary["checkpoint_s"] > 0 and summary["overhead_pct"] > 0


def test_loss_memory_reports_both_variants() -> None:
    cmd = [sys.executable, "bench/loss_memory.py", "--vocab", "512", "--tokens", "256"]
    proc = run([*cmd, "--context", "64", "--repeats", "1"], cwd=ROOT)
    summary = json.loads(proc.stdout.splitlines()[-1])
    full, chunked = summary["variants"]["full"], summary["variants"]["chunked"]
    assert full["loss"] == pytest.approx(chunked["loss"], rel=1e-5)  # the same loss, two ways
    assert full["added_peak_mb"] > 0 and chunked["added_peak_mb"] > 0


def test_optimizer_step_times_the_optimizers_and_both_iterations(tmp_path: Path) -> None:
    p = tiny_params("stdlib")  # llama, 1 layer of width 32
    write_params(tmp_path, p)
    cmd = [sys.executable, "bench/optimizer_step.py", "--params", str(tmp_path / "params.yaml")]
    summary = json.loads(
        run(
            [*cmd, "--vocab", "256", "--steps", "2", "--profile", "40", "--chunks", "64"], cwd=ROOT
        ).stdout.splitlines()[-1]
    )
    assert summary["forward_backward_ms"] > 0
    # the profile names inductor's compiled kernels, with their time
    kernels = {k: ms for k, ms in summary["profile_ms"].items() if "cpp_fused" in k}
    assert kernels and all(ms > 0 for ms in kernels.values())
    assert set(summary["optimizer_ms"]) == {"adamw", "muon", "torch muon"}
    # the CPU's chunk (2**22 logits at vocab 256: more than the batch's 64 tokens), and 64
    assert {int(c) for c in summary["chunk_ms"]} == {16384, 64}
    assert all(ms > 0 for ms in summary["chunk_ms"].values())
    ns = summary["newton_schulz"]
    # q, k, v, o, gate, up, down per layer; square and (transposed) 3x-wide: two stacks
    assert ns["matrices"] == 7 * p["model"]["n_layer"] and ns["shapes"] == 2
    assert ns["max_abs_diff"] < 0.05  # stacked is torch's iteration, to bf16 rounding


def test_data_pipeline_runs_every_step(tmp_path: Path) -> None:
    write_params(tmp_path, tiny_params("stdlib"))  # val and test 20%: none empty at 1 MB
    cmd = [sys.executable, "bench/data_pipeline.py", "--small-mb", "1", "--large-mb", "2"]
    cmd += ["--scrub-mb", "0.5", "--params", str(tmp_path / "params.yaml")]
    work = tmp_path / "work"
    work.mkdir()
    summary = json.loads(run([*cmd, "--workdir", str(work)], cwd=ROOT).stdout.splitlines()[-1])
    steps = [f"{s} {mb}" for mb in (1, 2) for s in ("prepare", "bpe", "encode")]
    assert set(summary["runs"]) == {*steps, "prepare+scrub 0.5"}
    assert summary["runs"]["prepare 2"]["mb"] == pytest.approx(2, rel=0.1)
    assert summary["runs"]["encode 2"]["mb"] > summary["runs"]["encode 1"]["mb"]
    assert set(summary["peak_rss_ratio"]) == {"prepare", "bpe", "encode"}
    assert list(work.iterdir()) == []  # the corpora are deleted


def test_speedrun_compares_candidates_on_both_budgets(built: Path) -> None:
    """At 2% of its budget (10 steps), uncompiled, on the tiny pipeline's data: every
    candidate trains for both budgets, one of them with a vocabulary of its own."""
    cmd = [sys.executable, "bench/speedrun.py", "--candidates", "muon", "--scale", "0.02"]
    cmd += ["--common", "train.compile=false", "--common", "model.context=32"]
    cmd += ["--common", "train.warmup_steps=2", "--eval-every", "5"]
    cmd += ["--set", "small-vocab:tokenizer.vocab_size=280", "--set", "small-vocab:train.lr=1e-2"]
    for flag, path in (("--tokens", "data/tokens"), ("--prepared", "data/prepared")):
        cmd += [flag, str(built / path)]
    cmd += ["--params", str(built / "params.yaml")]
    summary = json.loads(run(cmd, cwd=ROOT).stdout.splitlines()[-1])
    rows = {(r["lever"], r["budget"]): r for r in summary["results"]}
    names = ("baseline", "muon", "small-vocab")
    assert set(rows) == {(n, b) for n in names for b in ("tokens", "time")}
    base = rows["baseline", "tokens"]
    assert summary["target_val_bpb"] == base["val_bpb"] and base["ratio"] == 1.0
    assert rows["small-vocab", "tokens"]["changes"]["tokenizer.vocab_size"] == 280
    for r in rows.values():
        assert r["test_bpb"] > 0 and r["xz_bpb"] > 0 and r["train_s"] > 0
        assert r["tokens"] == r["steps"] * 32 * 32
    assert rows["muon", "tokens"]["val_bpb"] != base["val_bpb"]  # the lever took effect
    # the time rows train for the baseline's measured seconds (how close is timing: below)
    for name in ("muon", "small-vocab"):
        r = rows[name, "time"]
        assert r["budget_s"] == base["train_s"] and 0 <= r["fit_runs"] <= 3
        if r["fit_runs"] == 0:  # its token run stood for it: only when already within 2%
            assert (r["steps"], r["train_s"]) == (
                rows[name, "tokens"]["steps"],
                rows[name, "tokens"]["train_s"],
            )
            assert abs(r["train_s"] - base["train_s"]) <= 0.02 * base["train_s"]


@pytest.mark.parametrize("noise", [0.0, 0.03])
def test_a_time_row_is_refitted_to_the_budget(monkeypatch, noise: float) -> None:
    """The fit, on a run whose cost the probe misjudged (its steps 40% dearer than it said,
    and with noise each run's steps 3% dearer or cheaper in turn): retrained from its own
    costs until within 2% of the budget, FIT_TRIES runs at most, the closest kept. A
    synthetic clock, so the test does not depend on this machine's load."""
    sys.path.insert(0, str(ROOT / "bench"))
    import speedrun

    calls: list[int] = []
    seconds: list[float] = []

    def run_one(p, vocab, model_cfg, cfg, data, eval_every):
        calls.append(cfg.steps)
        per_step = 0.14 * (1 + noise * (-1) ** len(calls))
        seconds.append(5.0 + (cfg.steps - 1) * per_step)
        return {"steps": cfg.steps, "first_s": 5.0, "train_s": seconds[-1]}

    monkeypatch.setattr(speedrun, "run_one", run_one)
    monkeypatch.setattr(speedrun, "with_steps", lambda cfg, n: types.SimpleNamespace(steps=n))
    r = speedrun.fit_to_time(None, 0, None, None, None, 25, 100.0, (5.0, 0.1))
    assert calls[0] == 951  # the probe's estimate: 1 + (100 - 5) / 0.1
    assert r["budget_s"] == 100.0 and r["fit_runs"] == len(calls) <= speedrun.FIT_TRIES
    assert r["train_s"] == min(seconds, key=lambda t: abs(t - 100.0))  # the closest kept
    if noise == 0:  # refitted once from its own costs, then within 2%
        assert len(calls) == 2 and abs(r["train_s"] - 100.0) <= 2.0
    else:  # a machine whose steps keep changing cost: every try used
        assert len(calls) == speedrun.FIT_TRIES


def test_speedrun_round_two_baseline_is_params_yaml() -> None:
    """Round two measures levers against today's default: its baseline is params.yaml's
    model and train blocks exactly (it once took the old default's 500 steps)."""
    sys.path.insert(0, str(ROOT / "bench"))
    import speedrun
    from common import load_params

    p = load_params(ROOT / "params.yaml")
    vocab, model, train = speedrun.configure(p, speedrun.ROUNDS[2][0])
    assert vocab == p.tokenizer.vocab_size
    assert model == p.model and train == p.train


def test_serve_bench_puts_the_server_beside_generate() -> None:
    """A 1 x 32 random model, 2 prompts of 4 tokens, 1 and 2 streams: every row measured,
    the ratios are of those rows, the machine and its load are printed with them."""
    cmd = [sys.executable, "bench/serve.py", "--small", "--tokens", "4", "--prompts", "2"]
    proc = run([*cmd, "--streams", "1,2", "--rounds", "1"], cwd=ROOT)
    summary = json.loads(proc.stdout.splitlines()[-1])
    rows, ratios = summary["rows"], summary["ratios"]
    keys = {"generate, batch 1", "server, 1 stream", "server, 2 streams", "generate, batch 2"}
    assert set(rows) == keys
    # greedy, one row at a time, on the same prompts and budget: the same tokens (a batch of
    # two is padded, which may change a greedy pick)
    alone = [rows[k]["tokens"] for k in sorted(keys - {"generate, batch 2"})]
    assert len(set(alone)) == 1 and alone[0] > 0
    one, lib = rows["server, 1 stream"], rows["generate, batch 1"]
    assert ratios["overhead_1_stream"] == pytest.approx(lib["tokens_per_s"] / one["tokens_per_s"])
    assert one["ttft_s"] > 0 and rows["server, 2 streams"]["ttft_max_s"] > 0
    assert proc.stdout.startswith("machine: ") and "load average before" in proc.stdout
    assert len(summary["load_average"]["before"]) == 3
