"""MLflow, TensorBoard and W&B beside DVCLive (codexlm.trackers), each read back with its own
client: every step's loss equal to DVCLive's, the params, the later stages' metrics and the
model card; no connection to anything but loopback; a killed run resumed logs each step once.

The runs are real train() runs of a tiny model in processes of their own
(tests/tracked_train.py), killed with SIGKILL where a test says so.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import ROOT, VENV_BIN, run_script, train_args
from mlflow.tracking import MlflowClient
from pydantic import ValidationError
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from codexlm import trackers
from codexlm.errors import MachineFault, UserError

STEPS = 8  # tests/tracked_train.py's run
RESULTS = {"evaluate/test/bits_per_byte": 1.625, "evaluate/test/loss": 3.5}
CARD = "# codexlm\n\nA model card.\n"


def netns() -> list[str]:
    """A prefix that runs a command in a network namespace of its own (no interface but a
    loopback that is down), where the kernel can create one; else none."""
    if shutil.which("unshare") is None:
        return []
    ok = subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode == 0
    return ["unshare", "-rn"] if ok else []


def tracked(folder: Path, names: list[str], check: bool = True, **spec) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    prefix = spec.pop("prefix", [])
    (folder / "spec.json").write_text(json.dumps({"dir": str(folder), "trackers": names, **spec}))
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT / 'tests'}"}
    env["HOME"] = str(folder / "home")  # to see what a tracker leaves outside its folder
    for k in ("MLFLOW_TRACKING_URI", "WANDB_MODE", "WANDB_DIR"):  # this machine's, not ours
        env.pop(k, None)
    cmd = [*prefix, sys.executable, str(ROOT / "tests/tracked_train.py")]
    done = subprocess.run([*cmd, str(folder / "spec.json")], env=env, capture_output=True)
    if check and done.returncode != 0:
        raise AssertionError(done.stderr.decode()[-3000:])
    return done.returncode


def dvclive(folder: Path, name: str) -> dict[int, float]:
    with (folder / "log/plots/metrics" / f"{name}.tsv").open(newline="") as f:
        return {
            int(r["step"]): float(r[name.split("/")[-1]]) for r in csv.DictReader(f, delimiter="\t")
        }


def assert_scalars(acc: EventAccumulator, name: str, logged: dict[int, float]) -> None:
    """TensorBoard holds each of DVCLive's steps once, with its value (as float32)."""
    events = acc.Scalars(name)
    assert [e.step for e in events] == sorted(logged), name
    assert [e.value for e in events] == [np.float32(logged[s]) for s in sorted(logged)], name


def record(folder: Path) -> dict:
    return json.loads((folder / "log" / trackers.RECORD).read_text())


def mlflow_client(folder: Path) -> MlflowClient:
    trackers.offline()  # as the stages read it: MLflow 3 asks to allow its file store
    return MlflowClient((folder / "trackers/mlflow").as_uri())


@pytest.fixture(scope="module")
def all_three(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """One run with every tracker on, then the evaluate and export stages' logging, counting
    the connections it attempts, inside a network namespace where the kernel allows one."""
    folder = tmp_path_factory.mktemp("tracked")
    (folder / "README.md").write_text(CARD)
    prefix = netns()
    names = ["mlflow", "tensorboard", "wandb"]
    spec = dict(audit=True, results=RESULTS, files=["README.md"], prefix=prefix)
    tracked(folder, names, **spec)
    return folder, prefix


def test_mlflow_run_reads_back_as_dvclive_logged_it(all_three) -> None:
    folder, _ = all_three
    client, entry = mlflow_client(folder), record(folder)["mlflow"]
    assert entry["tracking_uri"] is None  # the default: a file store in the repository
    run = client.get_run(entry["run_id"])
    for name in ("train/loss", "val/loss", "lr", "grad_norm"):
        history = client.get_metric_history(run.info.run_id, name)
        assert {m.step: m.value for m in history} == dvclive(folder, name), name
        assert len(history) == len(dvclive(folder, name)), name  # no step twice
    assert {"tokens_per_s", "system/cpu_percent", "system/rss_gb"} <= run.data.metrics.keys()
    assert run.data.params["train.lr"] == "0.01" and run.data.params["seed"] == "0"
    assert run.data.tags["codexlm.fingerprint"] == "fp-tracked"
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    assert run.data.tags["mlflow.source.git.commit"] == head.stdout.strip()
    for k, v in RESULTS.items():  # the later stages' metrics, at the run's last step
        assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, k)] == [
            (STEPS, v)
        ]
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["README.md"]
    assert run.info.status == "FINISHED"
    assert len(client.search_runs([run.info.experiment_id])) == 1  # one run per stage run


