"""SURGE's saved side files, OpenDialKG's files and the dialogue configs, as a user can break them (issue 33).

The table runs the real CLI in-process (`invoke`, as in test_bad_input.py) on copies of one tiny SURGE run whose
surge.json / surge.safetensors were cut, emptied or hand-edited: each is one `error:` line naming the file and
field, exit 2. Below it, the cases that need more than an exit code.
"""

import json
import math
import random
import shutil

import pytest
import torch

from safebasin.config import TrainConfig, build
from safebasin.errors import UserError
from safebasin.kg import data as kg_data
from safebasin.train import train
from test_bad_input import edit_json, edit_tensors, expect_one_line, invoke




def _nan(t):
    t["query.weight"][0, 0] = float("nan")


def _cut(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


BROKEN = {  # name -> (file in model/, how it is broken)
    "nan": ("surge.safetensors", lambda p: edit_tensors(p, _nan)),
    "modules-empty": ("surge.safetensors", lambda p: p.write_bytes(b"")),
    "modules-truncated": ("surge.safetensors", _cut),
    "modules-wrong-shape": ("surge.safetensors", lambda p: edit_tensors(p, lambda t: t.update({"query.weight": torch.zeros(3, 3)}))),
    "modules-missing-key": ("surge.safetensors", lambda p: edit_tensors(p, lambda t: t.pop("query.weight"))),
    "pointer-truncated": ("surge.json", _cut),
    "pointer-list": ("surge.json", lambda p: p.write_text('["settings", "relations"]\n')),
    "relations-short": ("surge.json", lambda p: edit_json(p, lambda x: x.update(relations=x["relations"][:-5]))),
    "relations-string": ("surge.json", lambda p: edit_json(p, lambda x: x.update(relations="Hub"))),
    "settings-range": ("surge.json", lambda p: edit_json(p, lambda x: x["settings"].update(n_triples=99))),
    "settings-nan": ("surge.json", lambda p: edit_json(p, lambda x: x["settings"].update(supervised_weight=math.nan))),
    "settings-string": ("surge.json", lambda p: edit_json(p, lambda x: x["settings"].update(k_subgraphs="four"))),
    "settings-list": ("surge.json", lambda p: edit_json(p, lambda x: x.update(settings=[1, 2]))),
}


def _data_dir_with(root, real, name, relations: bytes | None = None, csv: bytes | None = None):
    """A data dir like the real one whose opendialkg/ has its own relations file or CSV."""
    d = root / name
    d.mkdir()
    for entry in real.iterdir():
        if entry.name != "opendialkg":
            (d / entry.name).symlink_to(entry)
    kg = d / "opendialkg"
    kg.mkdir()
    for f, content in ((kg_data.RELATIONS_FILE, relations), (kg_data.CSV_FILE, csv)):  # copies: the reader resolves links
        (kg / f).write_bytes((real / "opendialkg" / f).read_bytes() if content is None else content)
    return d


def _csv(rows: list) -> bytes:
    import csv
    import io

    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["Messages", "User Rating", "Assistant Rating"])
    for r in rows:
        w.writerow([r if isinstance(r, str) else json.dumps(r), "{}", "{}"])
    return out.getvalue().encode()


def _dialogue(path, who="Jordan Spieth"):
    return [{"type": "chat", "sender": "user", "message": f"Do you know {who}?"},
            {"type": "action", "action_id": "kgwalk/choose_path", "sender": "assistant", "metadata": {"path": [-1, path, ""]}},
            {"type": "chat", "sender": "assistant", "message": "He plays Golf."}]


