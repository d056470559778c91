"""The model card a run's kept model carries (model/README.md): front matter the Hub reads, the recipe and figures
after `train`, the results of `eval` in model-index form (a repeat replaces, never duplicates), data escaped."""

import json
import re
import shutil

import pytest
import yaml

from safebasin import generate, model_card
from safebasin.config import TrainConfig
from safebasin.evaluate import evaluate
from safebasin.train import train


def _front(text: str) -> dict:
    match = re.match(r"---\n(.*?)\n---\n", text, re.DOTALL)
    assert match, text[:300]
    return yaml.safe_load(match.group(1))


def _results(front: dict) -> list[tuple[str, dict]]:
    """(dataset name, metric) for every metric in the model-index."""
    (entry,) = front["model-index"]
    return [(r["dataset"]["name"], m) for r in entry["results"] for m in r["metrics"]]


@pytest.fixture(scope="module")
def finished(tiny_model_dir, data_dir, tmp_path_factory):
    """A plain fine-tune (model/ only: every eval scores one model)."""
    out = tmp_path_factory.mktemp("card") / "run"
    return train(TrainConfig(model=str(tiny_model_dir), data="dolly", data_dir=str(data_dir), steps=2, batch_size=2,
                             max_examples=8, heldout_size=4, max_seq_len=96, output_dir=str(out)), show_progress=False)


