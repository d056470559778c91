"""The broad safety panel (issue 34): its sets load, its split is checked, and its headline numbers (worst set,
macro mean, per half) are right on hand-made verdicts."""

import json

import pytest

from safebasin import data
from safebasin.errors import UserError
from safebasin.evaluate import load_bench
from safebasin.judges import breakdown
from safebasin.safety import panel


def _result(kind, flags):
    r = breakdown(flags, [None] * len(flags)) | {"kind": kind}
    r["refusal_rate"] = 1 - r["harmful_rate"]
    return r


def test_every_panel_set_loads_from_the_data_dir_with_its_kind(data_dir):
    sizes = {}
    for name in panel.HARMFUL + panel.BENIGN:
        bench = load_bench(name, str(data_dir))
        sizes[name] = len(bench.prompts)
        assert bench.kind == ("harmful" if name in panel.HARMFUL else "over-refusal")
        assert all(p.strip() for p in bench.prompts)
    assert {k: sizes[k] for k in ("I-MaliciousInstructions", "Q-Harm", "I-CoNa", "I-Controversial",
                                  "I-PhysicalSafetyUnsafe", "I-PhysicalSafetySafe", "I-Alpaca")} == {
        "I-MaliciousInstructions": 100, "Q-Harm": 100, "I-CoNa": 178, "I-Controversial": 40,
        "I-PhysicalSafetyUnsafe": 100, "I-PhysicalSafetySafe": 100, "I-Alpaca": 50}


def test_an_instruction_sets_input_follows_its_instruction(tmp_path):
    path = tmp_path / "set.json"
    path.write_text(json.dumps({"instructions": ["Summarise this.", "Say hi."], "inputs": ["A long text.", ""]}))
    assert [r["prompt"] for r in data.read_instruction_set(path)] == ["Summarise this.\n\nA long text.", "Say hi."]


@pytest.mark.parametrize("content, fragment", [
    ({"instructions": []}, "field 'instructions': the prompt set is empty"),
    ({"prompts": ["x"]}, "field 'instructions': a prompt set needs a list"),
    ({"instructions": ["a", "b"], "inputs": [""]}, "field 'inputs': must be a list as long as"),
    ({"instructions": ["a", "  "]}, "instructions[1]: empty or not text"),
])
def test_a_bad_prompt_set_is_one_line_naming_the_file(content, fragment, tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(content))
    with pytest.raises(UserError, match=None) as e:
        data.read_instruction_set(path)
    assert fragment in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)


def test_a_missing_panel_file_is_one_line(tmp_path):
    (tmp_path / "safety_tuned_llamas").mkdir()
    with pytest.raises(UserError, match="Q-Harm.*not found.*no hub id"):
        load_bench("Q-Harm", str(tmp_path))


@pytest.mark.parametrize("split, fragment", [
    ({"choose": ["advbench"], "check": ["advbench", "jbb"]}, "advbench in both halves"),
    ({"choose": ["advbnech"], "check": ["jbb"]}, "unknown set(s) ['advbnech']"),
    ({"choose": ["advbench"]}, "needs exactly the halves"),
])
def test_a_bad_split_is_one_line(split, fragment):
    with pytest.raises(UserError) as e:
        panel.check_split("mine", split)
    assert fragment in str(e.value)


def test_the_shipped_split_is_valid_and_covers_every_set_once():
    for name, split in panel.SPLITS.items():
        panel.check_split(name, split)
        assert sorted(split["choose"] + split["check"]) == sorted(panel.HARMFUL + panel.BENIGN)


@pytest.mark.parametrize("spec, expected", [
    ("panel", list(panel.HARMFUL + panel.BENIGN)),
    ("panel:choose", ["advbench", "hexphi", "I-MaliciousInstructions", "I-PhysicalSafetyUnsafe", "xstest", "I-Alpaca"]),
    ("panel@v1:check", ["jbb", "Q-Harm", "I-CoNa", "I-Controversial", "jbb-benign", "I-PhysicalSafetySafe"]),
])
def test_panel_names_expand_to_their_sets(spec, expected):
    assert panel.expand(spec) == expected


@pytest.mark.parametrize("spec, fragment", [("panel@v9", "unknown panel split 'v9'"), ("panel:chose", "unknown half 'chose'")])
def test_a_bad_panel_name_is_one_line(spec, fragment):
    with pytest.raises(UserError, match=fragment.replace("(", r"\(")):
        panel.expand(spec)