@pytest.fixture(scope="module")
def ctx(tiny_model_dir, data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("kgdlg")
    run = train(build(TrainConfig, dict(model=str(tiny_model_dir), data="opendialkg", method="surge", data_dir=str(data_dir),
                                        steps=1, batch_size=2, max_seq_len=256, max_examples=8, heldout_size=2,
                                        filter_safety=False, method_args={"retriever_warmup_steps": 1},
                                        output_dir=str(root / "surge")), "test"), show_progress=False)
    for name, (file, brk) in BROKEN.items():
        shutil.copytree(run, root / name)
        brk(root / name / "model" / file)
    relations = (data_dir / "opendialkg" / kg_data.RELATIONS_FILE).read_bytes().split(b"\n")
    relations[2] = b"Caf\xe9 " + relations[2]  # Latin-1, not UTF-8
    _data_dir_with(root, data_dir, "bad_relations", relations=b"\n".join(relations))
    _data_dir_with(root, data_dir, "bad_header", csv=_csv([_dialogue([["Jordan Spieth", "Sport played", "Golf"]])]).replace(
        b"Messages", b"Mess\xe4ges", 1))
    (root / "levels_int.yaml").write_text("method: context-instruct\nmethod_args: {levels: 5}\n")
    (root / "levels_mood.yaml").write_text("method: context-instruct\nmethod_args: {levels: 'act, mood'}\n")
    (root / "no_key.jsonl").write_text('{"instruction": "Ask a question."}\n')
    (root / "no_key.yaml").write_text(f"method: context-instruct\nmethod_args: {{instructions_file: {root / 'no_key.jsonl'}}}\n")
    return {"root": root, "model": tiny_model_dir, "data_dir": data_dir, "run": run}


def _eval(name, data_dir="{data_dir}"):
    return ["eval", "{root}/" + name, "--bench", "opendialkg", "--data-dir", data_dir, "--limit", "1",
            "--max-new-tokens", "1", "--output-dir", "{root}/ev"]


def _train(config):
    return ["train", "--config", "{root}/" + config, "--model", "{model}", "--data-dir", "{data_dir}", "--steps", "1",
            "--batch-size", "2", "--max-examples", "8", "--heldout-size", "0", "--max-seq-len", "96",
            "--output-dir", "{root}/out"]


CASES = [  # (id, args, exit code, message fragment)
    ("surge-modules-nan", _eval("nan"), 2, "surge.safetensors: tensor 'query.weight' is not finite"),
    ("surge-modules-empty", _eval("modules-empty"), 2, "surge.safetensors: cannot read"),
    ("surge-modules-truncated", _eval("modules-truncated"), 2, "surge.safetensors: cannot read"),
    ("surge-modules-wrong-shape", _eval("modules-wrong-shape"), 2,
     "surge.safetensors: tensor 'query.weight' has shape [3, 3], expected [128, 384]"),
    ("surge-modules-missing-key", _eval("modules-missing-key"), 2, "surge.safetensors: tensor(s) missing: query.weight"),
    ("surge-pointer-truncated", _eval("pointer-truncated"), 2, "surge.json: bad JSON"),
    ("surge-pointer-list", _eval("pointer-list"), 2, "surge.json: expected a JSON object, got list"),
    ("surge-relations-short", _eval("relations-short"), 2,
     "surge.json: field 'relations' lists 1353 relations, but surge.safetensors holds embeddings for 1358"),
    ("surge-relations-string", _eval("relations-string"), 2, "surge.json: field 'relations' must be a list of strings"),
    ("surge-settings-range", _eval("settings-range"), 2, "surge.json: field 'settings': invalid config: n_triples: Input "
                                                         "should be less than or equal to 10"),
    ("surge-settings-nan", _eval("settings-nan"), 2, "surge.json: field 'settings': invalid config: supervised_weight: "
                                                     "Input should be a finite number"),
    ("surge-settings-string", _eval("settings-string"), 2, "surge.json: field 'settings': invalid config: k_subgraphs: "
                                                           "Input should be a valid integer"),
    ("surge-settings-list", _eval("settings-list"), 2, "surge.json: field 'settings' must be an object"),
    ("relations-not-utf8", _eval("surge", "{root}/bad_relations"), 2, "opendialkg_relations.txt: line 3: not UTF-8"),
    ("csv-header-not-utf8", _eval("surge", "{root}/bad_header"), 2, "opendialkg_subset.csv: row 1 (the header): not UTF-8"),
    ("dialogue-levels-int", _train("levels_int.yaml"), 2, "levels: expected a list of act, emotion, keywords"),
    ("dialogue-levels-unknown", _train("levels_mood.yaml"), 2, "unknown level(s) ['mood']"),
    ("dialogue-instructions-no-key", _train("no_key.yaml"), 2, "no_key.jsonl: line 1: field 'key' is missing"),
]


@pytest.mark.parametrize("args, code, fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line(args, code, fragment, ctx, capsys):
    shutil.rmtree(ctx["root"] / "out", ignore_errors=True)
    expect_one_line(*invoke([a.format(**ctx) for a in args], capsys), code, fragment)


# ---------------------------------------------------------------- beyond the exit code

def test_a_csv_row_that_is_not_utf8_is_a_counted_skip(tmp_path):
    """kg/data.py's rule: a row whose Messages cannot be read as a JSON list is skipped and counted (malformed_json)."""
    rows = _csv([_dialogue([["Jordan Spieth", "Sport played", "Golf"]])] * 3).split(b"\r\n")
    rows[2] = rows[2].replace(b"Jordan", b"J\xf6rdan", 1)  # Latin-1, not UTF-8
    (tmp_path / kg_data.RELATIONS_FILE).write_text("Sport played\n")
    csv = tmp_path / kg_data.CSV_FILE
    csv.write_bytes(b"\r\n".join(rows))
    dialogues, skipped = kg_data.read_dialogues(csv)
    assert skipped["malformed_json"] == 1 and [d["_where"] for d in dialogues] == [
        "opendialkg_subset.csv row 2", "opendialkg_subset.csv row 4"]  # row 3 is the bad one


def test_a_kg_with_a_single_fact_evaluates_and_skips_the_counterfactual_swap(ctx, tmp_path):
    """One fact, two entities: no other entity to swap a fact's far end for, so that turn is left out of the
    counterfactual (counted), and the rest of the eval stands."""
    from safebasin.evaluate import evaluate

    one = [_dialogue([["Jordan Spieth", "Sport played", "Golf"]])] * 3  # 70/15/15 of 3 dialogues: one test dialogue
    d = _data_dir_with(tmp_path, ctx["data_dir"], "one_fact", relations=b"Sport played\n", csv=_csv(one))
    result = evaluate(str(ctx["run"]), ["opendialkg"], tmp_path / "ev", data_dir=str(d), max_new_tokens=1,
                      show_progress=False)
    b = result["models"]["model"]["benchmarks"]["opendialkg"]
    assert b["n"] == 1 and b["retrieval"]["mrr"] == 1.0
    assert "counterfactual" not in b and b["counterfactual_skipped"] == 1
    rows = [json.loads(x) for x in (tmp_path / "ev" / "generations.jsonl").read_text().splitlines()]
    assert rows[0]["swapped_knowledge"] == []


def test_swapped_returns_none_when_no_other_entity_exists():
    kg = kg_data.KG([{"messages": [{"role": "assistant", "text": "x", "path": [("A", "r", "B")]}]}])
    from safebasin.kg.bench import swapped

    assert swapped([["A", "r", "B"]], kg, random.Random(0)) is None


def test_a_single_level_string_is_a_one_element_list():
    """`levels: act` means ["act"] (and "act, emotion" two levels): not three unknown levels 'a', 'c', 't'."""
    from safebasin.dialogue.methods import ContextInstruct

    for given, want in (("act", ["act"]), ("act, emotion", ["act", "emotion"]), (["keywords"], ["keywords"])):
        cfg = build(TrainConfig, {"method": "context-instruct", "method_args": {"levels": given}})
        assert ContextInstruct.settings(cfg).levels == want
    with pytest.raises(UserError, match=r"unknown level\(s\) \['mood'\]"):
        build(TrainConfig, {"method": "context-instruct", "method_args": {"levels": "mood"}})


def test_an_instructions_row_without_a_key_names_the_file_row_and_field(tmp_path):
    from safebasin.dialogue.methods import _read_instructions

    f = tmp_path / "written.jsonl"
    meta = {"context": ["hi"], "response": "hello"}
    f.write_text('{"key": "k", "instruction": "Ask."}\n{"instruction": "Ask a question."}\n')
    with pytest.raises(UserError, match=r"written.jsonl: line 2: field 'key' is missing"):
        _read_instructions(str(f), [meta])
    f.write_text('{"key": ["k"], "instruction": "Ask."}\n')
    with pytest.raises(UserError, match=r"written.jsonl: line 1: field 'key' must be a string"):
        _read_instructions(str(f), [meta])
    f.write_text('{"key": "k", "instruction": 3}\n')
    with pytest.raises(UserError, match=r"written.jsonl: line 1: field 'instruction' must be a string"):
        _read_instructions(str(f), [meta])


@pytest.mark.parametrize("kind", ["llama", "gemma2"])
def test_sequence_nll_reads_the_models_own_logits(kind):
    """SURGE's NLL goes through the model's own head: Gemma-2's final_logit_softcapping included."""
    from transformers import AutoModelForCausalLM, Gemma2Config

    from safebasin import models
    from safebasin.kg.methods import SurgeModel

    torch.manual_seed(0)
    if kind == "llama":
        lm = models.tiny_llama(seed=0)
    else:
        lm = AutoModelForCausalLM.from_config(Gemma2Config(
            vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, head_dim=16, final_logit_softcapping=0.5, attn_logit_softcapping=None,
            sliding_window=8, attn_implementation="eager"))
        torch.nn.init.normal_(lm.lm_head.weight, std=2.0)  # logits far beyond the cap, so softcapping matters
    lm.eval()
    model = SurgeModel(lm, None, None, None)
    vocab, hidden = lm.config.vocab_size, lm.config.hidden_size
    embeds = torch.randn(2, 7, hidden)
    mask = torch.tensor([[1] * 7, [1] * 5 + [0] * 2])
    labels = torch.full((2, 7), -100)
    labels[0, 3:] = torch.randint(vocab, (4,))
    labels[1, 2:5] = torch.randint(vocab, (3,))
    with torch.no_grad():
        nll, hidden = model.sequence_nll(embeds, mask, labels)
        logits = lm(inputs_embeds=embeds, attention_mask=mask).logits.float()
        states = lm.get_decoder()(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
    target = labels[:, 1:]
    keep = target != -100
    want = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), target.clamp(min=0), reduction="none")
    torch.testing.assert_close(nll, (want * keep).sum(1), rtol=1e-5, atol=1e-5)
    mean = (states[:, :-1] * keep[..., None]).sum(1) / keep.sum(1, keepdim=True)  # the contrastive term's response state
    torch.testing.assert_close(hidden, mean, rtol=1e-5, atol=1e-5)
