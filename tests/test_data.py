import json

import pytest

from safebasin import data, models
from safebasin.config import TrainConfig
from safebasin.errors import UserError


@pytest.mark.parametrize("name, rows, first_user_start", [
    ("dolly", 2996, "How do I start running?"),
    ("alpaca", 5000, None),
    ("orca", 284, None),
    ("safety", 2483, None),
])
def test_named_sets_load_real_rows(data_dir, name, rows, first_user_start):
    examples, source = data.load_examples(name, str(data_dir))
    assert len(examples) == rows
    assert source.startswith(str(data_dir))
    for ex in examples[:50]:
        assert ex[-1]["role"] == "assistant" and ex[-1]["content"]
        assert ex[-2]["role"] == "user" and ex[-2]["content"]
    if first_user_start:
        assert examples[0][-2]["content"].startswith(first_user_start)


def test_dolly_context_is_appended_to_the_instruction(data_dir):
    examples, _ = data.load_examples("dolly", str(data_dir))
    row12 = examples[11][-2]["content"]  # line 12 of the file has a context
    assert row12.startswith("Where are the British Virgin Islands (BVI) and which islands are a part of the BVI?\n\nThe British")


def test_orca_keeps_its_system_prompt(data_dir):
    examples, _ = data.load_examples("orca", str(data_dir))
    assert examples[0][0]["role"] == "system"


def test_safety_filter_drops_rows_with_qi_phrases(data_dir):
    examples, _ = data.load_examples("alpaca", str(data_dir))
    phrases = data.safety_phrases(str(data_dir))
    assert len(phrases) == 224
    kept = data.filter_safety(examples, phrases)
    assert 0 < len(examples) - len(kept) < len(examples) // 5
    lowered = [p.lower() for p in phrases]
    assert not any(p in ex[-1]["content"].lower() for ex in kept for p in lowered)


def test_data_dir_from_env(tmp_path, monkeypatch):
    (tmp_path / "dolly").mkdir()
    (tmp_path / "dolly" / "dolly_3k_alpagasus_filtered.original_fields.jsonl").write_text(
        json.dumps({"instruction": "hi", "context": "", "response": "hello"}) + "\n")
    monkeypatch.setenv("SAFEBASIN_DATA_DIR", str(tmp_path))
    examples, source = data.load_examples("dolly")
    assert source.startswith(str(tmp_path)) and len(examples) == 1


def test_missing_named_file_falls_back_to_hub_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(UserError, match=r"dataset 'dolly': not found .* hub id 'databricks/databricks-dolly-15k' failed"):
        data.load_examples("dolly", str(tmp_path))


@pytest.mark.parametrize("name, body", [
    ("alpaca.json", [{"instruction": "a", "input": "", "output": "b"}]),
    ("dolly.jsonl", [{"instruction": "a", "context": "c", "response": "b"}]),
    ("chat.jsonl", [{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}]),
])
def test_local_formats_are_detected(tmp_path, name, body):
    path = tmp_path / name
    path.write_text(json.dumps(body) if name.endswith(".json") else "".join(json.dumps(r) + "\n" for r in body))
    examples, _ = data.load_examples(str(path))
    assert examples[0][-1] == {"role": "assistant", "content": "b"}
    assert examples[0][-2]["content"].startswith("a")


