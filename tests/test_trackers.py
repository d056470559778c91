"""--report-to: what the trackers hold, read back with their own readers (TensorBoard's EventAccumulator, MLflow's
client), checked against train_log.jsonl, the saved weights and eval.json; and that logging stays off by default."""

import json
import sys
import types
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import load_state
from safebasin import trackers as train_module
from safebasin.cli import app
from safebasin.config import TrainConfig
from safebasin.sweep import load_sweep_config, run_sweep, trials
from safebasin.train import train

TRAIN_TAGS = {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s", "train/dist_live", "train/dist_ema",
              "train/tokens", "train/response_tokens"}


def _cfg(tiny_model_dir, data_dir, out, **kw) -> TrainConfig:
    base = dict(model=str(tiny_model_dir), data="dolly", data_dir=str(data_dir), steps=3, batch_size=2, max_examples=8,
                heldout_size=4, max_seq_len=96, lr=5e-3, ema_beta=0.9, output_dir=str(out))
    return TrainConfig(**(base | kw))


def _log(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]


def _norm_from(a: dict, b: dict) -> float:
    return sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in a) ** 0.5


def _scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _mlflow(store: Path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store.resolve().as_uri())
    experiment = client.get_experiment_by_name("safebasin")
    return client, client.search_runs([experiment.experiment_id])


def test_tensorboard_holds_every_logged_step_and_the_eval(tiny_model_dir, data_dir, tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    args = ["train", "--model", tiny_model_dir, "--data", "dolly", "--data-dir", data_dir, "--steps", 3, "--batch-size", 2,
            "--max-examples", 8, "--heldout-size", 4, "--max-seq-len", 96, "--lr", 5e-3, "--ema-beta", 0.9,
            "--output-dir", out, "--report-to", "tensorboard"]
    result = CliRunner().invoke(app, list(map(str, args)))
    assert result.exit_code == 0, result.output
    scalars = _scalars(out / "trackers" / "tensorboard" / "run")
    assert TRAIN_TAGS <= set(scalars)
    log = _log(out)
    for tag in ("loss", "lr", "grad_norm", "tokens"):
        assert [s for s, _ in scalars[f"train/{tag}"]] == [1, 2, 3]
        assert [v for _, v in scalars[f"train/{tag}"]] == pytest.approx([row[tag] for row in log], rel=1e-6)
    assert [v for _, v in scalars["train/tokens_per_s"]] == pytest.approx([r["tokens"] / r["seconds"] for r in log], rel=1e-5)
    # the distances at the last step are those of the saved weights: raw/ holds θ, model/ holds θ̄
    theta0, raw, kept = load_state(tiny_model_dir), load_state(out / "raw"), load_state(out / "model")
    assert scalars["train/dist_live"][-1] == (3, pytest.approx(_norm_from(raw, theta0), rel=1e-5))
    assert scalars["train/dist_ema"][-1] == (3, pytest.approx(_norm_from(kept, theta0), rel=1e-5))
    assert 0 < scalars["train/dist_ema"][-1][1] < scalars["train/dist_live"][-1][1]
    hparams = list((out / "trackers" / "tensorboard" / "run").glob("*/hparams.yml"))
    assert len(hparams) == 1 and "lr: 0.005" in hparams[0].read_text()

    # eval adds its metrics to the same TensorBoard run, at the run's last step
    result = CliRunner().invoke(app, ["eval", str(out), "--data-dir", str(data_dir), "--limit", "2", "--max-new-tokens", "2",
                                      "--report-to", "tensorboard"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "eval" / "eval.json").read_text())["models"]
    scalars = _scalars(out / "trackers" / "tensorboard" / "run")
    for label in ("model", "raw"):
        assert scalars[f"eval/{label}/advbench/harmful_rate"] == [
            (3, pytest.approx(metrics[label]["benchmarks"]["advbench"]["harmful_rate"]))]
        assert scalars[f"eval/{label}/advbench/n"] == [(3, 2.0)]
    assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3]  # the training curve is untouched


