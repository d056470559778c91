"""Experiment trackers for --report-to (TensorBoard, MLflow with a local file store, W&B offline), through
Accelerate's tracker API: one module so that `train`, `eval` and `sweep` log the same way."""

import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate.tracking import MLflowTracker, TensorBoardTracker, WandBTracker, on_main_process

from .config import TrainConfig
from .ema import local_shard
from .errors import UserError

TRACKERS_DIR = "trackers"


@dataclass
class TrackerRun:
    """Where a run's tracker logs go and its name there: <run>/trackers by default; a sweep's trials share
    <sweep>/trackers (one MLflow experiment, one TensorBoard dir per trial), tagged with their swept settings."""
    dir: Path
    name: str
    tags: dict = field(default_factory=dict)


def make_trackers(report_to: str, where: TrackerRun, resume: bool = False, tags: dict | None = None) -> list:
    """Accelerate trackers for `report_to`, all writing under where.dir and none to a server: TensorBoard event
    files, an MLflow file store, a W&B offline run. Built before anything is written: a tracker that is not
    installed is a one-line error. `resume`: MLflow continues the latest run of this name (a resumed run, or an
    eval adding its metrics to the run it trained)."""
    names = [] if report_to == "none" else report_to.split(",")
    tags = {"safebasin.run": where.name, **where.tags, **(tags or {})}
    trackers = []
    for name in names:
        package, available = TRACKER_PACKAGES[name]
        if not available():
            raise UserError(f"--report-to {name} needs {package}, which is not installed: pip install {package}")
        if name == "tensorboard":
            trackers.append(TensorBoardTracker(where.name, where.dir / "tensorboard"))
        elif name == "mlflow":
            trackers.append(LocalMLflowTracker(where.dir / "mlflow", where.name, tags, resume))
        else:
            trackers.append(OfflineWandBTracker(where.dir, where.name, tags))
    return trackers


def _installed(module: str):
    return lambda: importlib.util.find_spec(module) is not None


# tracker -> (what to pip install, whether it is installed); none is a dependency of safebasin
TRACKER_PACKAGES = {"tensorboard": ("tensorboard", _installed("tensorboard")), "mlflow": ("mlflow-skinny", _installed("mlflow")),
                    "wandb": ("wandb", _installed("wandb"))}


class LocalMLflowTracker(MLflowTracker):
    """MLflow on a file store (a `file:` URI) in the run dir: no server, `mlflow ui --backend-store-uri` reads it."""

    def __init__(self, store: Path, name: str, tags: dict, resume: bool):
        super().__init__(experiment_name="safebasin", run_name=name, tags={k: str(v) for k, v in tags.items()})
        self.uri, self.resume = Path(store).resolve().as_uri(), resume

    @on_main_process
    def start(self):
        import mlflow

        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps its file store behind this opt-in
        mlflow.set_tracking_uri(self.uri)
        client = mlflow.MlflowClient(self.uri)
        experiment = client.get_experiment_by_name(self.experiment_name)
        if experiment is None:  # made here, untagged: the run tags belong to the runs
            client.create_experiment(self.experiment_name)
        elif self.resume and self.run_id is None:
            runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"])
            self.run_id = next((r.info.run_id for r in runs if r.data.tags.get("safebasin.run") == self.run_name), None)
        super().start()


class OfflineWandBTracker(WandBTracker):
    """W&B in offline mode only, under <trackers>/wandb (`wandb sync` uploads it later, if you choose)."""

    def __init__(self, root: Path, name: str, tags: dict):
        super().__init__("safebasin", dir=str(root), mode="offline", name=name,
                         tags=[f"{k}={v}"[:64] for k, v in tags.items()])
        self.root = root

    @on_main_process
    def start(self):
        Path(self.root).mkdir(parents=True, exist_ok=True)
        super().start()


def tracker_config(cfg: TrainConfig) -> dict:
    """The validated config as hyperparameters: scalars as they are, lists and dicts as JSON."""
    return {k: v if v is None or isinstance(v, (bool, int, float, str)) else json.dumps(v)
            for k, v in cfg.model_dump(mode="json").items()}


def tracker_values(row: dict, watch: dict, distances: dict) -> dict:
    """A log line as tracker scalars: train/ (loss, lr, grad norm, tokens/s, method terms, ‖θ−θ0‖, ‖θ̄−θ0‖), monitor/."""
    values = {f"train/{k}": v for k, v in row.items() if k != "step"}
    if row.get("seconds"):
        values["train/tokens_per_s"] = row["tokens"] / row["seconds"]
    values |= {f"train/{k}": v for k, v in distances.items()}
    values |= {f"monitor/{k}": v for k, v in watch.items() if isinstance(v, (int, float)) and not k.startswith("dist_")}
    return values


@torch.no_grad()
def distance(tensors: list, theta0: list, accelerator, is_sharded: bool) -> float:
    """‖θ − θ0‖ over the trainable weights, as the monitor measures it; under sharding each rank sums its own shard."""
    sq = 0.0
    for t, t0 in zip(tensors, theta0):
        sq += float(torch.linalg.vector_norm(local_shard(t).detach().to("cpu", torch.float32) - t0.float()) ** 2)
    if is_sharded:
        sq = float(accelerator.reduce(torch.tensor(sq, device=accelerator.device), "sum"))
    return sq ** 0.5


def report_once(trackers: list, values: dict, step: int) -> None:
    """One set of scalars (an eval's metrics) through the same trackers, outside a training run."""
    for t in trackers:
        t.start()
        try:
            t.log(values, step=step)
        finally:
            t.finish()
