"""MLflow, TensorBoard and W&B beside DVCLive: the trackers teams already have dashboards for,
local and offline by default, as one training-loop callback (codexlm.callbacks).

Each tracker gets the run's params, every logged step's metrics (the same dict DVCLive gets)
and, from the later stages, the evaluate metrics and the model card. The train stage starts
one run per tracker and records where in `reports/train/trackers.json`; that file is in the
training log, which every checkpoint carries and a resume restores, so a resumed run
continues the same runs, and the evaluate and export stages log to them (`log_results`,
`log_card`). A resumed run logs no step twice: TensorBoard's purge step hides the events the
crashed run wrote after the checkpoint, and MLflow, which cannot delete a metric point,
keeps the crashed run's points past the checkpoint (the resumed run computes the same values)
and logs only later steps.

The packages are imported when a run is opened, not with this module: they are an optional
install (`make install-trackers`), and `check` names a missing one before any work.
"""

from __future__ import annotations

import csv
import importlib
import json
import os
import subprocess
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from codexlm.atomic import write_json
from codexlm.callbacks import Start
from codexlm.errors import MachineFault, UserError

TRACKERS = ("mlflow", "tensorboard", "wandb")
MODULES = {"mlflow": "mlflow", "tensorboard": "tensorboard", "wandb": "wandb"}
RECORD = "trackers.json"  # in the train stage's log folder
EXPERIMENT = "codexlm"  # MLflow's experiment, W&B's project


def offline() -> None:
    """No tracker reaches a server unless the user asked: W&B offline, MLflow's usage
    telemetry off (MLflow 3 posts it to a server otherwise); a value the user set wins."""
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # the default store is MLflow's file store: the SQLite one needs SQLAlchemy and Alembic,
    # and takes seconds to migrate a new database; MLflow 3 asks for this to keep files
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")


def check(names: Sequence[str], root: Path) -> None:
    """Before any work: each tracker's package imports and its folder under `root` is
    writable; otherwise one line naming the tracker and the fix."""
    offline()
    for name in names:
        if name not in TRACKERS:
            continue
        try:
            importlib.import_module(MODULES[name])
        except ImportError as e:
            raise UserError(
                f"train.loggers: {name} is not installed here ({e}); `make install-trackers` "
                "installs MLflow, TensorBoard and W&B (requirements-trackers.lock)"
            ) from None
        if name == "mlflow" and "MLFLOW_TRACKING_URI" in os.environ:
            continue  # the user's store: MLflow says what is wrong with it
        folder = root / name
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise MachineFault(
                f"train.loggers: {name} writes to {folder}, which is not writable "
                f"({e.strerror}); free or fix that folder, or drop {name} from train.loggers"
            ) from None


def flat_params(params: dict[str, Any], prefix: str = "") -> dict[str, str | int | float | bool]:
    """params.yaml as `block.key` -> value, lists as JSON: what every tracker's params take."""
    out: dict[str, str | int | float | bool] = {}
    for k, v in params.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_params(v, f"{key}."))
        elif isinstance(v, str | int | float | bool):
            out[key] = v
        else:
            out[key] = json.dumps(v)
    return out


def git_commit() -> str:
    done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else "unknown (not a git checkout)"


def read_record(log_dir: Path) -> dict[str, Any]:
    path = log_dir / RECORD
    return json.loads(path.read_text()) if path.is_file() else {}


class RunInfo:
    """What every tracker's run is named and tagged with."""

    def __init__(self, params: dict[str, Any], fingerprint: str) -> None:
        self.params = flat_params(params)
        self.fingerprint = fingerprint
        self.name = f"train-{time.strftime('%Y%m%d-%H%M%S')}-{fingerprint[:8]}"


# --- MLflow ---------------------------------------------------------------------------


def mlflow_client(uri: str | None, root: Path) -> Any:
    from mlflow.tracking import MlflowClient

    # the user's store if they set one, else a file store in the repository
    return MlflowClient(uri or os.environ.get("MLFLOW_TRACKING_URI") or default_uri(root))


def default_uri(root: Path) -> str:
    return (root / "mlflow").resolve().as_uri()