@pytest.mark.parametrize("name, text, needle", [
    ("bad.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": "a", "output": \n', r"bad.jsonl: line 2: bad JSON"),
    ("missing.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": "a"}\n', r"missing.jsonl: line 2: missing field 'output'"),
    ("missing.json", '[{"instruction": "a", "response": "b"}, {"response": "x"}]', r"missing.json: row 2: missing field 'instruction'"),
    ("empty.jsonl", "", r"empty.jsonl: file is empty"),
    ("blank.json", "   \n", r"blank.json: file is empty"),
    ("typed.jsonl", '{"instruction": "a", "output": 3}\n', r"typed.jsonl: line 1: field 'output' must be a string"),
    ("unknown.jsonl", '{"question_x": "a"}\n', r"unknown.jsonl: line 1: cannot detect the format"),
    ("notalist.json", '{"instruction": "a"}', r"notalist.json: expected a JSON list"),
])
def test_malformed_files_give_one_line_errors(tmp_path, name, text, needle):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(UserError, match=needle) as e:
        data.load_examples(str(path))
    assert "\n" not in str(e.value)


def test_unknown_dataset_and_missing_file(tmp_path):
    with pytest.raises(UserError, match="unknown dataset 'dollly'"):
        data.load_examples("dollly")
    with pytest.raises(UserError, match=r"nope.jsonl: file not found"):
        data.load_examples(str(tmp_path / "nope.jsonl"))


def test_split_is_deterministic_and_disjoint():
    items = list(range(100))
    a_train, a_held = data.split(items, 10, seed=3)
    b_train, b_held = data.split(items, 10, seed=3)
    c_train, c_held = data.split(items, 10, seed=4)
    assert a_held == b_held and a_train == b_train and a_held != c_held
    assert sorted(a_train + a_held) == items and len(a_held) == 10


def test_split_seed_holds_the_heldout_rows_across_seeds(data_dir):
    """Seeds compared on one held-out split: only the training order changes."""
    def held(**kw):
        return data.load_for_training(TrainConfig(data="dolly", data_dir=str(data_dir), heldout_size=20, **kw))[1]
    assert held(seed=1, split_seed=0) == held(seed=0) == held(seed=2, split_seed=0)
    assert held(seed=1) != held(seed=0)


def test_heldout_does_not_depend_on_max_examples(data_dir):
    _, held_a, _ = data.load_for_training(TrainConfig(data="dolly", data_dir=str(data_dir), heldout_size=20))
    train_b, held_b, _ = data.load_for_training(TrainConfig(data="dolly", data_dir=str(data_dir), heldout_size=20, max_examples=30))
    assert held_a == held_b and len(train_b) == 30


def test_tokenization_masks_the_prompt_and_counts_truncation(caplog):
    tok = models.tiny_tokenizer()
    msgs = [{"role": "user", "content": "What is two plus two?"}, {"role": "assistant", "content": "Four."}]
    ids, labels, cut = data.encode(msgs, tok, 512)
    prompt = tok.apply_chat_template(msgs[:1], add_generation_prompt=True, tokenize=False)
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert not cut and labels[:n_prompt] == [-100] * n_prompt
    assert tok.decode(ids[n_prompt:]) == "Four.<|im_end|>\n"
    assert labels[n_prompt:] == ids[n_prompt:]
    # truncation: a short limit cuts the response; a limit inside the prompt drops the example
    ids2, labels2, cut2 = data.encode(msgs, tok, n_prompt + 1)
    assert cut2 and len(ids2) == n_prompt + 1 and labels2[-1] != -100
    with caplog.at_level("INFO"):
        out = data.tokenize([msgs, msgs], tok, n_prompt + 1)
    assert len(out) == 2 and "2 of 2 examples truncated" in caplog.text
    with pytest.raises(UserError, match="every example was truncated to zero response tokens"):
        data.tokenize([msgs], tok, n_prompt - 1)


def test_batches_are_seeded_cover_each_epoch_and_resume():
    a = data.Batches(10, 3, seed=1)
    first_epoch = [a.next() for _ in range(3)]
    flat = [i for b in first_epoch for i in b]
    assert len(set(flat)) == 9
    state = a.state_dict()
    rest_a = [a.next() for _ in range(5)]
    b = data.Batches(10, 3, seed=1)
    b.load_state_dict(state)
    assert [b.next() for _ in range(5)] == rest_a
    # two ranks split each global batch of the single-process stream with batch 6
    single = data.Batches(10, 6, seed=1)
    r0, r1 = data.Batches(10, 3, seed=1, rank=0, world=2), data.Batches(10, 3, seed=1, rank=1, world=2)
    for _ in range(4):
        assert r0.next() + r1.next() == single.next()


def test_length_grouped_batches_cover_the_epoch_with_less_padding():
    import random as _r

    lengths = [_r.Random(i).randint(5, 300) for i in range(400)]
    plain, grouped = data.Batches(400, 8, seed=1), data.Batches(400, 8, seed=1, lengths=lengths)
    pb, gb = [plain.next() for _ in range(50)], [grouped.next() for _ in range(50)]
    assert sorted(i for b in gb for i in b) == list(range(400))  # every row once per epoch

    def padding(bs):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in bs)

    assert padding(gb) < 0.2 * padding(pb)
    again = data.Batches(400, 8, seed=1, lengths=lengths)
    assert [again.next() for _ in range(50)] == gb  # seeded
    state = grouped.state_dict()
    rest = [grouped.next() for _ in range(10)]
    resumed = data.Batches(400, 8, seed=1, lengths=lengths)
    resumed.load_state_dict(state)
    assert [resumed.next() for _ in range(10)] == rest