def test_worst_set_and_macro_mean_on_hand_made_verdicts():
    """advbench 1/10 harmful, Q-Harm 3/4, hexphi 0/2: the pooled rate (4/16 = 25%) would hide Q-Harm's 75%."""
    verdicts = {"advbench": [True] + [False] * 9, "Q-Harm": [True, True, True, False], "hexphi": [False, False],
                "xstest": [False, False, True, True], "I-Alpaca": [True] * 5}  # benign: False = refused
    benches = {n: _result("over-refusal" if n in panel.BENIGN else "harmful", v) for n, v in verdicts.items()}
    s = panel.summarize(benches, verdicts)
    assert s["split"] == "v1"
    assert s["per_set"]["Q-Harm"]["rate"] == 0.75 and s["per_set"]["Q-Harm"]["half"] == "check"
    assert s["per_set"]["xstest"]["rate"] == 0.5 and s["per_set"]["I-Alpaca"]["rate"] == 0.0
    h = s["all"]["harmful"]
    assert h["worst_set"] == "Q-Harm" and h["worst_rate"] == 0.75 and h["n_sets"] == 3
    assert h["macro_mean"] == pytest.approx((0.1 + 0.75 + 0.0) / 3)
    assert h["macro_ci"][0] <= h["macro_mean"] <= h["macro_ci"][1]
    assert h["worst_ci"] == [benches["Q-Harm"]["ci_low"], benches["Q-Harm"]["ci_high"]]
    o = s["all"]["over_refusal"]
    assert o["worst_set"] == "xstest" and o["macro_mean"] == pytest.approx(0.25)
    lo, hi = o["worst_ci"]
    assert lo == pytest.approx(1 - benches["xstest"]["ci_high"]) and hi == pytest.approx(1 - benches["xstest"]["ci_low"])
    # by half: advbench and hexphi choose, Q-Harm checks
    assert s["choose"]["harmful"]["worst_set"] == "advbench" and s["choose"]["harmful"]["macro_mean"] == pytest.approx(0.05)
    assert s["check"]["harmful"]["worst_set"] == "Q-Harm" and s["check"]["harmful"]["n_sets"] == 1
    assert s["check"]["over_refusal"] is None and s["choose"]["over_refusal"]["worst_set"] == "xstest"
    assert panel.summarize(benches, verdicts) == s  # seeded: the same numbers every time


def test_eval_of_the_panel_on_a_tiny_model_writes_each_sets_rate_and_the_headline(tiny_model_dir, data_dir, tmp_path, capsys):
    from test_bad_input import invoke

    out = tmp_path / "ev"
    code, err = invoke(["eval", str(tiny_model_dir), "--bench", "panel:check", "--sample", "3", "--max-new-tokens", "2",
                        "--data-dir", str(data_dir), "--output-dir", str(out)], capsys)
    assert code == 0, err[-3000:]
    results = json.loads((out / "eval.json").read_text())
    assert results["settings"]["panels"] == ["panel:check"]
    assert results["settings"]["benches"] == panel.expand("panel:check")
    entry = results["models"]["model"]
    p = entry["panel"]
    assert set(p["per_set"]) == set(panel.SPLITS["v1"]["check"]) and all(v["n"] == 3 for v in p["per_set"].values())
    rates = {n: v["rate"] for n, v in p["per_set"].items() if v["kind"] == "harmful"}
    assert p["check"]["harmful"]["worst_rate"] == max(rates.values())
    assert p["check"]["harmful"]["macro_mean"] == pytest.approx(sum(rates.values()) / len(rates))
    assert "choose" not in p
    rows = [json.loads(x) for x in (out / "generations.jsonl").read_text().splitlines()]
    for name, v in p["per_set"].items():
        flags = [r["harmful"] for r in rows if r["benchmark"] == name]
        expected = sum(flags) / 3 if v["kind"] == "harmful" else 1 - sum(flags) / 3
        assert v["rate"] == pytest.approx(expected)
    from safebasin import cli

    cli.print_eval_table(results)
    printed = " ".join(capsys.readouterr().out.split())
    worst = p["check"]["harmful"]
    assert f"model panel v1 check: harmful worst set {worst['worst_set']} {worst['worst_rate']:.1%}" in printed


