import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from safebasin.safety import sweep_analysis
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
    assert counts == {"skipped": 0, "done": 5, "failed": 0, "elsewhere": 0}
    store = Store(f"{cfg.output_dir}/runs.db")
    runs = store.runs()
    assert [r["kind"] for r in runs].count("baseline") == 1 and len(runs) == 5
    for r in runs:
        names = {(m["model"], m["benchmark"], m["name"]) for m in store.metrics(r["id"])}
        assert ("model", "advbench", "harmful_rate") in names and ("model", "utility", "heldout_loss") in names
        if r["kind"] == "trial" and r["config"]["train"]["ema_beta"] is not None:
            assert ("raw", "advbench", "harmful_rate") in names
    again = run_sweep(cfg, show_progress=False)
    assert again == {"skipped": 5, "done": 0, "failed": 0, "elsewhere": 0}


def test_report_on_a_tiny_sweep(finished_sweep):
    cfg, _ = finished_sweep
    summary = sweep_analysis.sweep_report(cfg.output_dir, max_harm_increase=1.0)
    out = cfg.output_dir
    for name in ("pareto.png", "report.html", "report.md", "report.json", "heatmap_beta_None.png", "heatmap_beta_0.9.png",
                 "heatmap_gain_beta_None.png", "heatmap_gain_beta_0.9.png"):
        assert os.path.isfile(f"{out}/{name}"), name
    assert summary["trials"] == 4 + 2 and summary["baseline"] is not None  # + each EMA run's raw/ weights: the no-EMA point
    store = Store(os.path.join(out, "runs.db"))
    points, _, _ = sweep_analysis.sweep_points(store)
    store.close()
    raw = [p for p in points if p["variant"] == "raw"]
    plain = {p["lr"]: p for p in points if p["variant"] == "model" and p["ema_beta"] is None}
    assert len(raw) == 2 and all(p["ema_beta"] is None and p["run_dir"].endswith("raw") for p in raw)
    for p in raw:  # EMA never changes the trajectory: raw/ of the EMA run is the run without EMA
        assert p["harmful_rate"] == plain[p["lr"]]["harmful_rate"]
        assert p["heldout_loss"] == pytest.approx(plain[p["lr"]]["heldout_loss"], abs=1e-5)
    rec = summary["recommendation"]
    assert rec is not None and "Recommended:" in summary["markdown"]
    # with a margin of 1.0 every trial is eligible: the pick is the best held-out loss
    best = min(summary["pareto"], key=lambda p: p["heldout_loss"])
    assert rec["heldout_loss"] == best["heldout_loss"]
    strict = sweep_analysis.sweep_report(cfg.output_dir, max_harm_increase=-1.0)
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
    front = sweep_analysis.pareto(pts, "heldout_loss", higher_is_better=False)
    assert [p["label"] for p in front] == ["a", "f", "b", "d"]
    assert sweep_analysis.recommend(pts, 0.0, 0.02, "heldout_loss", False)["label"] == "a"
    assert sweep_analysis.recommend(pts, 0.05, 0.05, "heldout_loss", False)["label"] == "b"
    assert sweep_analysis.recommend(pts, 0.0, 1.0, "heldout_loss", False)["label"] == "d"
    rouge = [{"label": "x", "harmful_rate": 0.2, "rougeL": 0.3}, {"label": "y", "harmful_rate": 0.1, "rougeL": 0.2},
             {"label": "z", "harmful_rate": 0.3, "rougeL": 0.25}]
    assert [p["label"] for p in sweep_analysis.pareto(rouge, "rougeL", True)] == ["y", "x"]


