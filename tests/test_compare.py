"""The fair method comparison (compare.py): picks at matched utility, paired differences over seeds and prompts,
choosing on one bench and reporting on another; and the two-level bootstrap behind it."""
import json

import numpy as np
import pytest

from safebasin import stats
from safebasin.safety import sweep_analysis
from safebasin.store import Store

PROMPTS = 20
START = 3.0  # the starting model's held-out loss


def _flags(rate: float) -> list[bool]:
    k = round(rate * PROMPTS)
    return [i < k for i in range(PROMPTS)]


def _add(store, sweep_dir, name, train, seed, variants: dict[str, tuple[float, dict[str, float]]]):
    """One finished trial: variants = {"model" | "raw": (held-out loss, {bench: harmful rate})}, with its
    per-prompt generations on disk as evaluate writes them."""
    base = {"method": "sft", "lr": 2e-4, "batch_size": 4, "grad_accum": 1, "steps": 24, "ema_beta": None, "lora_r": 0,
            "l2_lambda": 0.01, "interpolate_alpha": 0.5, "safety_mix_fraction": 0.03, "seed": seed}
    run_dir = sweep_dir / "runs" / f"{name}-{seed}"
    run_id, _ = store.upsert_run({"train": base | train}, run_dir=str(run_dir))
    store.start(run_id)
    rows, gens = [], []
    for variant, (loss, harms) in variants.items():
        rows.append((variant, "utility", "", "heldout_loss", loss))
        for bench, rate in harms.items():
            rows += [(variant, bench, "", "harmful_rate", rate), (variant, bench, "", "ci_low", 0.0),
                     (variant, bench, "", "ci_high", 1.0), (variant, bench, "", "n", PROMPTS)]
            gens += [{"model": variant, "benchmark": bench, "index": i, "harmful": f} for i, f in enumerate(_flags(rate))]
    (run_dir / "eval").mkdir(parents=True)
    (run_dir / "eval" / "generations.jsonl").write_text("".join(json.dumps(g) + "\n" for g in gens))
    store.finish(run_id, rows)


@pytest.fixture
def method_sweep(tmp_path):
    """SFT (the raw/ of the EMA runs) gains 1.0 at 90% harmful; EMA β0.9 gains 0.8 at 30%, β0.98 0.4 at 10%;
    l2-anchor λ1 (seed 0 only) gains 0.7 at 20% on AdvBench but 60% on JBB, λ10 0.3 at 0%."""
    d = tmp_path / "sweep"
    store = Store(d / "runs.db")
    bid, _ = store.upsert_run({"baseline_of": "m"}, kind="baseline", run_dir=str(d / "baseline"))
    store.start(bid)
    store.finish(bid, [("model", "utility", "", "heldout_loss", START), ("model", "advbench", "", "harmful_rate", 0.0),
                       ("model", "advbench", "", "ci_low", 0.0), ("model", "advbench", "", "ci_high", 0.1),
                       ("model", "advbench", "", "n", PROMPTS)])
    sft = (2.0, {"advbench": 0.9, "jbb": 0.9})
    for seed in (0, 1, 2):
        _add(store, d, "ema90", {"method": "ema", "ema_beta": 0.9}, seed, {"model": (2.2, {"advbench": 0.3, "jbb": 0.3}), "raw": sft})
        _add(store, d, "ema98", {"method": "ema", "ema_beta": 0.98}, seed, {"model": (2.6, {"advbench": 0.1, "jbb": 0.1}), "raw": sft})
    _add(store, d, "l2-1", {"method": "l2-anchor", "l2_lambda": 1.0}, 0, {"model": (2.3, {"advbench": 0.2, "jbb": 0.6})})
    _add(store, d, "l2-10", {"method": "l2-anchor", "l2_lambda": 10.0}, 0, {"model": (2.7, {"advbench": 0.0, "jbb": 0.0})})
    store.close()
    return d