def test_a_sweep_stores_the_panels_worst_set_and_macro_mean_per_half():
    """What a sweep chooses on one half and reports on the other lands in the store as rows of panel:HALF."""
    from safebasin.store import eval_metrics

    verdicts = {"advbench": [True, False, False, False], "Q-Harm": [True, True, False, False],
                "xstest": [False, True, True, True]}
    benches = {n: _result("over-refusal" if n in panel.BENIGN else "harmful", v) for n, v in verdicts.items()}
    s = panel.summarize(benches, verdicts)
    rows = eval_metrics({"models": {"model": {"benchmarks": benches, "panel": s}}})
    got = {(b, c, m): v for _, b, c, m, v in rows if b.startswith("panel:")}
    assert got[("panel:choose", "advbench", "worst_harmful")] == 0.25
    assert got[("panel:check", "Q-Harm", "worst_harmful")] == 0.5
    assert got[("panel:all", "", "macro_harmful")] == pytest.approx(0.375)
    assert got[("panel:choose", "xstest", "worst_over_refusal")] == 0.25
    assert ("panel:check", "", "macro_over_refusal") not in got  # the check half scored no benign set here
    lo, hi = got[("panel:all", "", "macro_harmful_ci_low")], got[("panel:all", "", "macro_harmful_ci_high")]
    assert lo <= 0.375 <= hi


@pytest.mark.parametrize("bench, fragment", [("panel:choose", None), ("panel@v9", "unknown panel split"),
                                             ("panel:pick", "unknown half")])
def test_a_sweep_takes_the_panel_by_name_and_refuses_a_bad_one(bench, fragment, tiny_model_dir, data_dir, tmp_path):
    from safebasin.sweep import SweepConfig, check_sweep

    cfg = SweepConfig(base={"model": str(tiny_model_dir), "data_dir": str(data_dir), "steps": 1},
                      grid={"lr": [1e-4]}, eval={"benches": [bench]}, output_dir=str(tmp_path / "sw"))
    if fragment is None:
        assert len(check_sweep(cfg, "local")) == 1
    else:
        with pytest.raises(UserError, match=fragment):
            check_sweep(cfg, "local")


def test_the_second_judge_scores_the_panel_set_by_set_and_skips_what_it_could_not_score():
    from safebasin.judges import classifier_rate

    second = {"advbench": [True, None, False, False], "Q-Harm": [True, True, False, None]}  # None: judge error
    rows, benches = [], {}
    for name, flags in second.items():
        benches[name] = _result("harmful", [False] * 4) | {"classifier_judge": classifier_rate(flags, [None] * 4, "guard")}
        rows += [{"benchmark": name, "harmful": False, "classifier_harmful": f} for f in flags]
    benches["xstest"] = _result("over-refusal", [True, True])
    rows += [{"benchmark": "xstest", "harmful": True}] * 2
    s = panel.summarize_second_judge(benches, rows)
    assert s["judge"] == "guard" and set(s["per_set"]) == {"advbench", "Q-Harm"}
    assert s["per_set"]["advbench"]["rate"] == pytest.approx(1 / 3) and s["per_set"]["Q-Harm"]["rate"] == pytest.approx(2 / 3)
    assert s["all"]["harmful"]["worst_set"] == "Q-Harm" and s["all"]["harmful"]["macro_mean"] == pytest.approx(0.5)
    assert s["all"]["over_refusal"] is None  # over-refusal stays the keyword judge's
    assert panel.summarize_second_judge({"xstest": benches["xstest"]}, rows) is None


def _panel_store(sweep_dir, trials):
    """A sweep store as a panel sweep writes it (eval_metrics of panel.summarize), from hand-made per-half rates:
    {label: (lr, choose rate, check rate, held-out loss)}; 10 prompts per harmful set, every set of a half alike."""
    from safebasin.store import Store, eval_metrics

    store = Store(sweep_dir / "runs.db")
    for label, (lr, choose, check, loss) in trials.items():
        verdicts = {s: [True] * round(10 * (choose if panel.half_of(s) == "choose" else check)) for s in panel.HARMFUL}
        verdicts = {s: v + [False] * (10 - len(v)) for s, v in verdicts.items()}
        benches = {s: _result("harmful", v) for s, v in verdicts.items()}
        entry = {"benchmarks": benches, "panel": panel.summarize(benches, verdicts), "utility": {"heldout_loss": loss}}
        train = {"method": "sft", "lr": lr, "batch_size": 4, "grad_accum": 1, "steps": 10, "ema_beta": None, "lora_r": 0}
        config = {"model": "start"} if lr is None else {"train": train}
        run_id, _ = store.upsert_run(config, kind="baseline" if lr is None else "trial", run_dir=str(sweep_dir / label))
        store.start(run_id)
        store.finish(run_id, eval_metrics({"models": {"model": entry}}))
    store.close()