def test_mlflow_file_store_holds_the_run_its_probes_and_its_eval(tiny_model_dir, data_dir, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from safebasin.evaluate import evaluate

    cfg = _cfg(tiny_model_dir, data_dir, tmp_path / "run", steps=4, log_every=2, monitor=1, monitor_probe=2,
               monitor_max_new_tokens=2, monitor_budget=0, report_to="mlflow")
    out = train(cfg, show_progress=False)
    client, runs = _mlflow(out / "trackers" / "mlflow", monkeypatch)
    assert len(runs) == 1 and runs[0].data.tags["safebasin.run"] == "run" and runs[0].info.status == "FINISHED"
    run_id, log = runs[0].info.run_id, _log(out)

    def history(name):
        return sorted((m.step, m.value) for m in client.get_metric_history(run_id, name))

    assert [s for s, _ in history("train/loss")] == [2, 4]  # log_every 2
    assert [v for _, v in history("train/loss")] == pytest.approx([r["loss"] for r in log])
    assert [v for _, v in history("train/grad_norm")] == pytest.approx([r["grad_norm"] for r in log])
    assert history("train/dist_ema")[0] == (0, 0.0) and [s for s, _ in history("train/dist_ema")] == [0, 2, 4]  # 0: θ0
    # the monitor's probes: the start (step 0) and the planned one at the end, as in train_log.jsonl
    summary = json.loads((out / "train_summary.json").read_text())
    assert history("monitor/probe_harmful_kept") == [(0, pytest.approx(summary["monitor_start"]["probe_harmful_kept"])),
                                                     (4, pytest.approx(log[-1]["probe_harmful_kept"]))]
    assert history("train/dist_live")[-1][1] == pytest.approx(log[-1]["dist_live"])  # the probe's own measurement
    params = runs[0].data.params
    assert params["lr"] == "0.005" and params["ema_beta"] == "0.9" and params["method"] == "sft"

    # an eval of the run dir joins the training's MLflow run instead of starting another
    results = evaluate(str(out), ["advbench"], out / "eval", limit=2, max_new_tokens=2, data_dir=str(data_dir),
                       show_progress=False, report_to="mlflow")
    _, runs = _mlflow(out / "trackers" / "mlflow", monkeypatch)
    assert len(runs) == 1 and runs[0].info.run_id == run_id
    rate = results["models"]["model"]["benchmarks"]["advbench"]["harmful_rate"]
    assert history("eval/model/advbench/harmful_rate") == [(4, pytest.approx(rate))]
    assert runs[0].data.tags["safebasin.eval.judge"] == "keyword:gcg" and runs[0].data.tags["safebasin.eval.decoding"] == "greedy"


def test_sweep_trials_report_to_one_store_tagged_with_their_config(tiny_model_dir, data_dir, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    base = {"model": str(tiny_model_dir), "data": "dolly", "data_dir": str(data_dir), "steps": 1, "batch_size": 2,
            "max_examples": 8, "heldout_size": 4, "max_seq_len": 96}
    y = tmp_path / "sweep.yaml"
    y.write_text(json.dumps({"base": base, "grid": {"lr": [1e-4, 1e-2]}, "baseline": False,
                             "eval": {"benches": ["advbench"], "limit": 1, "max_new_tokens": 1, "utility": False}}))
    cfg = load_sweep_config(str(y), [], {"report_to": "mlflow"}, str(tmp_path / "sweep"))
    plain = load_sweep_config(str(y), [], {}, str(tmp_path / "sweep"))
    assert [h for h, _ in trials(cfg)] == [h for h, _ in trials(plain)]  # where a trial reports is not what it is
    assert run_sweep(cfg, show_progress=False)["done"] == 2
    client, runs = _mlflow(tmp_path / "sweep" / "trackers" / "mlflow", monkeypatch)
    by_hash = {h: tc for h, tc in trials(cfg)}
    assert sorted(r.data.tags["safebasin.run"] for r in runs) == sorted(by_hash)
    for r in runs:
        tc = by_hash[r.data.tags["safebasin.run"]]
        assert r.data.tags["sweep.lr"] == json.dumps(tc.lr) and r.data.tags["safebasin.kind"] == "trial"
        assert r.data.tags["safebasin.sweep"] == "sweep" and float(r.data.params["lr"]) == tc.lr
        assert set(r.data.metrics) >= {"train/loss", "eval/model/advbench/harmful_rate"}
        evaluated = json.loads((Path(tc.output_dir) / "eval" / "eval.json").read_text())
        assert r.data.metrics["eval/model/advbench/harmful_rate"] == evaluated["models"]["model"]["benchmarks"]["advbench"]["harmful_rate"]
    assert not any((Path(tc.output_dir) / "trackers").exists() for tc in by_hash.values())  # all in the sweep's store


def test_wandb_runs_offline_under_the_run_dir(tiny_model_dir, data_dir, tmp_path, monkeypatch):
    """A stand-in wandb module records what Accelerate's W&B tracker asks of it: offline mode, the run dir, the steps."""
    calls = {"init": [], "log": []}

    class FakeRun:
        def log(self, values, step=None, **kw):
            calls["log"].append((step, values))

        def finish(self):
            calls["finished"] = True

    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: calls["init"].append(kw) or FakeRun()
    fake.config = types.SimpleNamespace(update=lambda values, allow_val_change=False: calls.setdefault("config", values))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setitem(train_module.TRACKER_PACKAGES, "wandb", ("wandb", lambda: True))
    out = train(_cfg(tiny_model_dir, data_dir, tmp_path / "run", steps=2, report_to="wandb"), show_progress=False)
    (init,) = calls["init"]
    assert init["mode"] == "offline" and Path(init["dir"]) == out / "trackers" and init["project"] == "safebasin"
    assert [s for s, _ in calls["log"]] == [1, 2] and calls["finished"]
    assert [v["train/loss"] for _, v in calls["log"]] == pytest.approx([r["loss"] for r in _log(out)])
    assert calls["config"]["lr"] == 5e-3


def test_off_by_default_and_a_tracker_change_resumes_the_same_run(tiny_model_dir, data_dir, tmp_path):
    cfg = _cfg(tiny_model_dir, data_dir, tmp_path / "run", steps=1)
    assert cfg.report_to == "none"
    out = train(cfg, show_progress=False)
    assert not (out / "trackers").exists() and "report_to: none" in (out / "config.yaml").read_text()
    before = (out / "model" / "model.safetensors").stat().st_mtime_ns
    # the same run with trackers asked for: finished already, not "a different run's config.yaml"
    assert train(_cfg(tiny_model_dir, data_dir, out, steps=1, report_to="tensorboard"), show_progress=False) == out
    assert (out / "model" / "model.safetensors").stat().st_mtime_ns == before and not (out / "trackers").exists()


def test_distance_matches_the_definition():
    theta0 = [torch.zeros(3), torch.ones(2, 2)]
    now = [torch.tensor([3.0, 0.0, 0.0]), torch.ones(2, 2) + torch.tensor([[4.0, 0.0], [0.0, 0.0]])]
    assert train_module.distance(now, theta0, None, False) == pytest.approx(5.0)
