"""Property-based fuzzing: random files and configs give a valid result or the one-line error, never a crash."""

import csv
import io
import json
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from safebasin import data
from safebasin.config import load_train_config
from safebasin.errors import UserError
from safebasin.evaluate import load_bench

KEYS = ["instruction", "input", "output", "context", "response", "question", "chosen", "system", "messages", "prompt",
        "completion", "goal", "role", "content", "x"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=20))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.sampled_from(KEYS), inner, max_size=3)), max_leaves=8)
rows = st.lists(st.one_of(st.dictionaries(st.sampled_from(KEYS), values, max_size=5), values), max_size=6)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _check_examples(path: Path):
    try:
        examples, _ = data.load_examples(str(path))
    except UserError as e:
        assert "\n" not in str(e) and str(path) in str(e)
        return
    for ex in examples:
        assert ex and ex[-1]["role"] == "assistant" and all(isinstance(m["content"], str) for m in ex)


@FUZZ
@given(rows)
def test_random_jsonl_and_json(rs):
    with tempfile.TemporaryDirectory() as d:
        jl = Path(d) / "x.jsonl"
        jl.write_text("".join(json.dumps(r) + "\n" for r in rs))
        _check_examples(jl)
        js = Path(d) / "x.json"
        js.write_text(json.dumps(rs))
        _check_examples(js)


@FUZZ
@given(st.text(max_size=300))
def test_random_text_as_jsonl_csv_and_bench(text):
    with tempfile.TemporaryDirectory() as d:
        for name in ("x.jsonl", "x.json", "x.csv"):
            p = Path(d) / name
            p.write_text(text)
            _check_examples(p)
            try:
                bench = load_bench(str(p))
                assert all(isinstance(x, str) and x for x in bench.prompts)
            except UserError as e:
                assert "\n" not in str(e)


@FUZZ
@given(st.lists(st.dictionaries(st.sampled_from(KEYS), st.text(max_size=15), min_size=1, max_size=4), max_size=5))
def test_random_csv_tables(table):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "x.csv"
        header = sorted({k for r in table for k in r}) or ["x"]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=header)
        w.writeheader()
        w.writerows(table)
        p.write_text(buf.getvalue())
        _check_examples(p)


config_values = st.dictionaries(
    st.sampled_from(["lr", "batch_size", "steps", "ema_beta", "seed", "schedule", "model", "lora_r", "bogus", "epochs",
                     "grad_clip", "mixed_precision", "warmup_steps"]),
    st.one_of(scalars, st.lists(scalars, max_size=2)), max_size=6)


@FUZZ
@given(st.one_of(config_values.map(yaml.safe_dump), st.text(max_size=200)))
def test_random_yaml_configs(text):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "c.yaml"
        p.write_text(text)
        try:
            cfg = load_train_config(p)
        except UserError as e:
            assert "\n" not in str(e) and "c.yaml" in str(e)
            return
        assert cfg.lr > 0 and cfg.batch_size >= 1 and (cfg.ema_beta is None or 0 <= cfg.ema_beta <= 1)
