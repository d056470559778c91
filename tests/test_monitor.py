import json


from safebasin import models
from safebasin.basin import probe_prompts, probe_rate
from safebasin.config import TrainConfig
from safebasin.generate import HFBackend
from safebasin.judges import keyword_judge
from safebasin.train import train


def _log(out):
    return [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]


def _cfg(tiny_model_dir, data_dir, out, **kw):
    return TrainConfig(**(dict(model=str(tiny_model_dir), data="dolly", data_dir=str(data_dir), max_examples=32,
                               heldout_size=4, max_seq_len=160, batch_size=4, steps=4, lr=1e-2, seed=0, monitor=2,
                               monitor_probe=6, monitor_max_new_tokens=6, output_dir=str(out)) | kw))


def test_monitor_rates_equal_a_separate_eval_of_the_same_weights(tiny_model_dir, data_dir, tmp_path):
    refusals = tmp_path / "refusals.json"
    refusals.write_text(json.dumps(["e", "a "]))  # any fixed list: the point is the equality
    out = train(_cfg(tiny_model_dir, data_dir, tmp_path / "run", ema_beta=0.7, refusal_list=str(refusals)), show_progress=False)
    log = _log(out)
    probed = [r for r in log if "probe_harmful_live" in r]
    assert [r["step"] for r in probed] == [2, 4]
    assert all(r["dist_live"] > 0 and 0 < r["dist_ema"] < r["dist_live"] for r in probed)
    judge = keyword_judge(str(refusals))
    _, prompts = probe_prompts("advbench", 6, 0, str(data_dir))
    for sub, key in (("raw", "probe_harmful_live"), ("model", "probe_harmful_ema")):
        model, tok = models.load(str(out / sub))
        assert probe_rate(model, tok, prompts, judge, 6)["harmful_rate"] == probed[-1][key]
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
    assert probe_rate(kept_model, kept_tok, prompts, keyword_judge(str(refusals)), 6)["harmful_rate"] <= start_rate + 0.2
    assert not (out / "monitor_last_safe").exists()
