"""OpenDialKG reading, the KG, entity linking, knowledge sources and the KG metrics (no model)."""

import json

import pytest

from safebasin.errors import UserError
from safebasin.kg import data as kg_data
from safebasin.kg import knowledge, metrics
from safebasin.kg.bench import swapped


@pytest.fixture(scope="module")
def real(data_dir):
    csv = data_dir / "opendialkg" / kg_data.CSV_FILE
    kg, parts = kg_data.load(csv)
    return csv, kg, parts


def test_the_real_subset_reads_with_counted_skips_and_a_dialogue_split(real):
    csv, kg, parts = real
    assert parts["skipped"] == {"malformed_json": 0, "no_assistant_turn": 124, "bad_triple_arity": 2, "unknown_relation": 1}
    sizes = {k: len(parts[k]) for k in ("train", "validation", "test")}
    assert sizes == {"train": 1362, "validation": 292, "test": 292}
    wheres = [{d["_where"] for d in parts[k]} for k in ("train", "validation", "test")]
    assert not (wheres[0] & wheres[1]) and not (wheres[0] & wheres[2]) and not (wheres[1] & wheres[2])
    assert len(kg.facts) == 3992 and all(not r.startswith("~") for r in kg.relations)


def test_the_bench_is_the_test_split_turns_with_a_gold_path_found_among_their_candidates(real):
    csv, kg, parts = real
    rows = kg_data.read_bench(csv)
    assert len(rows) == 405 and all(r["gold"] for r in rows)
    found = sum(any(t in r["candidates"] for t in r["gold"]) for r in rows)  # oriented like the data's own paths
    assert found == 353
    train_dialogues = {d["_where"] for d in parts["train"]}
    assert not any(r["_where"].split(",")[0] in train_dialogues for r in rows)


def test_the_validation_bench_is_its_own_dialogues_for_choosing_settings(real, data_dir):
    """`opendialkg-validation` (where SURGE's settings are chosen) shares no dialogue with the test bench or training."""
    from safebasin.evaluate import load_bench

    val, test = load_bench("opendialkg-validation", str(data_dir)), load_bench("opendialkg", str(data_dir))
    assert (len(val.prompts), len(test.prompts)) == (400, 405) and val.kind == test.kind == "kg"
    dialogue = lambda r: r["_where"].split(",")[0]  # noqa: E731
    assert not {dialogue(r) for r in val.rows} & {dialogue(r) for r in test.rows}
    assert not {dialogue(r) for r in val.rows} & {d["_where"] for d in real[2]["train"]}


def test_linking_matches_whole_words_most_recent_first(real):
    _, kg, _ = real
    assert kg.link("I like Jordan Spieth, and golf too")[:2] == ["Golf", "Jordan Spieth"]
    assert "Golf" not in kg.link("golfer")


def _write(tmp_path, rows, relations=("Sport played", "Composer")):
    d = tmp_path / "opendialkg"
    d.mkdir(exist_ok=True)
    (d / kg_data.RELATIONS_FILE).write_text("\n".join(relations) + "\n")
    import csv

    with (d / kg_data.CSV_FILE).open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Messages", "User Rating", "Assistant Rating"])
        for r in rows:
            w.writerow([r if isinstance(r, str) else json.dumps(r), "{}", "{}"])
    return d / kg_data.CSV_FILE


def _dialogue(path):
    return [{"type": "chat", "sender": "user", "message": "Do you know Jordan Spieth?"},
            {"type": "action", "action_id": "kgwalk/choose_path", "sender": "assistant",
             "metadata": {"path": [-1, path, ""]}},
            {"type": "chat", "sender": "assistant", "message": "He plays Golf."}]


def test_bad_rows_are_counted_skips_never_a_traceback(tmp_path):
    csv = _write(tmp_path, [
        "[{not json",  # malformed Messages JSON
        _dialogue([["Jordan Spieth", "Sport played"]]),  # a path triple with the wrong arity
        _dialogue([["Jordan Spieth", "Plays for", "Golf"]]),  # an unknown relation
        [{"type": "chat", "sender": "user", "message": "hello"}],  # no assistant turn
        _dialogue([["Jordan Spieth", "Sport played", "Golf"]]),  # good
    ])
    dialogues, skipped = kg_data.read_dialogues(csv)
    assert skipped == {"malformed_json": 1, "no_assistant_turn": 1, "bad_triple_arity": 1, "unknown_relation": 1}
    assert len(dialogues) == 3  # the bad-path dialogues stay, without a gold path
    assert [d["messages"][1]["path"] for d in dialogues] == [None, None, [("Jordan Spieth", "Sport played", "Golf")]]