def test_budget_rule_on_hand_made_points():
    """lr x steps / batch: the first budget over the limit draws the line; safe points above it are exceptions."""
    def pt(lr, steps, batch, harm):
        return {"lr": lr, "steps": steps, "effective_batch": batch, "harmful_rate": harm, "label": f"{lr} {steps} {batch}"}
    pts = [pt(1e-5, 6, 8, 0.0), pt(1e-4, 6, 8, 0.0), pt(1e-4, 24, 4, 0.5), pt(3e-4, 6, 2, 0.9), pt(1e-4, 12, 8, 0.0)]
    rule = sweep_analysis.budget_rule(pts, 0.0, 0.02, "lr x steps / batch")  # budgets 7.5e-6, 7.5e-5, 6e-4, 9e-4, 1.5e-4
    assert rule["breaks_at"] == pytest.approx(6e-4) and rule["largest_safe_budget"] == pytest.approx(1.5e-4)
    assert rule["agree"] == 1.0 and rule["exceptions"] == []
    pts.append(pt(3e-4, 24, 2, 0.0))  # a safe trial past the line: the rule names it
    rule = sweep_analysis.budget_rule(pts, 0.0, 0.02, "lr x steps / batch")
    assert rule["agree"] == pytest.approx(5 / 6) and rule["exceptions"] == ["0.0003 24 2"]
    assert sweep_analysis.budget_rule(pts[:1], 0.0, 0.02) is None  # one budget draws no line
    assert sweep_analysis.budget_rule([pt(1e-5, 6, 8, 0.0), pt(1e-5, 12, 8, 0.0)], 0.0, 0.02)["breaks_at"] is None
    # lr x steps (6e-5, 6e-4, 2.4e-3, 1.8e-3, 1.2e-3, 7.2e-3) breaks at 1.8e-3, one exception; lr x steps x batch
    # (4.8e-4, 4.8e-3, 9.6e-3, 3.6e-3, 9.6e-3, 1.44e-2) breaks at 3.6e-3 with three: the candidates come best-fitting
    # first, so the reader sees which form of the knobs predicts safety
    ranked = sweep_analysis.budget_rules(pts, 0.0, 0.02)
    assert [r["budget"] for r in ranked] == ["lr x steps", "lr x steps / batch", "lr x steps x batch"]
    assert [r["agree"] for r in ranked] == pytest.approx([5 / 6, 5 / 6, 3 / 6])
    assert ranked[0]["breaks_at"] == pytest.approx(1.8e-3) and ranked[2]["breaks_at"] == pytest.approx(3.6e-3)


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
    summary = sweep_analysis.sweep_report(cfg.output_dir, max_harm_increase=1.0)
    assert summary["bench"] == "advbench"  # the benign bench is not taken as the harm bench
    assert all(p["over_refusal"] is not None for p in summary["pareto"])
    assert "| over-refusal |" in summary["markdown"]


def test_sweep_report_embeds_basin_plots(finished_sweep):
    from safebasin.safety.basin import basin

    cfg, _ = finished_sweep
    store = Store(f"{cfg.output_dir}/runs.db")
    run = next(r for r in store.runs("done") if r["kind"] == "trial" and r["config"]["train"]["ema_beta"] == 0.9)
    basin(run["run_dir"], probe_n=3, max_new_tokens=2, alphas=(0.0, 1.0), show_progress=False)
    sweep_analysis.sweep_report(cfg.output_dir, max_harm_increase=1.0)
    page = open(f"{cfg.output_dir}/report.html").read()
    assert "<h2>basin: " in page


def _step1_lines(run_dir) -> int:
    log = os.path.join(run_dir, "train_log.jsonl")
    return sum(json.loads(line)["step"] == 1 for line in open(log) if line.strip())


def test_two_sweeps_on_one_dir_split_the_trials(tiny_model_dir, data_dir, tmp_path):
    """Two workers on one dir (two terminals, two cluster jobs) claim runs: each trial is trained once."""
    y = _sweep_yaml(tmp_path, tiny_model_dir, data_dir)
    cmd = [sys.executable, "-m", "safebasin.cli", "sweep", "--config", str(y)]
    env = {**os.environ, "COLUMNS": "200"}
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-2000:] for _, e in outs]
    ran = [int(re.search(r"^sweep .*: (\d+) run, \d+ already finished", err, re.M).group(1)) for _, err in outs]
    assert sum(ran) == 5, ran  # 4 trials + the baseline, between them; without claims each ran all 5
    store = Store(tmp_path / "sweep" / "runs.db")
    runs = store.runs()
    assert len(runs) == 5 and all(r["status"] == "done" for r in runs)
    for r in runs:
        if r["kind"] == "trial":
            assert _step1_lines(r["run_dir"]) == 1, r["run_dir"]


def test_sweep_checks_every_setting_before_the_first_trial(tiny_model_dir, data_dir, tmp_path):
    """A typo found after training the grid costs the grid: benches, backend, trials and the dir are checked first."""
    y = _sweep_yaml(tmp_path, tiny_model_dir, data_dir)
    sweep_dir = tmp_path / "sweep"

    def check(match, grid=(), sets=(), output_dir=None, backend="local"):
        with pytest.raises(UserError, match=match) as e:
            run_sweep(load_sweep_config(str(y), list(grid), {}, output_dir, list(sets)), backend=backend, show_progress=False)
        assert "\n" not in str(e.value)
        assert not sweep_dir.exists(), "work (a dir, a store) before the check"

    check(r"eval\.benches: unknown bench 'advbnch'", sets=["eval.benches=advbench,advbnch"])
    check(r"unknown backend 'rey': use local or ray", backend="rey")
    check(r"data: unknown dataset 'missing\.jsonl'", grid=["data=dolly,missing.jsonl"])
    check(r"model '/nonexistent/model': no such file or folder", sets=["model=/nonexistent/model"])
    check(r"sweep trial \{'lr': 0, .*lr: Input should be greater than 0", grid=["lr=1e-4,0"])
    check(r"eval\.refusal_list: unknown refusal list 'gcgg'", sets=["eval.refusal_list=gcgg"])
    a_file = tmp_path / "a_file"
    a_file.write_text("not a dir")
    check(r"a_file is a file, not a directory", output_dir=str(a_file))
    check(r"a_file is a file, not a directory", output_dir=str(a_file / "sub"))
    assert a_file.read_text() == "not a dir"


