"""The seam new systems build on: a method, a data set and a bench registered from outside the loop
and the CLI, then used through them unchanged."""

import json

import pytest

from conftest import load_state
from safebasin import data, evaluate, methods
from safebasin.config import TrainConfig
from safebasin.train import train


@methods.register
class HalfLossWithTerm(methods.Method):
    """A plug-in with its own loss and a named extra term, as ADLM or SURGE will have."""

    name = "test-half-loss"

    def loss(self, model, batch, n_items):
        full = model(**batch, num_items_in_batch=n_items).loss
        return 0.5 * full, {"full_loss": float(full.detach())}


def _cfg(tiny_model_dir, data_dir, out, **kw):
    base = dict(model=str(tiny_model_dir), data="dolly", data_dir=str(data_dir), max_examples=16, heldout_size=4,
                max_seq_len=96, batch_size=4, steps=2, lr=1e-3, seed=0, output_dir=str(out))
    return TrainConfig(**(base | kw))


def test_a_registered_method_trains_through_the_same_loop_with_ema(tiny_model_dir, data_dir, tmp_path):
    assert "test-half-loss" in methods.names()
    out = train(_cfg(tiny_model_dir, data_dir, tmp_path / "r", method="test-half-loss", ema_beta=0.0), show_progress=False)
    rows = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:  # the loop logged the method's loss and its named term
        assert r["loss"] == pytest.approx(0.5 * r["full_loss"], abs=2e-6)
    # the EMA is the loop's own step for any method: β = 0 keeps exactly the live weights
    kept, raw = load_state(out / "model"), load_state(out / "raw")
    assert all((kept[k] == raw[k]).all() for k in kept)
    assert json.loads((out / "train_summary.json").read_text())["method"] == "test-half-loss"


def test_halving_the_loss_changes_the_run_relative_to_sft(tiny_model_dir, data_dir, tmp_path):
    half = train(_cfg(tiny_model_dir, data_dir, tmp_path / "half", method="test-half-loss", grad_clip=None, lr=1e-4,
                      schedule="constant"), show_progress=False)
    sft = train(_cfg(tiny_model_dir, data_dir, tmp_path / "sft", grad_clip=None, lr=1e-4, schedule="constant"),
                show_progress=False)
    first = [json.loads((p / "train_log.jsonl").read_text().splitlines()[0]) for p in (half, sft)]
    assert first[0]["full_loss"] == pytest.approx(first[1]["loss"], abs=2e-6)  # same model, same batch
    assert first[0]["grad_norm"] == pytest.approx(0.5 * first[1]["grad_norm"], rel=1e-4)  # the loss the loop used


def test_a_registered_bench_with_its_own_reader_is_evaluated_by_name(tiny_model_dir, tmp_path):
    root = tmp_path / "data"
    (root / "mine").mkdir(parents=True)
    (root / "mine" / "prompts.psv").write_text("topic|question\nfood|What is bread?\nsky|Why is it blue?\n")

    def read_psv(path):
        header, *lines = path.read_text().splitlines()
        keys = header.split("|")
        return [dict(zip(keys, line.split("|"))) | {"_where": f"line {n}"} for n, line in enumerate(lines, 2)]

    data.register_bench("test-psv", data.Named("mine/prompts.psv", None, prompt_field="question", category_field="topic",
                                               reader=read_psv, kind="over-refusal"))
    assert data.is_bench("test-psv")
    refusals = tmp_path / "refusals.json"
    refusals.write_text('["I cannot"]')
    results = evaluate.evaluate(str(tiny_model_dir), ["test-psv"], tmp_path / "eval", data_dir=str(root), max_new_tokens=2,
                                refusal_list=str(refusals), show_progress=False)
    bench = results["models"]["model"]["benchmarks"]["test-psv"]
    assert bench["n"] == 2 and bench["kind"] == "over-refusal" and set(bench["by_category"]) == {"food", "sky"}


