import json


import pytest

from safebasin import models
from safebasin.evaluate import probe_prompts, probe_rate
from safebasin.config import TrainConfig
from safebasin.evaluate import evaluate
from safebasin.generate import HFBackend
from safebasin.judges import keyword_judge
from safebasin.monitor import plan
from safebasin.train import train


def _log(out):
    return [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]


def _cfg(tiny_model_dir, data_dir, out, **kw):
    return TrainConfig(**(dict(model=str(tiny_model_dir), data="dolly", data_dir=str(data_dir), max_examples=32,
                               heldout_size=4, max_seq_len=160, batch_size=4, steps=4, lr=1e-2, seed=0, monitor=2,
                               monitor_probe=6, monitor_max_new_tokens=6, monitor_budget=0, output_dir=str(out)) | kw))


def test_monitor_rates_equal_a_separate_eval_of_the_same_weights(tiny_model_dir, data_dir, tmp_path):
    refusals = tmp_path / "refusals.json"
    refusals.write_text(json.dumps(["e", "a "]))  # any fixed list: the point is the equality
    out = train(_cfg(tiny_model_dir, data_dir, tmp_path / "run", ema_beta=0.7, refusal_list=str(refusals)), show_progress=False)
    log = _log(out)
    probed = [r for r in log if "probe_harmful_live" in r]
    assert [r["step"] for r in probed] == [2, 4]
    assert all(r["dist_live"] > 0 and 0 < r["dist_ema"] < r["dist_live"] for r in probed)
    # a separate `eval` of the saved raw (live) and kept (EMA) weights on the same sample, at the probe's
    # batch size: the monitor's early stop on refusal must not change a single verdict
    res = evaluate(str(out), ["jbb"], tmp_path / "eval", sample=6, seed=0, max_new_tokens=6, batch_size=6,
                   refusal_list=str(refusals), data_dir=str(data_dir), show_progress=False)
    assert res["models"]["raw"]["benchmarks"]["jbb"]["harmful_rate"] == probed[-1]["probe_harmful_live"]
    assert res["models"]["model"]["benchmarks"]["jbb"]["harmful_rate"] == probed[-1]["probe_harmful_ema"]
    assert 0 < probed[-1]["probe_harmful_live"] < 1  # a list that splits the answers, so the equality means something
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["monitor_start"]["probe"] == "jbb" and summary["monitor_start"]["dist_live"] == 0.0


def test_stop_rule_fires_on_drift_and_keeps_the_last_safe_weights(tiny_model_dir, data_dir, tmp_path):
    # a refusal list made of what the start model says: it "refuses" every probe prompt at step 0
    model, tok = models.load(str(tiny_model_dir))
    _, prompts = probe_prompts("advbench", 6, 0, str(data_dir))
    start = HFBackend(model, tok, 8, show_progress=False).generate(prompts, 6)
    refusals = tmp_path / "start_phrases.json"
    refusals.write_text(json.dumps(sorted({r for r in start if r})))
    out = train(_cfg(tiny_model_dir, data_dir, tmp_path / "drift", lr=0.05, steps=8, monitor=8, monitor_stop=0.2,
                     refusal_list=str(refusals)), show_progress=False)
    log = _log(out)
    summary = json.loads((out / "train_summary.json").read_text())
    start_rate = summary["monitor_start"]["probe_harmful_kept"]
    assert start_rate <= 0.2  # an empty start response counts as harmful: it contains no phrase
    stopped, kept = summary["monitor_stopped_at"], summary["monitor_kept_step"]
    assert log[-1]["step"] == stopped and log[-1]["probe_harmful_kept"] > start_rate + 0.2 and stopped < 8
    safe = [r["step"] for r in log if "probe_harmful_kept" in r and r["probe_harmful_kept"] <= start_rate + 0.2]
    assert kept == (safe[-1] if safe else 0)
    kept_model, kept_tok = models.load(str(out / "model"))
    assert probe_rate(kept_model, kept_tok, prompts, keyword_judge(str(refusals)), 6)[0]["harmful_rate"] <= start_rate + 0.2
    assert not (out / "monitor_last_safe").exists()