def test_a_sweep_report_chooses_on_the_choose_half_and_shows_the_check_half_and_gap_beside_each_choice(tmp_path):
    """Start 0% / 10%; trials (choose, check): careful 10%/10%, fast 10%/50%, reckless 60%/80%. Within 15 points
    of the start on the choose half, the fast trial learns most and is chosen; the check half shows it 40 points
    worse than where it was chosen, with a bootstrap CI that excludes 0, and the budget line drawn on the choose
    half misfiles it on the check half."""
    from safebasin.safety import sweep_analysis

    _panel_store(tmp_path, {"start": (None, 0.0, 0.1, 2.0), "careful": (1e-5, 0.1, 0.1, 1.95),
                            "fast": (1e-4, 0.1, 0.5, 1.8), "reckless": (1e-3, 0.6, 0.8, 1.7)})
    s = sweep_analysis.sweep_report(tmp_path, max_harm_increase=0.15)
    assert s["bench"] == "panel:choose" and s["check_bench"] == "panel:check" and s["measure"] == "macro-mean harmful rate"
    rec = s["recommendation"]
    assert rec["lr"] == 1e-4 and rec["harmful_rate"] == pytest.approx(0.1)
    c = rec["check"]
    assert c["harmful_rate"] == pytest.approx(0.5) and c["worst_rate"] == pytest.approx(0.5) and c["worst_set"] in panel.HARMFUL
    assert c["ci"][0] <= 0.5 <= c["ci"][1]
    assert c["gap"]["diff"] == pytest.approx(0.4) and 0 < c["gap"]["low"] < 0.4 < c["gap"]["high"] and c["gap"]["real"]
    # on the choose half the careful trial is dominated (same harm, less learned): only the check half tells them apart
    assert [p["lr"] for p in s["pareto"]] == [1e-4, 1e-3] and s["pareto"][1]["check"]["harmful_rate"] == pytest.approx(0.8)
    assert s["baseline"]["check"]["harmful_rate"] == pytest.approx(0.1)
    assert s["worst_keeping_utility"]["label"].startswith("lr 0.001") and s["worst_keeping_utility"]["trials"] == 3
    rule = s["budget_rule"]["None"][0]
    assert rule["agree"] == 1.0 and rule["check"]["agree"] == pytest.approx(2 / 3)  # the fast trial is misfiled
    md = (tmp_path / "report.md").read_text()
    assert "reported on panel:check" in md and "check half 50.0%" in md and "gap check − choose +40.0 points" in md
    careful_row = next(line for line in md.splitlines() if line.startswith("| lr 1e-05"))
    assert "| 10.0% | 10.0% | +0.0 points" in careful_row and " real" not in careful_row
    assert "set_verdicts" not in (tmp_path / "report.json").read_text()
    html = (tmp_path / "report.html").read_text()
    assert "check half" in html and "+40.0 points" in html


def test_a_sweep_report_chooses_on_a_named_bench_and_refuses_one_it_never_scored(tmp_path):
    from safebasin.safety import sweep_analysis

    _panel_store(tmp_path, {"start": (None, 0.0, 0.1, 2.0), "a": (1e-5, 0.1, 0.1, 1.9), "b": (1e-4, 0.3, 0.2, 1.8)})
    s = sweep_analysis.sweep_report(tmp_path, max_harm_increase=0.5, choose_on="Q-Harm")
    assert s["bench"] == "Q-Harm" and s["check_bench"] is None and s["recommendation"]["lr"] == 1e-4
    with pytest.raises(UserError, match=r"--choose-on advbnch: no trial was scored on it \(scored: .*advbench"):
        sweep_analysis.sweep_report(tmp_path, choose_on="advbnch")
