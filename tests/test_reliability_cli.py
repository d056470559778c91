"""Issue 33: every bench kind prints its own eval table, a hand-corrupted sweep store is one line naming the
file and row, an ADLM sweep can be reported, and a decoding length past the model's context is refused.

Everything runs the real CLI (`safebasin.cli.main`) in-process on a tiny model; the broken files are made
from one tiny ADLM sweep in a module-scoped fixture.
"""

import json
import shutil
import sqlite3

import pytest

from safebasin import ui
from safebasin.store import STORE_FILE, Store
from safebasin.sweep import load_sweep_config, run_sweep
from test_bad_input import expect_one_line, invoke


def _corrupt(src, dst, *sql):
    shutil.copytree(src, dst)
    conn = sqlite3.connect(dst / STORE_FILE)
    for stmt in sql:
        conn.execute(stmt)
    conn.commit()
    conn.close()
    return dst


@pytest.fixture(scope="module")
def ctx(tiny_model_dir, data_dir, tmp_path_factory):
    """A finished 2-trial ADLM sweep (jigsaw, scored on rtp-toxic), its yaml, and copies of its store with one
    hand edit each."""
    root = tmp_path_factory.mktemp("rcli")
    sweep = root / "adlm"
    yaml = root / "adlm.yaml"
    yaml.write_text(json.dumps({
        "base": {"model": str(tiny_model_dir), "method": "adlm", "data": "jigsaw", "data_dir": str(data_dir), "steps": 2,
                 "batch_size": 4, "max_examples": 32, "heldout_size": 8, "max_seq_len": 48},
        "grid": {"lr": [1e-3, 1e-2]},
        "eval": {"benches": ["rtp-toxic"], "limit": 2, "max_new_tokens": 2, "rouge_limit": 2},
        "output_dir": str(sweep)}))
    assert run_sweep(load_sweep_config(str(yaml), [], {}, None), show_progress=False)["done"] == 3
    trial = 2  # run 1 is the baseline
    _corrupt(sweep, root / "ver", "UPDATE meta SET value='one' WHERE key='schema_version'")
    _corrupt(sweep, root / "row", f"UPDATE runs SET config_json='{{\"train\": {{' WHERE id={trial}")
    _corrupt(sweep, root / "list", f"UPDATE runs SET config_json='[1, 2]' WHERE id={trial}")
    _corrupt(sweep, root / "notrain", f"UPDATE runs SET config_json='{{}}' WHERE id={trial}")
    _corrupt(sweep, root / "value", f"UPDATE metrics SET value='lots' WHERE run_id={trial} AND name='toxicity_probability'")
    return {"root": root, "sweep": sweep, "yaml": yaml, "model": tiny_model_dir, "data_dir": data_dir}


def _sweep_at(d):
    return ["sweep", "--config", "{yaml}", "--output-dir", d]


BIG = "1000000000"
CASES = [  # (id, args, exit code, message fragment)
    ("sweep-schema-not-a-number", _sweep_at("{root}/ver"), 2, "ver/runs.db: meta row schema_version: results store has "
                                                              "schema version one"),
    ("report-schema-not-a-number", ["report", "{root}/ver"], 2, "ver/runs.db: meta row schema_version"),
    ("runs-ls-schema-not-a-number", ["runs", "ls", "{root}/ver"], 2, "ver/runs.db: meta row schema_version"),
    ("runs-ls-config-not-json", ["runs", "ls", "{root}/row"], 2, "row/runs.db: runs row id 2: config_json is not JSON"),
    ("runs-show-config-not-json", ["runs", "show", "{root}/row", "2"], 2, "row/runs.db: runs row id 2: config_json is not JSON"),
    ("report-config-not-json", ["report", "{root}/row"], 2, "row/runs.db: runs row id 2: config_json is not JSON"),
    ("runs-ls-config-a-list", ["runs", "ls", "{root}/list"], 2, "list/runs.db: runs row id 2: config_json is not a JSON object"),
    ("report-config-no-train", ["report", "{root}/notrain"], 2, "notrain/runs.db: runs row id 2: config_json has no train"),
    ("report-metric-not-a-number", ["report", "{root}/value"], 2,
     "value/runs.db: metrics row run_id 2, model/rtp-toxic/toxicity_probability: value 'lots' is not a number"),
    ("eval-max-new-tokens-past-context", ["eval", "{model}", "--limit", "1", "--max-new-tokens", BIG, "--output-dir",
                                          "{root}/big"], 2, f"--max-new-tokens {BIG} does not fit the context of"),
    ("sweep-max-new-tokens-past-context", ["sweep", "--model", "{model}", "--data", "dolly", "--data-dir", "{data_dir}",
                                           "--steps", "1", "--output-dir", "{root}/bigsweep", "--set",
                                           f"eval.max_new_tokens={BIG}"], 2, f"eval.max_new_tokens {BIG} does not fit"),
]