def test_registering_a_different_entry_under_a_taken_name_is_refused():
    with pytest.raises(ValueError, match="registered twice"):
        data.register_bench("advbench", data.Named("elsewhere.csv", None))

    class Clash(methods.Method):
        name = "sft"

    with pytest.raises(ValueError, match="registered twice"):
        methods.register(Clash)


def test_a_fifth_system_brings_its_own_bench_kind_and_eval_setting_through_the_real_cli(tiny_model_dir, tmp_path,
                                                                                           capsys, monkeypatch):
    """Issue #35's seam: a toy system registers a bench kind with its own setting (`unit`) and headline, and the
    real `safebasin eval` takes `--bench-arg unit=words`, validates it, scores and prints the kind's own table,
    with no change to cli.py or evaluate.py."""
    from typing import Literal

    from pydantic import BaseModel, ConfigDict

    from safebasin import ui
    from safebasin.generate import HFBackend
    from test_bad_input import invoke

    class LengthSettings(BaseModel):
        model_config = ConfigDict(extra="forbid")
        unit: Literal["chars", "words"] = "chars"

    def score_length(model, tok, bench, *, label, batch_size, max_new_tokens, unit="chars", **_):
        replies = HFBackend(model, tok, batch_size, show_progress=False).generate(bench.prompts, max_new_tokens or 4)
        sizes = [len(r.split()) if unit == "words" else len(r) for r in replies]
        return ({"kind": "reply-length", "n": len(sizes), "unit": unit, "mean_length": sum(sizes) / len(sizes)},
                [{"benchmark": bench.name, "index": i, "prompt": p, "response": r, "length": s}
                 for i, (p, r, s) in enumerate(zip(bench.prompts, replies, sizes))])

    root = tmp_path / "data"
    (root / "toy").mkdir(parents=True)
    (root / "toy" / "prompts.jsonl").write_text('{"prompt": "Say hi."}\n{"prompt": "Count to three."}\n')
    evaluate.register_bench_kind("reply-length", score_length, settings=LengthSettings,
                                 headline=[("mean reply length", "mean_length", "{:.2f}"), ("unit", "unit", "{}")],
                                 title="reply length (toy system)")
    data.register_bench("toy-prompts", data.Named("toy/prompts.jsonl", None, prompt_field="prompt", kind="reply-length"))
    monkeypatch.setattr(ui.out, "width", 250)
    try:
        base = ["eval", tiny_model_dir, "--bench", "toy-prompts", "--max-new-tokens", "3", "--data-dir", root]
        with ui.out.capture() as table:
            code, err = invoke([*base, "--bench-arg", "unit=words", "--output-dir", tmp_path / "ok"], capsys)
        assert code == 0, err[-3000:]
        assert "reply length (toy system)" in table.get() and "mean reply length" in table.get() and "words" in table.get()
        saved = json.loads((tmp_path / "ok" / "eval.json").read_text())
        result = saved["models"]["model"]["benchmarks"]["toy-prompts"]
        assert result["unit"] == "words" and result["n"] == 2 and result["mean_length"] >= 0
        assert saved["settings"]["bench_args"] == {"reply-length": {"unit": "words"}}
        for arg, fragment in (("unit=bytes", "bench setting unit=bytes (--bench-arg or its flag): reply-length benches: "
                                             "Input should be 'chars' or 'words'"),
                              ("colour=red", "bench setting colour (--bench-arg or its flag): no bench of this eval takes "
                                             "it (settings by bench kind: reply-length: unit)"),
                              ("unit", "--bench-arg unit: expected KEY=VALUE")):
            code, err = invoke([*base, "--bench-arg", arg, "--output-dir", tmp_path / "bad"], capsys)
            assert code == 2 and fragment in " ".join(err.split()) and "Traceback" not in err, err
            assert not (tmp_path / "bad" / "eval.json").exists()
    finally:
        data.BENCH_SETS.unregister("toy-prompts")
        evaluate.BENCH_KINDS.unregister("reply-length")
