"""One Registry type behind every name a user types (issue #35): one duplicate policy, lazy entries, discovery on
lookup, a did-you-mean in the one-line error, and systems that register without importing each other."""

import json
import subprocess
import sys

import pytest

from safebasin import data, methods
from safebasin.detox import scorers
from safebasin.errors import UserError
from safebasin.evaluate import BENCH_KINDS
from safebasin.registry import Registry
from safebasin.scenario import SCENARIOS


def test_a_name_taken_by_another_entry_is_an_error_and_the_same_entry_twice_is_not():
    reg = Registry("widget")
    reg.register("a", json.dumps)
    reg.register("a", json.dumps)  # a module imported twice: harmless
    with pytest.raises(ValueError, match=r"widget 'a' is registered twice \(json.dumps and json.loads\)"):
        reg.register("a", json.loads)
    assert reg["a"] is json.dumps and list(reg) == ["a"] and len(reg) == 1


def test_a_lazy_entry_is_imported_on_first_lookup_only():
    reg = Registry("widget")
    reg.register("wrap", "textwrap:dedent", lazy=True)
    assert reg.lookup("wrap")("  x") == "x" and reg["wrap"].__name__ == "dedent"
    reg.register("wrap", "textwrap:dedent", lazy=True)  # the same reference again is a no-op, even once resolved
    with pytest.raises(ValueError, match="a lazy entry is a 'module:attr' string"):
        reg.register("bad", "no_colon", lazy=True)


def test_an_unknown_name_is_one_line_with_a_did_you_mean_and_every_known_name():
    reg = Registry("widget", " or a file")
    for name in ("advbench", "hexphi", "xstest"):
        reg.register(name, name)
    with pytest.raises(UserError) as e:
        reg.lookup("advbenhc")
    assert str(e.value) == "unknown widget 'advbenhc' (did you mean 'advbench'?): use one of advbench, hexphi, xstest or a file"
    assert "did you mean" not in str(reg.unknown("zzzz"))


@pytest.mark.parametrize("lookup, message", [
    (lambda: methods.get("sfft"), "unknown method 'sfft' (did you mean 'sft'?)"),
    (lambda: data.load_examples("dolyl"), "unknown dataset 'dolyl' (did you mean 'dolly'?)"),
    (lambda: SCENARIOS.lookup("kgg"), "unknown demo scenario 'kgg' (did you mean 'kg'?)"),
    (lambda: BENCH_KINDS.lookup("toxicty"), "unknown bench kind 'toxicty' (did you mean 'toxicity'"),
])
def test_every_registry_speaks_the_same_one_line(lookup, message):
    with pytest.raises(UserError) as e:
        lookup()
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_every_registry_is_one_type_and_finds_the_systems_on_lookup():
    for reg in (methods.REGISTRY, data.TRAIN_SETS, data.BENCH_SETS, BENCH_KINDS, SCENARIOS, scorers.SCORERS):
        assert isinstance(reg, Registry)
    assert {"safety", "detox", "dialogue", "kg"} <= set(SCENARIOS)
    assert {"adlm", "surge", "context-instruct", "sft", "ema"} <= set(methods.REGISTRY)
    assert {"opendialkg", "dailydialog", "rtp-toxic", "I-CoNa"} <= set(data.BENCH_SETS)


def test_a_system_registers_without_importing_another_system_or_the_safety_scenario():
    code = ("import sys, safebasin.kg, safebasin.detox, safebasin.dialogue; "
            "print(sorted(m for m in sys.modules if m in ('safebasin.safety.demo', 'safebasin.train', 'safebasin.report')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


SMALL = {  # each system's scenario at its smallest: the harness's bookkeeping is what is tested, not the numbers
    "kg": "arms: ['no knowledge', 'all facts']\nturns: 2\nsteps: 1\nbatch_size: 2\ntrain_rows: 16\nmax_new_tokens: 2\nmax_seq_len: 256\n",
    "dialogue": "turns: 2\nsteps: 1\nbatch_size: 2\ntrain_rows: 16\nmax_new_tokens: 2\nmax_seq_len: 64\nbaselines: []\n",
    "detox": "prompts: 2\nsamples: 1\nmax_new_tokens: 2\nsteps: 1\nbatch_size: 2\ntrain_rows: 16\nbaselines: []\n"
             "fluent_arms: {}\n",
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_every_systems_scenario_runs_through_the_one_harness(name, tiny_model_dir, data_dir, tmp_path):
    """The kg, dialogue and detox demos share DemoDir's arm loop (train_and_load, score, stop_clock, finish): each
    records every stage's seconds, each trained arm's compute, every scored row, and writes the standard outputs."""
    (tmp_path / "c.yaml").write_text(SMALL[name])
    scenario = SCENARIOS.lookup(name)
    cfg = scenario.config("quick", str(tmp_path / "c.yaml"), {"model": str(tiny_model_dir), "data_dir": str(data_dir)})
    summary = scenario.start(cfg, tmp_path / "out", show_progress=False)
    out = tmp_path / "out"
    for f in ("summary.json", "generations.jsonl", "report.html", "demo_config.yaml"):
        assert (out / f).is_file(), f
    timings = summary["timings_s"]
    trained = [k.removeprefix("train ") for k in timings if k.startswith("train ")]
    assert trained and all(f"eval {t}" in timings for t in trained) and timings["total"] >= max(timings.values()) - 1e-9
    rows = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert {r["model"] for r in rows} >= set(trained)
    assert summary["table"]["rows"], summary["table"]


def test_the_core_imports_no_system():
    """Systems import the core, never the other way round: no top-level module but the CLI (the one boundary that
    dispatches commands) imports `safety`, `detox`, `dialogue` or `kg`, even inside a function (issue #35)."""
    import ast
    from pathlib import Path

    import safebasin

    systems = {"safety", "detox", "dialogue", "kg"}
    found = []
    for path in sorted(Path(safebasin.__file__).parent.glob("*.py")):
        if path.name == "cli.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                names = [node.module] if node.module else [a.name for a in node.names]
                found += [f"{path.name}: {n}" for n in names if n.split(".")[0] in systems]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("safebasin."):
                found += [f"{path.name}: {node.module}"] if node.module.split(".")[1] in systems else []
    assert found == []


def test_a_bench_suite_puts_its_own_numbers_in_the_results_store():
    """The store knows no suite's shape: each suite turns its eval.json keys into rows (system 1's panel halves too)."""
    from safebasin import evaluate
    from safebasin.store import eval_metrics

    suite = evaluate.BenchSuite(matches=lambda s: s == "toy-suite", expand=lambda s: ["advbench"], summarize=dict,
                                store_rows=lambda variant, entry: [(variant, "toy-suite", "", "spread", entry["toy"])])
    evaluate.register_bench_suite("toy-suite", suite)
    try:
        panel = {"check": {"harmful": {"worst_set": "hexphi", "worst_rate": 0.5, "macro_mean": 0.25, "macro_ci": [0.1, 0.4]}}}
        rows = eval_metrics({"models": {"model": {"benchmarks": {}, "toy": 0.75, "panel": panel}}})
    finally:
        evaluate.SUITES.unregister("toy-suite")
    assert ("model", "toy-suite", "", "spread", 0.75) in rows
    assert ("model", "panel:check", "hexphi", "worst_harmful", 0.5) in rows
    assert ("model", "panel:check", "", "macro_harmful_ci_high", 0.4) in rows and len(rows) == 5