@pytest.mark.parametrize("args, code, fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line(args, code, fragment, ctx, capsys):
    expect_one_line(*invoke([a.format(**ctx) for a in args], capsys), code, fragment)


def test_the_cap_is_checked_before_the_sweep_trains(ctx):
    assert not (ctx["root"] / "bigsweep" / "runs").exists()


def test_an_adlm_sweep_scored_on_a_toxicity_bench_is_reported(ctx, capsys):
    """Its trials have a toxicity probability, no harmful rate: the report ranks them by that."""
    code, err = invoke(["report", ctx["sweep"]], capsys)
    assert code == 0, err[-3000:]
    summary = json.loads((ctx["sweep"] / "report.json").read_text())
    assert summary["measure"] == "toxicity probability" and summary["trials"] == 2
    assert {p["method"] for p in summary["pareto"]} == {"adlm"}
    assert "Safety is the toxicity probability on rtp-toxic" in (ctx["sweep"] / "report.md").read_text()
    store = Store(ctx["sweep"] / STORE_FILE, readonly=True)  # the toxicity CI is kept, so the report draws it
    names = {m["name"] for m in store.metrics(1)}
    store.close()
    assert {"toxicity_probability", "tp_ci_low", "tp_ci_high"} <= names
    base = summary["baseline"]
    assert base["ci_low"] <= base["harmful_rate"] <= base["ci_high"]


# ---------------------------------------------------------------- one table per bench kind

KINDS = [  # (bench, extra flags, a headline column of its table)
    ("advbench", [], "keyword judge"),
    ("xstest", [], "refusal"),
    ("rtp-toxic", ["--samples", "2"], "exp. max toxicity"),
    ("dailydialog", [], "BLEU-1"),
    ("opendialkg", [], "knowledge F1"),
    ("toxichat", [], "offensive rate"),
]


def test_the_table_test_covers_every_registered_bench_kind():
    """A kind a system registers later must join KINDS: `eval` of it prints its own table."""
    from safebasin import data
    from safebasin.evaluate import BENCH_KINDS

    assert {data.BENCH_SETS[bench].kind for bench, _, _ in KINDS} == set(BENCH_KINDS)


@pytest.mark.parametrize("bench, extra, column", KINDS, ids=[k[0] for k in KINDS])
def test_eval_prints_each_bench_kinds_own_table(bench, extra, column, tiny_model_dir, data_dir, tmp_path, capsys,
                                                 monkeypatch):
    monkeypatch.setattr(ui.out, "width", 250)  # whole column names
    with ui.out.capture() as table:
        code, err = invoke(["eval", tiny_model_dir, "--bench", bench, "--limit", "2", "--max-new-tokens", "2",
                            "--data-dir", data_dir, "--output-dir", tmp_path, *extra], capsys)
    assert code == 0, err[-3000:]
    assert "error:" not in err and column in table.get(), table.get()
    assert (tmp_path / "eval.json").is_file()


def test_run_report_after_a_system_bench_eval(tiny_model_dir, data_dir, tmp_path, capsys):
    code, err = invoke(["train", "--model", tiny_model_dir, "--data", "dolly", "--data-dir", data_dir, "--steps", "1",
                        "--batch-size", "2", "--max-examples", "8", "--heldout-size", "4", "--max-seq-len", "96",
                        "--output-dir", tmp_path / "run"], capsys)
    assert code == 0, err[-3000:]
    code, err = invoke(["eval", tmp_path / "run", "--bench", "opendialkg", "--bench", "advbench", "--limit", "2",
                        "--max-new-tokens", "2", "--data-dir", data_dir], capsys)
    assert code == 0, err[-3000:]
    code, err = invoke(["report", tmp_path / "run"], capsys)
    assert code == 0, err[-3000:]
    page = (tmp_path / "run" / "report.html").read_text()
    assert "Evaluation: kg benches" in page and "knowledge F1" in page and "<td>opendialkg</td>" in page
    assert "<td>advbench</td>" in page  # the harmful-prompt bench keeps its table
