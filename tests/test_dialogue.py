"""Context-dependent instruction tuning through the one loop, on a tiny model: the training target is
"Instruction: ... / Response: ...", eval writes the instruction first and scores the response only, and
the diagnostics give the gold or a shuffled instruction."""

import pytest

from safebasin import data, methods
from safebasin.config import TrainConfig, build, read_yaml
from safebasin.dialogue.methods import FIXED_INSTRUCTION, split_target, target
from safebasin.errors import UserError
from safebasin.evaluate import evaluate_model, load_bench
from safebasin.judges import keyword_judge
from safebasin.train import train


def _cfg(tiny_model_dir, data_dir, out, **kw):
    base = dict(model=str(tiny_model_dir), method="context-instruct", data_dir=str(data_dir), max_examples=32,
                heldout_size=8, max_seq_len=128, batch_size=4, steps=2, lr=1e-3, seed=0, output_dir=str(out))
    return TrainConfig(**(base | kw))


def test_targets_hold_the_instruction_then_the_response(data_dir, tiny_model_dir, tmp_path):
    cfg = _cfg(tiny_model_dir, data_dir, tmp_path / "x", method_args={"levels": ["act", "emotion"]})
    rows, _, _ = data.load_for_training(cfg)
    prepared = methods.get("context-instruct")(cfg).prepare_rows(rows)
    first = prepared[0]
    assert first["messages"][:-1] == rows[0]["messages"][:-1]
    instruction, response = split_target(first["messages"][-1]["content"])
    assert response == rows[0]["meta"]["response"] and instruction == first["meta"]["instruction"]
    assert instruction.startswith(("Share information", "Ask a question", "Make a suggestion", "Accept, refuse"))
    fixed = methods.get("fixed-instruct")(cfg).prepare_rows(rows[:2])
    assert fixed[0]["messages"][0] == {"role": "system", "content": FIXED_INSTRUCTION}
    assert split_target(target("Ask a question.", "Why?")) == ("Ask a question.", "Why?")
    assert split_target("no format here") == (None, "no format here")


def test_context_instruct_trains_and_is_scored_on_its_response(tiny_model_dir, data_dir, tmp_path):
    run = train(_cfg(tiny_model_dir, data_dir, tmp_path / "run"), show_progress=False)
    cfg = build(TrainConfig, read_yaml(run / "config.yaml"))
    model, tok, _ = methods.load_model_folder(run / "model")
    bench = load_bench("dailydialog", str(data_dir), limit=4)
    method = methods.get("context-instruct")(cfg)
    results = {}
    for mode in ("self", "gold", "shuffled"):
        entry, rows = evaluate_model(model, tok, mode, [bench], keyword_judge("gcg", str(data_dir)), max_new_tokens=8,
                                     batch_size=4, show_progress=False,
                                     context={"method": method, "data_dir": str(data_dir), "instruction_mode": mode})
        results[mode] = (entry["benchmarks"]["dailydialog"], rows)
    b, rows = results["self"]
    assert b["n"] == 4 and 0 <= b["rougeL"] <= 1 and 0 <= b["unigram_f1"] <= 1 and "bleu-4" in b
    assert b["instruction_act"]["n"] == 4 and 0 <= b["act_majority_baseline"] <= 1
    gold_rows = results["gold"][1]
    assert all(r["instruction"] and not r["response"].startswith("Instruction") for r in gold_rows)
    shuffled = [r["instruction"] for r in results["shuffled"][1]]
    assert sorted(shuffled) == sorted(r["instruction"] for r in gold_rows)


def test_dialogue_methods_refuse_rows_without_turn_labels(tiny_model_dir, data_dir, tmp_path):
    with pytest.raises(UserError, match="need rows with per-turn labels"):
        train(_cfg(tiny_model_dir, data_dir, tmp_path / "y", data="dolly"), show_progress=False)
    with pytest.raises(UserError, match="unknown level"):
        build(TrainConfig, {"method": "context-instruct", "method_args": {"levels": ["mood"]}})


def test_the_quick_dialogue_demo_trains_only_the_arm_ci_checks_and_a_bad_baseline_is_one_line(tmp_path):
    """--quick trains context-instruct alone (CI compares it with zero-shot); the default trains both baselines too."""
    from safebasin.dialogue.demo import dialogue_config, trained_arms

    assert list(trained_arms(dialogue_config("quick"))) == ["context-instruct"]
    default = trained_arms(dialogue_config("default"))
    assert default == {"response-ft": {"method": "sft"}, "fixed-instruct": {"method": "fixed-instruct"},
                       "context-instruct": {"method": "context-instruct",
                                            "method_args": {"levels": ["act", "emotion", "keywords"]}}}
    bad = tmp_path / "d.yaml"
    bad.write_text("baselines: [response-ft, few-shot]\n")
    with pytest.raises(UserError, match=r"d.yaml.*baselines"):
        dialogue_config("default", str(bad))