def test_a_csv_without_messages_is_a_one_line_error(tmp_path):
    d = tmp_path / "opendialkg"
    d.mkdir()
    (d / kg_data.RELATIONS_FILE).write_text("Composer\n")
    (d / kg_data.CSV_FILE).write_text("Text,Other\nhello,1\n")
    with pytest.raises(UserError, match=r"opendialkg_subset.csv: no 'Messages' column"):
        kg_data.read_dialogues(d / kg_data.CSV_FILE)


def test_a_fact_reads_the_same_in_either_direction():
    fwd, rev = ["Carly Rae Jepsen", "~Composer", "Call Me Maybe"], ["Call Me Maybe", "Composer", "Carly Rae Jepsen"]
    assert kg_data.canonical(fwd) == kg_data.canonical(rev) == ("Call Me Maybe", "Composer", "Carly Rae Jepsen")
    assert kg_data.linearise(fwd) == kg_data.linearise(rev) == "Call Me Maybe | Composer | Carly Rae Jepsen"
    assert kg_data.oriented(kg_data.canonical(fwd), "Carly Rae Jepsen") == tuple(fwd)
    triples = [fwd, ["Golf", "~Sport played", "Jordan Spieth"]]
    assert knowledge.entities_of(triples) == knowledge.entities_of([triples[1], rev]) == [
        "Call Me Maybe", "Carly Rae Jepsen", "Golf", "Jordan Spieth"]


def test_knowledge_sources():
    ex = {"context": [{"role": "user", "content": "who composed call me maybe"}], "dialogue": 3, "turn": 1,
          "gold": [["Call Me Maybe", "Composer", "Carly Rae Jepsen"]],
          "candidates": [["Golf", "~Sport played", "Jordan Spieth"], ["Call Me Maybe", "Composer", "Carly Rae Jepsen"],
                         ["Piano", "~Instrument Played", "Stan Kenton"], ["Soul music", "~Genre", "Roberta Flack"]]}
    assert knowledge.pick(ex, "bm25")[0] == ex["candidates"][1]
    assert knowledge.pick(ex, "random", seed=1) == knowledge.pick(ex, "random", seed=1)
    assert len(knowledge.pick(ex, "random", seed=1)) == 3
    assert knowledge.pick(ex, "gold") == ex["gold"] and knowledge.pick(ex, "none") == []
    many = [[f"Entity number {i}", "Composer", f"Song {i}"] for i in range(100)]
    text = knowledge.facts_text(many)
    assert len(text) <= knowledge.ALL_FACTS_CHARS and text.count(" | Composer | ") < 100


def test_kg_metrics_numbers():
    assert metrics.knowledge_f1("I love Call Me Maybe", ["Call Me Maybe"]) == pytest.approx(2 * 0.6 * 1 / 1.6)  # P 3/5, R 1
    assert metrics.entity_f1({"Golf", "Piano"}, ["Golf"]) == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert metrics.entity_f1(set(), ["Golf"]) == 0.0
    cands = [["Golf", "~Sport played", "Jordan Spieth"], ["Carly Rae Jepsen", "~Composer", "Call Me Maybe"]]
    assert metrics.reciprocal_rank([0, 1], cands, [["Call Me Maybe", "Composer", "Carly Rae Jepsen"]]) == 0.5
    assert metrics.reciprocal_rank([1, 0], cands, [["Call Me Maybe", "Composer", "Carly Rae Jepsen"]]) == 1.0
    assert metrics.retrieval_summary([1.0, 0.5, 0.0, 1 / 3])["hits@3"] == 0.75
    assert metrics.mentions("he played GOLF!", ["Golf"]) and not metrics.mentions("golfer", ["Golf"])


def test_counterfactual_swaps_each_far_end_for_an_entity_the_same_relation_reaches(real):
    import random

    _, kg, _ = real
    triples = [["Jordan Spieth", "Sport played", "Golf"], ["Carly Rae Jepsen", "~Composer", "Call Me Maybe"]]
    out = swapped(triples, kg, random.Random(0))
    assert [t[:2] for t in out] == [t[:2] for t in triples]
    assert out[0][2] != "Golf" and out[0][2] in kg.by_relation["Sport played"]
    assert out[1][2] != "Call Me Maybe" and out[1][2] in kg.heads_by_relation["Composer"]