def test_tensorboard_events_read_back_as_dvclive_logged_them(all_three) -> None:
    folder, _ = all_three
    acc = EventAccumulator(record(folder)["tensorboard"]["dir"])
    acc.Reload()
    for name in ("train/loss", "val/loss", "lr", "grad_norm"):
        assert_scalars(acc, name, dvclive(folder, name))
    assert "tokens_per_s" in acc.Tags()["scalars"] and "system/rss_gb" in acc.Tags()["scalars"]
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hp = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hp["train.lr"].number_value == 0.01 and hp["train.schedule"].string_value == "wsd"
    for k, v in RESULTS.items():
        assert [(e.step, e.value) for e in acc.Scalars(k)] == [(STEPS, np.float32(v))]
    assert "README.md/text_summary" in acc.Tags()["tensors"]  # the card, as text


def wandb_records(path: Path) -> list[dict]:
    """A .wandb transaction log through W&B's own reader (`wandb leet inspect --json`)."""
    done = subprocess.run(
        [str(VENV_BIN / "wandb"), "leet", "inspect", str(path), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_wandb_offline_run_reads_back_as_dvclive_logged_it(all_three) -> None:
    folder, _ = all_three
    entry = record(folder)["wandb"]
    # one offline folder per process: the train stage's, then the later stages'
    runs = sorted((Path(entry["dir"]) / "wandb").glob(f"offline-run-*-{entry['id']}"))
    assert len(runs) == 2
    train, later = (wandb_records(next(r.glob("*.wandb"))) for r in runs)
    rows = [r["history"] for r in train if r["type"] == "history"]
    for name in ("train/loss", "val/loss", "lr", "grad_norm"):
        got = {r["step"].get("num", 0): r["item"][name] for r in rows if name in r["item"]}
        assert got == dvclive(folder, name), name
    config = next(r for r in train if r["type"] == "run")["run"]["config"]["update"]
    assert config["train.lr"] == 0.01 and config["fingerprint"] == "fp-tracked"
    summary: dict = {}
    for r in later:
        if r["type"] == "summary":
            summary.update(r["summary"]["update"])
    assert {k: summary[k] for k in RESULTS} == RESULTS
    assert any(r["type"] == "artifact" for r in later)  # the card
    assert not any(r["type"] == "run" and r["run"].get("entity") for r in train)  # never synced
    home = folder / "home"  # its staging area, caches and settings stay in trackers/wandb
    assert not [
        p for p in (".local/share/wandb", ".cache/wandb", ".config/wandb") if (home / p).exists()
    ]


def test_no_connection_but_loopback_with_every_tracker_on(all_three) -> None:
    """The audit hook saw every connect and name lookup of the run's interpreter; the network
    namespace (where there is one) had no interface to reach anything through."""
    folder, prefix = all_three
    assert json.loads((folder / "attempts.json").read_text()) == []
    if os.environ.get("CI") and not prefix:
        pytest.fail("CI: no network namespace (unshare -rn) to run the tracked run in")


def test_a_killed_run_resumes_the_same_mlflow_run_and_tensorboard_axis(tmp_path) -> None:
    """SIGKILL while drawing step 6's batches, after the step-4 checkpoint: the crashed run
    had logged step 5 to both. The resumed run continues the same MLflow run and
    TensorBoard folder: steps 1..8 once each, with DVCLive's values."""
    names = ["mlflow", "tensorboard"]
    assert tracked(tmp_path, names, check=False, kill_at=6) == -9
    crashed = mlflow_client(tmp_path).get_metric_history(
        record(tmp_path)["mlflow"]["run_id"], "train/loss"
    )
    assert max(m.step for m in crashed) > 4  # past the checkpoint it resumes from
    tracked(tmp_path, names)
    entry = record(tmp_path)
    client = mlflow_client(tmp_path)
    run = client.get_run(entry["mlflow"]["run_id"])
    assert len(client.search_runs([run.info.experiment_id])) == 1 and run.info.status == "FINISHED"
    acc = EventAccumulator(entry["tensorboard"]["dir"])
    acc.Reload()
    for name in ("train/loss", "val/loss"):
        logged = dvclive(tmp_path, name)
        history = client.get_metric_history(run.info.run_id, name)
        assert sorted(m.step for m in history) == sorted(logged), name
        assert {m.step: m.value for m in history} == logged, name
        assert_scalars(acc, name, logged)
    assert sorted(dvclive(tmp_path, "train/loss")) == list(range(1, STEPS + 1))


@pytest.mark.slow  # two runs in processes of their own: 40 s here (loaded 2-core machine)
def test_a_tracker_added_to_a_finished_run_gets_dvclives_history(tmp_path) -> None:
    """train.loggers is not fingerprinted: turned on after the run, the stage resumes the
    final checkpoint and trains nothing; the new run starts with the steps DVCLive holds."""
    tracked(tmp_path, [])
    tracked(tmp_path, ["tensorboard"])
    acc = EventAccumulator(record(tmp_path)["tensorboard"]["dir"])
    acc.Reload()
    for name in ("train/loss", "val/loss", "lr"):
        logged = dvclive(tmp_path, name)
        assert_scalars(acc, name, logged)


def test_a_missing_package_is_one_line_before_any_work(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # what `import wandb` sees uninstalled
    with pytest.raises(
        UserError, match=r"train.loggers: wandb is not installed.*make install-trackers"
    ):
        trackers.check(["dvclive", "mlflow", "wandb"], tmp_path)


def test_an_unwritable_folder_is_one_line_before_any_work(tmp_path) -> None:
    root = tmp_path / "file"
    root.write_text("")  # a file where the folder should be
    with pytest.raises(MachineFault, match=r"train.loggers: tensorboard writes to .*not writable"):
        trackers.check(["dvclive", "tensorboard"], root)


@pytest.mark.parametrize(
    ("loggers", "where", "line"),
    [
        (
            ["dvclive", "tensorboard"],
            "a file",
            "error: train.loggers: tensorboard writes to trackers/tensorboard, which is not "
            "writable (Not a directory); free or fix that folder, or drop tensorboard from "
            "train.loggers",
        ),
        (
            ["mlflow"],
            None,
            "error: params.yaml: train.loggers: keep dvclive in the list: "
            "reports/train is the pipeline's own log (evaluate and `dvc plots` read it); add "
            "the others beside it (got ['mlflow'])",
        ),
    ],
)
def test_make_repro_stops_before_dvc_removes_any_output(tmp_path, loggers, where, line) -> None:
    """stages/check_params.py, which `make repro` runs ahead of `dvc repro`, refuses a tracker
    that cannot write, and params that drop DVCLive, in one line."""
    shutil.copytree(ROOT / "stages", tmp_path / "stages")
    shutil.copy(ROOT / "versions.yaml", tmp_path)
    (tmp_path / "corpus").symlink_to(ROOT / "corpus")  # the default data.source
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["train"]["loggers"] = loggers
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    if where == "a file":
        (tmp_path / "trackers").write_text("")
    done = run_script("stages/check_params.py", tmp_path)
    assert (done.returncode, done.stderr.strip().splitlines()) == (2, [line])


def test_a_run_that_is_gone_is_one_line_in_the_later_stages(tmp_path) -> None:
    """The record names a run the store does not hold (deleted, or another store)."""
    (tmp_path / "log").mkdir()
    gone = {"steps": 8, "mlflow": {"tracking_uri": None, "run_id": "0" * 32}}
    (tmp_path / "log" / trackers.RECORD).write_text(json.dumps(gone))
    with pytest.raises(MachineFault, match=r"^mlflow: could not log to the run .*trackers.json"):
        trackers.log_results(tmp_path / "log", tmp_path / "trackers", {"evaluate/x": 1.0})


def test_loggers_keep_dvclive_and_name_each_once() -> None:
    assert train_args().loggers == ["dvclive"]  # params.yaml's default: today's logging
    for bad in (["mlflow"], ["dvclive", "mlflow", "mlflow"], ["dvclive", "neptune"]):
        with pytest.raises(ValidationError):
            train_args(loggers=bad)


def flat(d: dict, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in d.items():
        out.update(flat(v, f"{prefix}{k}/") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


@pytest.mark.slow  # train, evaluate and export once more: 53 s here (loaded 2-core machine)
def test_the_stages_log_to_the_runs_the_train_stage_started(built, tmp_path) -> None:
    """The stage scripts themselves: the default writes no record (today's outputs); with
    MLflow and TensorBoard on, an unusable folder stops the train stage in one line before
    any work, then train, evaluate and export log to the same runs: DVCLive's losses, the
    evaluate stage's metrics.json, the exported model card."""
    assert not (built / "reports/train" / trackers.RECORD).exists()
    repo = tmp_path / "repo"
    skip = shutil.ignore_patterns("checkpoints", "reports", "cache", "tmp", "trackers")
    shutil.copytree(built, repo, ignore=skip)
    p = yaml.safe_load((repo / "params.yaml").read_text())
    p["train"]["loggers"] = ["dvclive", "mlflow", "tensorboard"]
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    (repo / "trackers").write_text("")  # a file where the folder goes
    bad = run_script("stages/train_stage.py", repo)
    assert bad.returncode == 2 and "train:" not in bad.stdout
    assert bad.stderr.strip().splitlines() == [
        "error: train.loggers: mlflow writes to trackers/mlflow, which is not writable (Not a "
        "directory); free or fix that folder, or drop mlflow from train.loggers"
    ]
    (repo / "trackers").unlink()
    for stage in ("train", "evaluate", "export"):
        done = run_script(f"stages/{stage}_stage.py", repo)
        assert done.returncode == 0, done.stderr[-2000:]
    entry = json.loads((repo / "reports/train" / trackers.RECORD).read_text())
    client = mlflow_client(repo)
    run_id, steps = entry["mlflow"]["run_id"], p["train"]["steps"]
    losses = client.get_metric_history(run_id, "train/loss")
    with (repo / "reports/train/plots/metrics/train/loss.tsv").open(newline="") as f:
        logged = {int(r["step"]): float(r["loss"]) for r in csv.DictReader(f, delimiter="\t")}
    assert {m.step: m.value for m in losses} == logged and len(losses) == len(logged)
    evaluated = flat(json.loads((repo / "reports/evaluate/metrics.json").read_text()))
    run = client.get_run(run_id)
    assert {k: run.data.metrics[f"evaluate/{k}"] for k in evaluated} == evaluated
    card = Path(client.download_artifacts(run_id, "README.md", str(tmp_path)))
    assert card.read_text() == (repo / "models/export/README.md").read_text()
    acc = EventAccumulator(str(repo / entry["tensorboard"]["dir"]))
    acc.Reload()
    bpb = evaluated["test/bits_per_byte"]
    assert [(e.step, e.value) for e in acc.Scalars("evaluate/test/bits_per_byte")] == [
        (steps, np.float32(bpb))
    ]
    assert "README.md/text_summary" in acc.Tags()["tensors"]