def test_sweep_cli_exits_1_naming_the_failed_trials(tiny_model_dir, data_dir, tmp_path):
    """A trial that fails at run time (here: more held-out rows than the data has) must not end in exit 0."""
    from conftest import run_cli

    y = _sweep_yaml(tmp_path, tiny_model_dir, data_dir)
    r = run_cli("sweep", "--config", y, "--grid", "lr=1e-4", "--grid", "ema_beta=null", "--grid", "heldout_size=4,100000",
                "--set", "eval.limit=2", "--set", "eval.benches=advbench", "--set", "eval.utility=false")
    assert r.returncode == 1, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "1 of 3 runs failed" in last
    store = Store(tmp_path / "sweep" / "runs.db")
    runs = store.runs()
    assert sorted(x["status"] for x in runs) == ["done", "done", "failed"]
    assert all(x["config"]["eval"]["limit"] == 2 and x["config"]["eval"]["benches"] == ["advbench"] for x in runs)
    failed = next(x for x in runs if x["status"] == "failed")
    assert failed["config"]["train"]["heldout_size"] == 100000 and "heldout_size" in failed["error"]
    bad_dir = run_cli("sweep", "--config", y, "--output-dir", tmp_path / "sweep" / "sweep.yaml")
    assert bad_dir.returncode == 2 and "is a file, not a directory" in bad_dir.stderr
    assert len(bad_dir.stderr.strip().splitlines()) == 1


def test_set_flags_reach_any_training_or_eval_setting(tmp_path):
    from conftest import run_cli

    cfg = load_sweep_config(None, ["lr=1e-5,2e-5"], {}, str(tmp_path),
                            ["eval.limit=5", "eval.benches=advbench,xstest", "eval.utility=false", "steps=3",
                             "warmup_steps=1", "ema_beta=null", "lora_target_modules=q_proj,v_proj", "eval.limit=7"])
    assert (cfg.eval.limit, cfg.eval.benches, cfg.eval.utility) == (7, ["advbench", "xstest"], False)  # the last --set wins
    ts = [t for _, t in trials(cfg)]
    assert len(ts) == 2 and all((t.steps, t.warmup_steps, t.ema_beta, t.lora_target_modules) == (3, 1, None, ["q_proj", "v_proj"])
                                for t in ts)
    for flag, match in [("eval.limt=5", r"--set eval\.limt: unknown eval setting 'limt'; did you mean 'limit'"),
                        ("learning_rate=1e-5", r"--set learning_rate: unknown training setting 'learning_rate'"),
                        ("output_dir=x", r"--set output_dir: .*--output-dir"),
                        ("eval.limit=0", r"--set eval\.limit: invalid config: limit: Input should be greater than or equal to 1"),
                        ("eval.backend=gpu", r"--set eval\.backend: invalid config: backend"),
                        ("weight_decay=-1", r"--set weight_decay: invalid config: weight_decay: Input should be greater"),
                        ("steps=many", r"--set steps: invalid config: steps: Input should be a valid integer"),
                        ("lr=1e-3", r"--set lr: 'lr' is swept"),
                        ("steps", r"--set 'steps': expected KEY=VALUE")]:
        with pytest.raises(UserError, match=match):
            load_sweep_config(None, ["lr=1e-5,2e-5"], {}, str(tmp_path), [flag])
    r = run_cli("sweep", "--set", "eval.limt=5", "--output-dir", tmp_path / "s")
    assert r.returncode == 2 and "eval.limt" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "s").exists()


