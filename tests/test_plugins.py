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
