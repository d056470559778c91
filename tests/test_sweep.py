import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from safebasin import report
from safebasin.errors import UserError
from safebasin.store import Store
from safebasin.sweep import load_sweep_config, parse_grid_flag, run_sweep, trials


def test_grid_flags_and_unknown_keys(tmp_path):
    assert parse_grid_flag("lr=1e-5,5e-5") == ("lr", [1e-5, 5e-5])
    assert parse_grid_flag("ema_beta=null,0.99") == ("ema_beta", [None, 0.99])
    with pytest.raises(UserError, match="expected KEY=V1,V2"):
        parse_grid_flag("lr")
    with pytest.raises(UserError, match="unknown config key 'learning_rate'"):
        load_sweep_config(None, ["learning_rate=1e-5"], {}, str(tmp_path))
    y = tmp_path / "s.yaml"
    y.write_text("sweep:\n  grid:\n    lr: [1.0e-5, 2.0e-5]\n    batch_size: [2, 4]\nbase:\n  steps: 3\n")
    cfg = load_sweep_config(str(y), ["ema_beta=0,0.9"], {"model": "m"}, str(tmp_path / "out"))
    ts = trials(cfg)
    assert len(ts) == 8 and len({h for h, _ in ts}) == 8
    assert all(t.steps == 3 and t.model == "m" for _, t in ts)
    assert trials(cfg)[0][0] == ts[0][0]  # stable hashes
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid:\n  lr: [0, 1e-5]\n")
    with pytest.raises(UserError, match=r"sweep trial \{'lr': 0\}.*lr: Input should be greater than 0"):
        trials(load_sweep_config(str(bad), [], {}, str(tmp_path)))


def _sweep_yaml(tmp_path, tiny_model_dir, data_dir):
    y = tmp_path / "sweep.yaml"
    y.write_text(json.dumps({
        "base": {"model": str(tiny_model_dir), "data": "dolly", "data_dir": str(data_dir), "steps": 1, "batch_size": 2,
                 "max_examples": 8, "heldout_size": 4, "max_seq_len": 160},
        "grid": {"lr": [1e-4, 1e-2], "ema_beta": [None, 0.9]},
        "eval": {"benches": ["advbench", "xstest"], "limit": 3, "max_new_tokens": 4, "rouge_limit": 2},
        "output_dir": str(tmp_path / "sweep")}))
    return y