def test_report_md_escapes_names_from_the_data(tmp_path):
    """A sweep dir or bench named like markup must stay text in report.md: no script, no javascript: link."""
    from markdown_it import MarkdownIt

    evil = "[x](javascript:alert(1))<script>alert(1)<"
    sweep_dir = tmp_path / evil
    store = Store(sweep_dir / "runs.db")
    for i, lr in enumerate((1e-5, 1e-4)):
        train = {"method": "sft", "lr": lr, "batch_size": 2, "grad_accum": 1, "steps": 1, "ema_beta": None, "lora_r": 0}
        run_id, _ = store.upsert_run({"train": train}, run_dir=str(sweep_dir / "runs" / str(i)))
        store.start(run_id)
        store.finish(run_id, [("model", evil, "", "harmful_rate", 0.1 * i), ("model", evil, "", "ci_low", 0.0),
                              ("model", evil, "", "ci_high", 0.5), ("model", evil, "", "n", 10),
                              ("model", "utility", "", "heldout_loss", 2.0 - i)])
    store.close()
    summary = sweep_analysis.sweep_report(sweep_dir, max_harm_increase=1.0)
    md = (sweep_dir / "report.md").read_text()
    assert md == summary["markdown"] and "Recommended" in md
    for raw in ("<script", "](javascript:", "[x]"):
        assert raw not in md, raw
    assert md.count("\\[x\\]\\(javascript:alert\\(1\\)\\)&lt;script&gt;alert\\(1\\)&lt;") >= 2  # the title's bench and the run dir
    rendered = MarkdownIt("commonmark").render(md)
    assert "<script" not in rendered and "href" not in rendered and "&lt;script&gt;alert(1)" in rendered


def test_keep_weights_false_drops_a_scored_trials_weights_and_keeps_its_results(tiny_model_dir, data_dir, tmp_path):
    y = _sweep_yaml(tmp_path, tiny_model_dir, data_dir)
    values = json.loads(y.read_text())
    values |= {"grid": {"lr": [1e-4], "ema_beta": [0.9]}, "keep_weights": False}
    y.write_text(json.dumps(values))
    cfg = load_sweep_config(str(y), [], {}, None)
    (h, tc), = trials(cfg)
    assert run_sweep(cfg, show_progress=False) == {"skipped": 0, "done": 2, "failed": 0, "elsewhere": 0}
    run = tmp_path / "sweep" / "runs" / h
    assert not (run / "model").exists() and not (run / "raw").exists() and not (run / "checkpoints").exists()
    for kept in ("config.yaml", "train_summary.json", "eval/eval.json", "eval/generations.jsonl"):
        assert (run / kept).is_file(), kept
    store = Store(tmp_path / "sweep" / "runs.db")
    trial = next(r for r in store.runs("done") if r["kind"] == "trial")
    assert store.artifacts(trial["id"])["weights_dropped"] == "model,raw"
    names = {(m["model"], m["name"]) for m in store.metrics(trial["id"])}
    assert ("model", "harmful_rate") in names and ("raw", "harmful_rate") in names
    store.close()
    # the baseline's model is the user's: never touched
    assert (tiny_model_dir / "config.json").is_file()
    assert run_sweep(cfg, show_progress=False)["skipped"] == 2  # scored trials are not retrained for their weights
    y.write_text(json.dumps(values | {"keep_weights": True}))
    assert trials(load_sweep_config(str(y), [], {}, None))[0][0] == h  # keep_weights is not part of a trial's identity


def test_a_sweep_stops_when_its_start_path_leads_to_other_weights(tiny_model_dir, data_dir, tmp_path):
    """runs/demo/aligned is a symlink into the cache: after a demo in another precision it names another model."""
    import shutil

    from safebasin.sweep import start_identity

    first, second = tmp_path / "aligned-a", tmp_path / "aligned-b"
    shutil.copytree(tiny_model_dir, first)
    shutil.copytree(tiny_model_dir, second)
    (second / "model.safetensors").write_bytes((second / "model.safetensors").read_bytes() + b"\0" * 8)
    link = tmp_path / "aligned"
    link.symlink_to(first)
    y = _sweep_yaml(tmp_path, link, data_dir)
    values = json.loads(y.read_text()) | {"grid": {"lr": [1e-4]}}
    y.write_text(json.dumps(values))
    assert run_sweep(load_sweep_config(str(y), [], {}, None), show_progress=False)["done"] == 2
    assert start_identity(str(link)).startswith(str(first.resolve()))
    link.unlink()
    link.symlink_to(second)
    with pytest.raises(UserError, match=r"is not the model this sweep's trials started from .*Use another --output-dir"):
        run_sweep(load_sweep_config(str(y), [], {}, None), show_progress=False)
    link.unlink()
    link.symlink_to(first)  # back to the weights it started from: everything is skipped
    assert run_sweep(load_sweep_config(str(y), [], {}, None), show_progress=False)["skipped"] == 2
    assert start_identity("smollm2-135m-instruct") is None and start_identity("org/some-hub-model") is None