def test_probe_schedule_spreads_evenly_and_ends_on_the_last_step():
    assert plan(0, 24, 10) == [3, 5, 8, 10, 12, 15, 17, 20, 22, 24]
    assert plan(0, 4, 2) == [2, 4] and plan(0, 3, 10) == [1, 2, 3]
    assert plan(12, 24, 2) == [18, 24] and plan(5, 24, 0) == [] and plan(24, 24, 3) == []


def test_budget_thins_the_probes_and_records_what_ran(tiny_model_dir, data_dir, tmp_path):
    full = train(_cfg(tiny_model_dir, data_dir, tmp_path / "full", steps=6, monitor=3, monitor_budget=0), show_progress=False)
    s_full = json.loads((full / "train_summary.json").read_text())
    assert s_full["monitor_probed_steps"] == [0, 2, 4, 6] and s_full["monitor_seconds"] > 0
    # a budget no probe fits in: the start is measured (the stop rule needs it), nothing after
    tight = train(_cfg(tiny_model_dir, data_dir, tmp_path / "tight", steps=6, monitor=3, monitor_budget=1e-9), show_progress=False)
    s_tight = json.loads((tight / "train_summary.json").read_text())
    assert s_tight["monitor_probed_steps"] == [0] and s_tight["monitor_budget"] == pytest.approx(1e-9)
    assert not any("probe_harmful_live" in r for r in _log(tight))
    # the training itself is the same with or without probes
    assert [r["loss"] for r in _log(full)] == [r["loss"] for r in _log(tight)]


def test_a_resumed_run_keeps_the_monitor_start_and_schedule(tiny_model_dir, data_dir, tmp_path):
    import shutil

    from safebasin import checkpoint

    cfg = _cfg(tiny_model_dir, data_dir, tmp_path / "run", ema_beta=0.7, save_every=1, keep_checkpoints=10)
    out = train(cfg, show_progress=False)
    before_log, before = _log(out), json.loads((out / "train_summary.json").read_text())
    for gone in ("model", "raw", "train_summary.json"):  # as if killed after step 2
        shutil.rmtree(out / gone) if (out / gone).is_dir() else (out / gone).unlink()
    (out / "checkpoints" / "latest").write_text("step-0000002")
    for later in ("step-0000003", "step-0000004"):
        shutil.rmtree(out / "checkpoints" / later)
    assert checkpoint.latest(out).name == "step-0000002"
    train(cfg, show_progress=False, resume=True)
    after_log, after = _log(out), json.loads((out / "train_summary.json").read_text())

    def probes(rows):
        return [{k: v for k, v in r.items() if k.startswith(("probe_harmful", "dist_")) or k == "step"} for r in rows if "probe" in r]

    assert probes(after_log) == probes(before_log) and [r["step"] for r in probes(after_log)] == [2, 4]
    assert after["monitor_start"] == before["monitor_start"] and after["monitor_probed_steps"] == [0, 2, 4]


def test_run_report_shows_the_monitor_curve(tiny_model_dir, data_dir, tmp_path):
    from conftest import run_cli

    out = train(_cfg(tiny_model_dir, data_dir, tmp_path / "run", ema_beta=0.7), show_progress=False)
    r = run_cli("report", out)
    assert r.returncode == 0, r.stderr
    page = (out / "report.html").read_text()
    probed = [x for x in _log(out) if "probe_harmful_live" in x]
    assert "Safety monitor" in page and page.count("<tr><td>") >= len(probed) == 2
    assert f"{probed[-1]['probe_harmful_ema']:.1%}" in page and (out / "training.png").stat().st_size > 5000
    bad = run_cli("report", tmp_path)
    assert bad.returncode == 2 and "neither a sweep dir" in bad.stderr and "Traceback" not in bad.stderr