def test_matched_utility_picks_and_paired_differences(method_sweep):
    summary = sweep_analysis.sweep_report(method_sweep, max_harm_increase=0.02)
    mu = summary["matched_utility"]
    assert mu["bench"] == "advbench" and mu["other_benches"] == ["jbb"]
    assert mu["reference"]["gain"] == pytest.approx(1.0) and mu["reference"]["seeds"] == [0, 1, 2]  # the 6 raw/ points = 3 runs
    levels = {lvl["level"]: {r["method"]: r for r in lvl["rows"]} for lvl in mu["levels"]}
    at50, at75, at90 = levels[0.5], levels[0.75], levels[0.9]
    assert at50["ema"]["setting"].endswith("β0.9") and at50["l2-anchor"]["setting"].endswith("λ 1")
    assert at75["l2-anchor"]["setting"] is None and at75["ema"]["setting"].endswith("β0.9")  # λ1's 0.7 < 0.75
    assert at90["ema"]["setting"] is None and at90["sft"]["harmful_rate"] == pytest.approx(0.9)
    ema = at50["ema"]["benches"]["advbench"]
    assert ema["vs_sft"]["diff"] == pytest.approx(0.3 - 0.9) and ema["vs_sft"]["seeds"] == 3 and ema["vs_sft"]["real"]
    assert ema["vs_sft"]["high"] < 0 and ema["vs_ema"] is None
    l2 = at50["l2-anchor"]["benches"]
    assert l2["advbench"]["vs_ema"]["diff"] == pytest.approx(0.2 - 0.3) and l2["advbench"]["vs_ema"]["seeds"] == 1
    # chosen on AdvBench, reported unchanged on JBB: λ1 is 60% there, and the ranking does not hold
    assert l2["jbb"]["harmful_rate"] == pytest.approx(0.6) and l2["jbb"]["vs_ema"]["diff"] == pytest.approx(0.6 - 0.3)
    assert levels[0.5] and mu["levels"][0]["ranking"] == {"advbench": ["l2-anchor", "ema", "sft"], "jbb": ["ema", "l2-anchor", "sft"]}
    md = (method_sweep / "report.md").read_text()
    assert "## Methods at matched utility (settings chosen on advbench)" in md and "none reaches it" in md
    assert "-60.0 (" in md and "**real**" in md
    assert (method_sweep / "methods.png").stat().st_size > 1000
    assert json.loads((method_sweep / "report.json").read_text())["matched_utility"]["levels"][0]["level"] == 0.5


def test_labels_name_each_methods_knob(method_sweep):
    store = Store(method_sweep / "runs.db")
    points, _, _ = sweep_analysis.sweep_points(store)
    store.close()
    labels = {p["label"] for p in points}
    assert "l2-anchor lr 0.0002 b4 s24 βNone λ 1" in labels and "l2-anchor lr 0.0002 b4 s24 βNone λ 10" in labels
    raw = [p for p in points if p["variant"] == "raw"]  # the ema method's raw/ weights are plain SFT, and say so
    assert raw and all(p["method"] == "sft" and p["label"].startswith("lr 0.0002 b4 s24 βNone")
                   and p["label"].endswith("(raw/ of the EMA run)") for p in raw)


def test_paired_bootstrap_seeds():
    a = np.array([[1, 0, 1, 1], [1, 1, 0, 1]], dtype=float)
    same = stats.paired_bootstrap_seeds(a, a)
    assert (same["diff"], same["low"], same["high"]) == (0.0, 0.0, 0.0)
    shifted = stats.paired_bootstrap_seeds(a, a - 0.25)
    assert shifted["diff"] == pytest.approx(0.25) and shifted["low"] == pytest.approx(0.25) and shifted["high"] == pytest.approx(0.25)
    rng = np.random.default_rng(1)
    x, y = rng.random((3, 40)), rng.random((3, 40))
    d = stats.paired_bootstrap_seeds(x, y)
    assert d == stats.paired_bootstrap_seeds(x, y)  # seeded: the same call, the same numbers
    assert d["low"] < d["diff"] < d["high"] and d["diff"] == pytest.approx(float((x - y).mean()))
    wide = stats.paired_bootstrap_seeds(x + np.array([[0.5], [0.0], [-0.5]]), y)  # seeds that disagree widen the CI
    assert wide["high"] - wide["low"] > d["high"] - d["low"]
    with pytest.raises(ValueError, match="one shape"):
        stats.paired_bootstrap_seeds(x, y[:2])


def test_levels_are_shares_of_the_base_recipes_sft_even_when_careful_sft_learns_more(method_sweep):
    """A careful SFT run (lr 1e-5, batch 8) that learns more than the aggressive base recipe does not become the
    reference: the levels stay shares of the base recipe's gain (sweep.yaml), and careful SFT competes as a setting."""
    (method_sweep / "sweep.yaml").write_text("base:\n  lr: 2.0e-4\n  batch_size: 4\n  steps: 24\n")
    store = Store(method_sweep / "runs.db")
    _add(store, method_sweep, "careful", {"lr": 1e-5, "batch_size": 8}, 0, {"model": (1.9, {"advbench": 0.0, "jbb": 0.05})})
    store.close()
    mu = sweep_analysis.sweep_report(method_sweep, max_harm_increase=0.02)["matched_utility"]
    assert mu["reference"]["setting"] == "lr 0.0002 b4 s24" and mu["reference"]["gain"] == pytest.approx(1.0)
    at90 = {r["method"]: r for r in mu["levels"][2]["rows"]}
    careful = at90["sft @ lr 1e-05 b8 s24"]  # its own row, not a setting of "sft" or of a method
    assert careful["harmful_rate"] == 0.0 and careful["share_of_sft_gain"] == pytest.approx(1.1)
    assert at90["sft"]["setting"] == "lr 0.0002 b4 s24" and at90["sft"]["harmful_rate"] == pytest.approx(0.9)
    assert careful["benches"]["advbench"]["vs_sft"]["diff"] == pytest.approx(-0.9)  # paired on seed 0