@pytest.fixture(scope="module")
def finished_sweep(tiny_model_dir, data_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sw")
    cfg = load_sweep_config(str(_sweep_yaml(tmp, tiny_model_dir, data_dir)), [], {}, None)
    counts = run_sweep(cfg, show_progress=False)
    return cfg, counts


def test_sweep_records_every_trial_and_the_baseline(finished_sweep):
    cfg, counts = finished_sweep
    assert counts == {"skipped": 0, "done": 5, "failed": 0}
    store = Store(f"{cfg.output_dir}/runs.db")
    runs = store.runs()
    assert [r["kind"] for r in runs].count("baseline") == 1 and len(runs) == 5
    for r in runs:
        names = {(m["model"], m["benchmark"], m["name"]) for m in store.metrics(r["id"])}
        assert ("model", "advbench", "harmful_rate") in names and ("model", "utility", "heldout_loss") in names
        if r["kind"] == "trial" and r["config"]["train"]["ema_beta"] is not None:
            assert ("raw", "advbench", "harmful_rate") in names
    again = run_sweep(cfg, show_progress=False)
    assert again == {"skipped": 5, "done": 0, "failed": 0}


def test_report_on_a_tiny_sweep(finished_sweep):
    cfg, _ = finished_sweep
    summary = report.sweep_report(cfg.output_dir, max_harm_increase=1.0)
    out = cfg.output_dir
    for name in ("pareto.png", "report.html", "report.md", "report.json", "heatmap_beta_None.png", "heatmap_beta_0.9.png"):
        assert os.path.isfile(f"{out}/{name}"), name
    assert summary["trials"] == 4 and summary["baseline"] is not None
    rec = summary["recommendation"]
    assert rec is not None and "Recommended:" in summary["markdown"]
    # with a margin of 1.0 every trial is eligible: the pick is the best held-out loss
    best = min(summary["pareto"], key=lambda p: p["heldout_loss"])
    assert rec["heldout_loss"] == best["heldout_loss"]
    strict = report.sweep_report(cfg.output_dir, max_harm_increase=-1.0)
    assert strict["recommendation"] is None and "No trial" in strict["markdown"]


def test_sweep_resume_after_kill_reruns_nothing_finished(tiny_model_dir, data_dir, tmp_path):
    y = _sweep_yaml(tmp_path, tiny_model_dir, data_dir)
    proc = subprocess.Popen([sys.executable, "-m", "safebasin.cli", "sweep", "--config", str(y)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = tmp_path / "sweep" / "runs.db"
    deadline = time.time() + 300
    done = []
    while time.time() < deadline and proc.poll() is None:
        if db.exists():
            done = Store(db).runs("done")
            if len(done) >= 2:
                break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 2 <= len(done) < 5, "the sweep finished before it could be killed"
    store = Store(db)
    before = {r["id"]: r["finished_at"] for r in store.runs("done")}
    counts = run_sweep(load_sweep_config(str(y), [], {}, None), show_progress=False)
    assert counts["skipped"] == len(before) and counts["done"] == 5 - len(before)
    after = {r["id"]: r["finished_at"] for r in Store(db).runs("done")}
    assert len(after) == 5 and all(after[i] == t for i, t in before.items())


def test_pareto_and_recommendation_on_hand_made_points():
    pts = [{"label": "a", "harmful_rate": 0.0, "heldout_loss": 2.0}, {"label": "b", "harmful_rate": 0.1, "heldout_loss": 1.5},
           {"label": "c", "harmful_rate": 0.1, "heldout_loss": 1.8}, {"label": "d", "harmful_rate": 0.5, "heldout_loss": 1.0},
           {"label": "e", "harmful_rate": 0.6, "heldout_loss": 1.0}, {"label": "f", "harmful_rate": 0.0, "heldout_loss": 2.0}]
    front = report.pareto(pts, "heldout_loss", higher_is_better=False)
    assert [p["label"] for p in front] == ["a", "f", "b", "d"]
    assert report.recommend(pts, 0.0, 0.02, "heldout_loss", False)["label"] == "a"
    assert report.recommend(pts, 0.05, 0.05, "heldout_loss", False)["label"] == "b"
    assert report.recommend(pts, 0.0, 1.0, "heldout_loss", False)["label"] == "d"
    rouge = [{"label": "x", "harmful_rate": 0.2, "rougeL": 0.3}, {"label": "y", "harmful_rate": 0.1, "rougeL": 0.2},
             {"label": "z", "harmful_rate": 0.3, "rougeL": 0.25}]
    assert [p["label"] for p in report.pareto(rouge, "rougeL", True)] == ["y", "x"]


def test_explicit_trials_list_crossed_with_the_grid(tmp_path):
    y = tmp_path / "m.yaml"
    y.write_text("base: {steps: 2}\ntrials:\n  - {method: sft}\n  - {method: ema, ema_beta: 0.9}\n  - {method: lora}\ngrid:\n  lr: [1.0e-5, 1.0e-4]\n")
    ts = [t for _, t in trials(load_sweep_config(str(y), [], {}, str(tmp_path)))]
    assert [(t.method, t.lr, t.ema_beta, t.lora_r) for t in ts] == [
        ("sft", 1e-5, None, 0), ("sft", 1e-4, None, 0), ("ema", 1e-5, 0.9, 0), ("ema", 1e-4, 0.9, 0),
        ("lora", 1e-5, None, 8), ("lora", 1e-4, None, 8)]
    bad = tmp_path / "bad.yaml"
    bad.write_text("trials:\n  - {methd: sft}\n")
    with pytest.raises(UserError, match="unknown config key 'methd'"):
        load_sweep_config(str(bad), [], {}, str(tmp_path))


def test_runs_and_report_cli(finished_sweep):
    from conftest import run_cli

    cfg, _ = finished_sweep
    ls = run_cli("runs", "ls", cfg.output_dir)
    assert ls.returncode == 0 and ls.stdout.count("done") == 5 and "baseline" in ls.stdout
    show = run_cli("runs", "show", cfg.output_dir, "2")
    assert show.returncode == 0
    shown = json.loads(show.stdout)
    assert shown["status"] == "done" and any(m["name"] == "harmful_rate" for m in shown["metrics"])
    assert any(m["benchmark"] == "train" and m["name"] == "tokens" and m["value"] > 0 for m in shown["metrics"])
    rep = run_cli("report", cfg.output_dir, "--max-harm-increase", "1")
    assert rep.returncode == 0 and "Recommended" in rep.stdout + rep.stderr
    missing = run_cli("runs", "ls", cfg.output_dir + "-nope")
    assert missing.returncode == 2 and "not a sweep dir" in missing.stderr


def test_report_shows_over_refusal_next_to_harm(finished_sweep):
    cfg, _ = finished_sweep
    summary = report.sweep_report(cfg.output_dir, max_harm_increase=1.0)
    assert summary["bench"] == "advbench"  # the benign bench is not taken as the harm bench
    assert all(p["over_refusal"] is not None for p in summary["pareto"])
    assert "| over-refusal |" in summary["markdown"]


def test_sweep_report_embeds_basin_plots(finished_sweep):
    from safebasin.basin import basin

    cfg, _ = finished_sweep
    store = Store(f"{cfg.output_dir}/runs.db")
    run = next(r for r in store.runs("done") if r["kind"] == "trial" and r["config"]["train"]["ema_beta"] == 0.9)
    basin(run["run_dir"], probe_n=3, max_new_tokens=2, alphas=(0.0, 1.0), show_progress=False)
    report.sweep_report(cfg.output_dir, max_harm_increase=1.0)
    page = open(f"{cfg.output_dir}/report.html").read()
    assert "<h2>basin: " in page