@pytest.fixture
def run(finished, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


def test_train_writes_a_card_with_front_matter_recipe_and_figures(tiny_model_dir, data_dir, tmp_path):
    from huggingface_hub import ModelCard

    out = train(TrainConfig(model=str(tiny_model_dir), data="dolly", data_dir=str(data_dir), steps=2, batch_size=2,
                            max_examples=8, heldout_size=4, max_seq_len=96, method="ema", ema_beta=0.9, lr=3e-4,
                            output_dir=str(tmp_path / "run")), show_progress=False)
    text = (out / "model" / "README.md").read_text()
    front = _front(text)
    assert front["base_model"] == str(tiny_model_dir) and front["datasets"] == ["databricks/databricks-dolly-15k"]
    assert {"safebasin", "ema"} <= set(front["tags"]) and front["pipeline_tag"] == "text-generation"
    assert "license" not in front and "# license: not set by safebasin" in text  # the user's to choose
    assert "model-index" not in front and "Not evaluated yet" in text
    summary = json.loads((out / "train_summary.json").read_text())
    assert f"| final training loss | {summary['final_loss']:.4f} |" in text and "| optimizer steps | 2 |" in text
    assert "lr 0.0003" in text and "β = 0.9 (the kept weights are θ̄)" in text and "not measured yet" in text
    assert "set `base_model` in the front matter to its Hub id" in text  # a local base model says so
    card = ModelCard.load(out / "model" / "README.md")  # huggingface_hub reads it
    assert card.data.base_model == str(tiny_model_dir) and "safebasin" in card.data.tags
    assert not (out / "raw" / "README.md").exists()  # the card describes the kept model only


def test_eval_adds_model_index_and_a_repeat_replaces_it(run, data_dir, tmp_path):
    prompts = tmp_path / "mine.txt"
    prompts.write_text("say hi\nsay bye\n")
    first = evaluate(str(run), ["advbench", str(prompts)], run / "eval", limit=2, max_new_tokens=2, data_dir=str(data_dir),
                     utility=True, rouge_limit=2, show_progress=False)
    front = _front((run / "model" / "README.md").read_text())
    (entry,) = front["model-index"]
    adv = next(r for r in entry["results"] if r["dataset"]["name"] == "advbench")
    assert adv["task"] == {"type": "text-generation"} and adv["dataset"]["type"] == "walledai/AdvBench"
    (metric,) = adv["metrics"]
    b = first["models"]["model"]["benchmarks"]["advbench"]
    assert metric["type"] == "harmful_rate" and metric["value"] == b["harmful_rate"] and metric["config"] == "keyword:gcg"
    assert metric["args"] == {"judge": "keyword:gcg", "decoding": "greedy", "max_new_tokens": 2, "n": 2,
                              "ci_low": b["ci_low"], "ci_high": b["ci_high"], "limit": 2}
    loss = next(m for name, m in _results(front) if m["type"] == "loss")
    assert loss["value"] == first["models"]["model"]["utility"]["heldout_loss"]
    text = (run / "model" / "README.md").read_text()
    assert f"| held-out loss | {loss['value']:.4f} (safebasin eval --utility) |" in text  # the figures fill in
    assert text.count("| advbench | harmful rate |") == 1

    # the same bench and judge again, on 3 prompts: replaced in place; the other bench and utility stay
    second = evaluate(str(run), ["advbench"], run / "eval2", limit=3, max_new_tokens=2, data_dir=str(data_dir),
                      show_progress=False)
    text = (run / "model" / "README.md").read_text()
    results = _results(_front(text))
    adv = [m for name, m in results if name == "advbench"]
    assert len(adv) == 1 and adv[0]["args"]["n"] == 3
    assert adv[0]["value"] == second["models"]["model"]["benchmarks"]["advbench"]["harmful_rate"]
    assert [name for name, _ in results].count("mine") == 1 and any(m["type"] == "loss" for _, m in results)
    assert text.count("| advbench | harmful rate |") == 1 and "first 3 prompts" in text


def test_user_edits_outside_the_generated_blocks_survive_an_eval(run, data_dir):
    path = run / "model" / "README.md"
    text = path.read_text().replace("# license: not set by safebasin", "license: mit\n# license: not set by safebasin")
    path.write_text(text + "\n## My notes\n\nTrained on a Tuesday.\n")
    evaluate(str(run), ["advbench"], run / "eval", limit=1, max_new_tokens=1, data_dir=str(data_dir), show_progress=False)
    text = path.read_text()
    assert _front(text)["license"] == "mit" and "# license: not set" not in text
    assert text.endswith("## My notes\n\nTrained on a Tuesday.\n") and "model-index" in _front(text)


def test_data_and_generations_never_reach_the_card_raw(run, data_dir, tmp_path, monkeypatch):
    evil = "<script>alert(1)</script> [click](javascript:alert(1)) ![x](y) # heading | cell <img src=x onerror=alert(1)>"
    monkeypatch.setattr(generate.HFBackend, "generate", lambda self, prompts, max_new_tokens, desc="": [evil] * len(prompts))
    bench = tmp_path / "x<script>alert(1)<b>[click](javascript:alert(1)) #h.txt"
    bench.write_text(evil.replace("#", "") + "\n")
    results = evaluate(str(run), [str(bench)], run / "eval", max_new_tokens=4, data_dir=str(data_dir), show_progress=False)
    gens = (run / "eval" / "generations.jsonl").read_text()
    assert evil in json.loads(gens.splitlines()[0])["response"]  # the generation went through eval ...
    text = (run / "model" / "README.md").read_text()
    for raw in ("<script", "<img", "<b>", "](javascript", "![x]", "onerror=alert(1)>"):
        assert raw not in text, raw  # ... but neither it nor the file's name is in the card as markup
    front = _front(text)
    ((name, metric),) = [(n, m) for n, m in _results(front)]
    assert metric["value"] == next(iter(results["models"]["model"]["benchmarks"].values()))["harmful_rate"]
    assert "<" not in name and "(" not in name
    assert model_card.md("<script>a</script> [l](u) #") == "&lt;script&gt;a&lt;/script&gt; \\[l\\]\\(u\\) \\#"


def test_card_writes_are_atomic_and_a_broken_card_is_left_alone(run, data_dir, monkeypatch, caplog):
    path = run / "model" / "README.md"
    path.write_text("---\nmodel-index: 3\n---\nmine\n")  # a front matter huggingface_hub cannot read
    with caplog.at_level("WARNING"):
        evaluate(str(run), ["advbench"], run / "eval", limit=1, max_new_tokens=1, data_dir=str(data_dir), show_progress=False)
    assert path.read_text() == "---\nmodel-index: 3\n---\nmine\n" and "model card not written" in caplog.text
    path.unlink()
    seen = []
    real = model_card.atomic.write_text
    monkeypatch.setattr(model_card.atomic, "write_text", lambda p, text: seen.append(p) or real(p, text))
    model_card.write(run)
    assert seen == [path] and _front(path.read_text())["base_model"]  # rebuilt from config.yaml and the summary


def test_a_run_evaluated_on_the_panel_still_gets_its_card(run, data_dir):
    """`eval RUN --bench panel:...` once lost the card: the suite loop rebound the name of the model being scored."""
    evaluate(str(run), ["panel:check"], run / "eval-panel", sample=1, max_new_tokens=2, data_dir=str(data_dir),
             show_progress=False)
    names = {name for name, _ in _results(_front((run / "model" / "README.md").read_text()))}
    assert {"jbb", "Q-Harm", "I-CoNa", "I-Controversial"} <= names