class Mlflow:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.client: Any = None
        self.run_id = ""
        self.last: dict[str, int] = {}  # per key, the last step the run holds

    def open(self, entry: dict | None, start: Start, run: RunInfo) -> dict:
        uri = entry["tracking_uri"] if entry else os.environ.get("MLFLOW_TRACKING_URI")
        self.client = mlflow_client(uri, self.root)
        if entry is not None:  # a resume: the same run, from the steps it already holds
            self.run_id = entry["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            self.last = self.logged_steps()
            return entry
        exp = self.client.get_experiment_by_name(EXPERIMENT)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(EXPERIMENT)
        tags = {"mlflow.source.git.commit": git_commit(), "codexlm.fingerprint": run.fingerprint}
        created = self.client.create_run(exp_id, tags=tags, run_name=run.name)
        self.run_id = created.info.run_id
        from mlflow.entities import Param

        params = [Param(k, str(v)) for k, v in run.params.items()]
        for i in range(0, len(params), 100):  # MLflow's limit per batch
            self.client.log_batch(self.run_id, params=params[i : i + 100])
        return {"tracking_uri": uri, "run_id": self.run_id}

    def logged_steps(self) -> dict[str, int]:
        keys = self.client.get_run(self.run_id).data.metrics
        return {
            k: max(m.step for m in self.client.get_metric_history(self.run_id, k)) for k in keys
        }

    def log(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        fresh = [
            Metric(k, float(v), now, step)
            for k, v in metrics.items()
            if step > self.last.get(k, -1)
        ]
        if fresh:
            self.client.log_batch(self.run_id, metrics=fresh)

    def close(self, finished: bool) -> None:
        if self.client is not None:
            self.client.set_terminated(self.run_id, "FINISHED" if finished else "KILLED")


def mlflow_results(
    entry: dict, root: Path, step: int, metrics: dict, files: Sequence[Path]
) -> None:
    client = mlflow_client(entry["tracking_uri"], root)
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
    if batch:
        client.log_batch(entry["run_id"], metrics=batch)
    for f in files:
        client.log_artifact(entry["run_id"], str(f))


# --- TensorBoard ----------------------------------------------------------------------


class TensorBoard:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.writer: Any = None

    def open(self, entry: dict | None, start: Start, run: RunInfo) -> dict:
        from torch.utils.tensorboard import SummaryWriter

        if entry is not None:  # a resume: the same folder, the crashed run's later steps hidden
            self.writer = SummaryWriter(entry["dir"], purge_step=start.start + 1)
            return entry
        folder = self.root / "tensorboard" / run.name
        self.writer = SummaryWriter(str(folder))
        hparams(self.writer, run.params)
        return {"dir": str(folder)}

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()  # a killed run loses nothing before its checkpoint

    def close(self, finished: bool) -> None:
        if self.writer is not None:
            self.writer.close()


def hparams(writer: Any, params: dict[str, str | int | float | bool]) -> None:
    """The params as TensorBoard's hparams (its HPARAMS tab), in the run's own folder
    (`SummaryWriter.add_hparams` would start another)."""
    from torch.utils.tensorboard.summary import hparams as summaries

    for summary in summaries(params, {}):
        writer.file_writer.add_summary(summary)


def tensorboard_results(entry: dict, step: int, metrics: dict, files: Sequence[Path]) -> None:
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(entry["dir"]) as w:
        for k, v in metrics.items():
            w.add_scalar(k, v, step)
        for f in files:  # no artifacts in TensorBoard: the card as text (its TEXT tab)
            w.add_text(f.name, f.read_text(), step)


# --- W&B ------------------------------------------------------------------------------


def wandb_run(folder: Path, run_id: str, name: str, config: dict | None) -> Any:
    import wandb

    # its staging area, caches and settings beside its runs, not under the home folder
    for var, sub in (("WANDB_DATA_DIR", "data"), ("WANDB_CACHE_DIR", "cache")):
        os.environ.setdefault(var, str((folder / sub).resolve()))
    os.environ.setdefault("WANDB_CONFIG_DIR", str((folder / "config").resolve()))
    settings = wandb.Settings(console="off", silent=True, x_disable_stats=True)
    return wandb.init(
        project=EXPERIMENT,
        id=run_id,
        name=name,
        dir=str(folder),
        config=config,
        resume="allow",
        settings=settings,
    )


class Wandb:
    def __init__(self, root: Path) -> None:
        self.folder = root / "wandb"
        self.run: Any = None

    def open(self, entry: dict | None, start: Start, run: RunInfo) -> dict:
        if entry is None:
            entry = {"dir": str(self.folder), "id": uuid.uuid4().hex[:12], "name": run.name}
            config = {**run.params, "fingerprint": run.fingerprint, "git_commit": git_commit()}
        else:
            config = None  # a resume: its config is the first process's
        self.run = wandb_run(Path(entry["dir"]), entry["id"], entry["name"], config)
        return entry

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(dict(metrics), step=step)

    def close(self, finished: bool) -> None:
        if self.run is not None:
            self.run.finish(exit_code=0 if finished else 1)


def wandb_results(entry: dict, metrics: dict, files: Sequence[Path]) -> None:
    import wandb

    run = wandb_run(Path(entry["dir"]), entry["id"], entry["name"], None)
    run.summary.update(metrics)
    if files:
        card = wandb.Artifact(f"{entry['name']}-card", type="model-card")
        for f in files:
            card.add_file(str(f))
        run.log_artifact(card)
    run.finish()


# --- the callback and the later stages ------------------------------------------------


def dvclive_history(log_dir: Path, last: int) -> list[tuple[int, dict[str, float]]]:
    """The steps up to `last` of the DVCLive log (restored from the checkpoint a run resumes
    from), in order: what a tracker added on resume gets first, so its run starts at step 1."""
    steps: dict[int, dict[str, float]] = {}
    plots = log_dir / "plots" / "metrics"
    for tsv in sorted(plots.rglob("*.tsv")):
        key = tsv.relative_to(plots).with_suffix("").as_posix()
        with tsv.open(newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f, delimiter="\t"):
                if int(row["step"]) <= last:
                    steps.setdefault(int(row["step"]), {})[key] = float(row[key.split("/")[-1]])
    return sorted(steps.items())


def opening_errors(name: str) -> tuple[type[BaseException], ...]:
    """What a tracker raises when its store or service cannot be used (besides OSError)."""
    if name == "mlflow":
        from mlflow.exceptions import MlflowException

        return (OSError, MlflowException)
    if name == "wandb":
        from wandb.errors import Error

        return (OSError, Error)
    return (OSError,)


KINDS = {"mlflow": Mlflow, "tensorboard": TensorBoard, "wandb": Wandb}


class Trackers:
    """The trackers of `train.loggers` (DVCLive aside, codexlm.live) as one callback. Put it
    after the LiveLogger: a fresh DVCLive folder is cleared before the record is written."""

    def __init__(
        self, names: Sequence[str], root: Path, log_dir: Path, params: dict, fingerprint: str
    ) -> None:
        self.trackers = {n: KINDS[n](root) for n in names if n in KINDS}
        self.log_dir, self.run = log_dir, RunInfo(params, fingerprint)
        self.finished = False

    def on_start(self, info: Start) -> None:
        offline()
        before = read_record(self.log_dir) if info.resumed else {}
        record: dict[str, Any] = {"steps": info.steps}
        for name, t in self.trackers.items():
            try:
                record[name] = t.open(before.get(name), info, self.run)
                if name not in before and info.start > 0:  # added to a run in progress
                    for step, metrics in dvclive_history(self.log_dir, info.start):
                        t.log(step, metrics)
            except opening_errors(name) as e:  # a store or service of the user's that fails
                raise MachineFault(
                    f"train.loggers: {name} could not open its run ({type(e).__name__}: "
                    f"{str(e).splitlines()[0] if str(e) else e!r}); training has not started"
                ) from None
        write_json(self.log_dir / RECORD, record)

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        for t in self.trackers.values():
            t.log(step, metrics)

    def on_validate(self, step: int, loss: float) -> None:
        self.on_log(step, {"val/loss": loss})

    def on_end(self, summary: dict) -> None:
        self.finished = True

    def on_close(self) -> None:
        for t in self.trackers.values():
            t.close(self.finished)


def log_results(
    log_dir: Path, root: Path, metrics: dict[str, float], files: Sequence[Path] = ()
) -> list[str]:
    """A later stage's metrics (and files: the model card) into the runs the train stage
    recorded in `log_dir`, at its last step; returns the trackers written to."""
    record = read_record(log_dir)
    names = [n for n in TRACKERS if n in record]
    check(names, root)
    step = record.get("steps", 0)
    for name in names:
        try:
            if name == "mlflow":
                mlflow_results(record[name], root, step, metrics, files)
            elif name == "tensorboard":
                tensorboard_results(record[name], step, metrics, files)
            else:
                wandb_results(record[name], metrics, files)
        except opening_errors(name) as e:  # the run was deleted, the store moved, ...
            raise MachineFault(
                f"{name}: could not log to the run {log_dir / RECORD} names "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else e!r})"
            ) from None
    return names
