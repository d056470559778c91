"""SURGE and the KG baselines through the one training loop, on the tiny model and the real OpenDialKG data."""

import json

import pytest
import torch

from safebasin import methods
from safebasin.config import TrainConfig, build
from safebasin.evaluate import evaluate_model, load_bench, run_method
from safebasin.judges import keyword_judge
from safebasin.kg import knowledge
from safebasin.kg.methods import SurgeModel, SurgeSettings, _supervised
from safebasin.kg.surge import SurgeModules, TextEncoder, knowledge_for, sample_subgraphs
from safebasin.train import train

from conftest import run_cli


def _cfg(model, out, data_dir, **kw):
    return build(TrainConfig, dict(model=str(model), output_dir=str(out), data_dir=str(data_dir), data="opendialkg",
                                   steps=2, batch_size=4, max_seq_len=256, max_examples=48, heldout_size=8, lr=1e-3,
                                   filter_safety=False) | kw, "test")


@pytest.fixture(scope="module")
def surge_run(tiny_model_dir, data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("kg") / "surge"
    train(_cfg(tiny_model_dir, out, data_dir, method="surge", method_args={"retriever_warmup_steps": 3}),
          overwrite=True, show_progress=False)
    return out


def test_surge_trains_every_part_and_saves_a_generator_that_loads_anywhere(surge_run):
    logs = [json.loads(line) for line in (surge_run / "train_log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in logs] == [1, 2]
    assert all({"marginal_nll", "retrieval_sup", "contrastive"} <= set(x) for x in logs)
    folder = surge_run / "model"
    assert {"surge.json", "surge.safetensors", "model.safetensors", "config.json"} <= {p.name for p in folder.iterdir()}
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(folder)  # the generator alone: a plain save_pretrained folder
    model, tok, cls = methods.load_model_folder(folder)
    assert cls.name == "surge" and isinstance(model, SurgeModel)
    for (n, a), (_, b) in zip(plain.state_dict().items(), model.lm.state_dict().items()):
        assert torch.equal(a, b), n
    pointer = json.loads((folder / "surge.json").read_text())
    assert pointer["settings"]["k_subgraphs"] == 4 and len(pointer["relations"]) == 1358  # the relations file: 1,358 lines (the README says 1,357)


def test_eval_retrieves_scores_and_runs_the_counterfactual(surge_run, data_dir):
    bench = load_bench("opendialkg", str(data_dir), limit=4)
    model, tok, _ = methods.load_model_folder(surge_run / "model")
    method, _ = run_method(str(surge_run))
    entry, rows = evaluate_model(model, tok, "surge", [bench], keyword_judge("gcg", str(data_dir)), max_new_tokens=4,
                                 batch_size=4, show_progress=False, context={"method": method, "seed": 0})
    r = entry["benchmarks"]["opendialkg"]
    assert r["knowledge"] == "surge" and r["n"] == 4 and "fewer distractors" in r["note"]
    assert 0 <= r["retrieval"]["mrr"] <= 1 and r["retrieval"]["n"] == 4
    assert r["counterfactual"]["n"] == 4
    for row in rows:
        assert len(row["knowledge"]) == 3 and len(row["knowledge_scores"]) == 3
        assert row["knowledge_scores"] == sorted(row["knowledge_scores"], reverse=True)
        assert [t[:2] for t in row["swapped_knowledge"]] == [t[:2] for t in row["knowledge"]]  # same anchor and relation
        assert all(s[2] != t[2] for s, t in zip(row["swapped_knowledge"], row["knowledge"]))


@pytest.mark.parametrize("facts_as_text, plain_text", [
    (False, "Call Me Maybe, Carly Rae Jepsen, Golf, Jordan Spieth"),
    (True, "Call Me Maybe | Composer | Carly Rae Jepsen; Jordan Spieth | Sport played | Golf")])
def test_the_invariant_encoding_ignores_triple_order_and_direction(tiny_model_dir, data_dir, facts_as_text, plain_text):
    from safebasin import models
    from safebasin.kg.methods import relation_vocabulary

    lm, tok = models.load(str(tiny_model_dir))
    torch.manual_seed(0)
    modules = SurgeModules(relation_vocabulary(str(data_dir)), lm.config.hidden_size)
    torch.nn.init.normal_(modules.film.weight, std=0.5)  # a trained FiLM, not the zero start
    model = SurgeModel(lm, modules, TextEncoder(), SurgeSettings(facts_as_text=facts_as_text))
    meta = {"context": [{"role": "user", "content": "Do you like Call Me Maybe?"}]}
    a = [["Call Me Maybe", "Composer", "Carly Rae Jepsen"], ["Golf", "~Sport played", "Jordan Spieth"]]
    b = [["Jordan Spieth", "Sport played", "Golf"], ["Carly Rae Jepsen", "~Composer", "Call Me Maybe"]]
    fa = sorted({knowledge.canonical(t) for t in a})
    fb = sorted({knowledge.canonical(t) for t in b})
    with torch.no_grad():
        ea, ma, _, _ = model.inputs(tok, [meta], [fa], None)
        eb, mb, _, _ = model.inputs(tok, [meta], [fb], None)
        plain = lm.get_input_embeddings()(tok(tok.apply_chat_template(
            knowledge.messages(meta["context"], plain_text),
            add_generation_prompt=True, tokenize=False), add_special_tokens=False, return_tensors="pt")["input_ids"])
    assert torch.equal(ea, eb) and torch.equal(ma, mb)
    assert ea.shape == plain.shape and not torch.equal(ea, plain)  # FiLM moved the entity tokens only
    changed = (ea != plain).any(-1)[0]
    assert 0 < int(changed.sum()) < ea.shape[1]


def test_facts_as_text_marks_every_entity_mention_for_film():
    facts = sorted({knowledge.canonical(t) for t in [["Golf", "~Sport played", "Jordan Spieth"],
                                                      ["Jordan Spieth", "Award", "Masters"]]})
    text, spans = knowledge_for(facts, invariant=True, facts_as_text=True)
    assert text == knowledge.facts_text(facts) == "Jordan Spieth | Award | Masters; Jordan Spieth | Sport played | Golf"
    assert [(e, text[a:b]) for e, a, b in spans] == [(e, e) for e in ("Jordan Spieth", "Masters", "Jordan Spieth", "Golf")]
    assert knowledge_for(facts, invariant=False) == (text, [])  # the ablation: the same text, nothing for FiLM
    assert knowledge_for(facts, invariant=True)[0] == "Golf, Jordan Spieth, Masters"


def test_subgraph_sampling_and_the_supervised_term():
    scores = torch.tensor([0.0, 3.0, 1.0, 2.0, -1.0])
    assert sample_subgraphs(scores, 3, 4, greedy=True) == [[1, 3, 2]]
    torch.manual_seed(0)
    draws = sample_subgraphs(scores, 3, 4, greedy=False)
    assert len(draws) == 4 and draws[0] == [1, 3, 2] and all(len(set(d)) == 3 for d in draws)
    meta = {"gold": [["B", "~r", "A"]], "candidates": [["X", "r", "Y"], ["A", "r", "B"]]}
    assert float(_supervised(meta, torch.tensor([0.0, float(torch.log(torch.tensor(3.0)))]))) == pytest.approx(-torch.log(torch.tensor(0.75)))


def test_ablation_switches_change_the_loss_terms(tiny_model_dir, data_dir, tmp_path):
    run = train(_cfg(tiny_model_dir, tmp_path / "abl", data_dir, method="surge", steps=1,
                     method_args={"retriever": False, "contrastive": False}), overwrite=True, show_progress=False)
    log = json.loads((run / "train_log.jsonl").read_text().splitlines()[0])
    assert "marginal_nll" in log and "retrieval_sup" not in log and "contrastive" not in log


def test_the_retriever_learns_at_its_own_lr_and_the_film_head_at_the_generators(tiny_model_dir, data_dir):
    """The retriever's lr is lr × module_lr_scale (default 0.01, chosen on the validation split); FiLM stays at lr."""
    from safebasin.kg.methods import SurgeSettings

    assert SurgeSettings().module_lr_scale == 0.01
    cfg = _cfg(tiny_model_dir, "/nonexistent", data_dir, method="surge", method_args={"module_lr_scale": 10})
    m = methods.get("surge")(cfg)
    m.args = m.settings(cfg)
    named = [("lm.w", torch.nn.Parameter(torch.zeros(1))), ("surge.query.weight", torch.nn.Parameter(torch.zeros(1))),
             ("surge.film.weight", torch.nn.Parameter(torch.zeros(1)))]
    groups = m.param_groups(named)
    assert [id(p) for p in groups[0]["params"]] == [id(named[0][1]), id(named[2][1])] and "lr" not in groups[0]
    assert groups[1]["params"] == [named[1][1]] and groups[1]["lr"] == pytest.approx(1e-2)


def test_baseline_knowledge_goes_in_the_prompt(tiny_model_dir, data_dir, tmp_path):
    run = train(_cfg(tiny_model_dir, tmp_path / "gold", data_dir, method="kg-prompt", steps=1,
                     method_args={"knowledge": "gold"}), overwrite=True, show_progress=False)
    method, _ = run_method(str(run))
    meta = {"context": [{"role": "user", "content": "hi"}], "gold": [["Golf", "~Sport played", "Jordan Spieth"]],
            "candidates": []}
    assert method.prompt(meta) == [{"role": "user", "content": "(Facts you can use: Jordan Spieth | Sport played | Golf)\nhi"}]


def test_kg_mistakes_are_one_line_errors(tiny_model_dir, data_dir, tmp_path):
    r = run_cli("train", "--model", tiny_model_dir, "--method", "surge", "--data", "dolly", "--data-dir", data_dir,
                "--steps", "1", "--output-dir", tmp_path / "x")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "train on opendialkg" in r.stderr
    r = run_cli("train", "--model", tiny_model_dir, "--method", "surge", "--lora-r", "4", "--data-dir", data_dir,
                "--steps", "1", "--output-dir", tmp_path / "y")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "lora_r must be 0" in r.stderr
    (tmp_path / "bad.yaml").write_text("method: kg-prompt\nmethod_args: {knowledge: psychic}\n")
    r = run_cli("train", "--config", tmp_path / "bad.yaml", "--model", tiny_model_dir, "--data-dir", data_dir,
                "--steps", "1", "--output-dir", tmp_path / "z")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "knowledge" in r.stderr


def test_the_kg_demo_config_checks_its_surge_settings_before_any_arm_trains(tmp_path):
    """`surge:` is checked against SurgeSettings when the config loads, before any arm trains: a typo is one line naming the file."""
    from safebasin.errors import UserError
    from safebasin.kg.demo import kg_config

    good = tmp_path / "kg.yaml"
    good.write_text("surge: {module_lr_scale: 1.0}\nk_subgraphs: 3\n")
    assert kg_config("default", str(good)).surge == {"module_lr_scale": 1.0}
    bad = tmp_path / "bad.yaml"
    bad.write_text("surge: {module_lr_scal: 1.0}\n")
    with pytest.raises(UserError, match=r"bad.yaml: surge: .*module_lr_scal: unknown key"):
        kg_config("default", str(bad))
    with pytest.raises(UserError, match=r"k_subgraphs"):
        kg_config("default", None, {"surge": {"k_subgraphs": 9}})
    with pytest.raises(UserError, match=r"facts_as_text .*needs invariant: true"):
        kg_config("default", None, {"surge": {"facts_as_text": True, "invariant": False}})
    assert kg_config("default", None, {"bench": "opendialkg-validation"}).bench == "opendialkg-validation"
    with pytest.raises(UserError, match=r"bench"):  # only the two OpenDialKG benches: a safety bench has no KG fields
        kg_config("default", None, {"bench": "advbench"})
    quick, default = kg_config("quick"), kg_config("default")
    assert quick.arms == ["no knowledge", "SURGE"]  # the two rows CI compares ...
    assert (quick.steps, quick.turns) == (default.steps, default.turns)  # ... at the default demo's scale


def test_a_long_history_is_trimmed_from_its_oldest_end_and_a_turn_that_cannot_fit_is_skipped(caplog):
    from safebasin import models
    from safebasin.kg.methods import _trimmed, fit_context

    tok = models.tiny_tokenizer()
    context = [{"role": "user", "content": "old " * 200}, {"role": "assistant", "content": "middle"},
               {"role": "user", "content": "last question?"}]
    assert fit_context(tok, context, "", "an answer", max_len=10_000) == context
    # trimmed to a suffix the user opens: strict templates (Mistral, Gemma) refuse one the assistant opens
    assert fit_context(tok, context, "", "an answer", max_len=120) == context[2:]
    assert fit_context(tok, context, "", "an answer " * 100, max_len=120) is None
    rows = [{"meta": {"context": context, "response": r, "candidates": []}} for r in ("short", "long " * 300)]
    with caplog.at_level("INFO"):
        kept = _trimmed(rows, tok, 120, "opendialkg", lambda m: "")
    assert [r["meta"]["response"] for r in kept] == ["short"] and kept[0]["meta"]["context"] == context[2:]
    assert "1 of 2 turns skipped" in caplog.text
    with pytest.raises(Exception, match="every turn is longer than max_seq_len=8"):
        _trimmed(rows, tok, 8, "opendialkg", lambda m: "")
