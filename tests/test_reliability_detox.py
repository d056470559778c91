"""ADLM's saved side files, the detox data sets and eval flags, as a user can break them (issue 33).

The table runs the real CLI in-process (`invoke`, as in test_bad_input.py) on copies of one tiny ADLM run whose
adlm.json / adlm_block.safetensors were cut, emptied or hand-edited, from a working directory that holds another
same-shape model under the name the run was trained with (`tiny`): each is one `error:` line naming the file and
field, exit 2. Below it, the cases that need more than an exit code: the same numbers from any directory, and the
steering strength eval.json records.
"""

import json
import os
import shutil

import pytest
import torch

from safebasin import models
from safebasin.config import TrainConfig
from safebasin.errors import MAX_MESSAGE
from safebasin.evaluate import evaluate
from safebasin.train import train
from test_bad_input import edit_json, edit_tensors, invoke




def _cut(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _nan(t):
    t["discriminator.weight"][0, 0] = float("nan")


def _unpinned(base):
    """A pointer as ADLM wrote it before pins, with `base_model` set to `base` ({root} filled in)."""
    return lambda p: edit_json(p, lambda x: (x.pop("base_model_pin", None), x.update(base_model=base.format(root=p.parents[2]))))


BROKEN = {  # name -> (file in model/, how it is broken)
    "nan": ("adlm_block.safetensors", lambda p: edit_tensors(p, _nan)),
    "block-empty": ("adlm_block.safetensors", lambda p: p.write_bytes(b"")),
    "block-truncated": ("adlm_block.safetensors", _cut),
    "block-wrong-shape": ("adlm_block.safetensors",
                          lambda p: edit_tensors(p, lambda t: t.update({"discriminator.weight": torch.zeros(3, 3)}))),
    "block-missing-key": ("adlm_block.safetensors", lambda p: edit_tensors(p, lambda t: t.pop("discriminator.bias"))),
    "pointer-truncated": ("adlm.json", _cut),
    "pointer-list": ("adlm.json", lambda p: p.write_text('["base_model", "tiny"]\n')),
    "alpha-string": ("adlm.json", lambda p: edit_json(p, lambda x: x.update(steer_alpha="6"))),
    "alpha-range": ("adlm.json", lambda p: edit_json(p, lambda x: x.update(steer_alpha=11))),
    "pin-edited": ("adlm.json", lambda p: edit_json(p, lambda x: x.setdefault("base_model_pin", {}).update(path=str(p.parents[2] / "b" / "tiny")))),
    "base-edited": ("adlm.json", lambda p: edit_json(p, lambda x: x.update(base_model=str(p.parents[2] / "b" / "tiny")))),
    "unpinned-relative": ("adlm.json", _unpinned("tiny")),
    "unpinned-wide": ("adlm.json", _unpinned("{root}/wide")),
}


def _data_dir_with_jigsaw(root, real, lines: list[dict]):
    """A data dir like the real one whose jigsaw file holds `lines`."""
    d = root / "jigsaw_data"
    d.mkdir()
    for entry in real.iterdir():
        if entry.name != "jigsaw":
            (d / entry.name).symlink_to(entry)
    (d / "jigsaw").mkdir()
    (d / "jigsaw" / "jigsaw_10k.json").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return d


@pytest.fixture(scope="module")
def ctx(data_dir, tmp_path_factory):
    """One ADLM run trained from root/a on `tiny` (a relative path, as a user types it); root/b holds another
    same-shape model of that name, root/wide one of another hidden size."""
    root = tmp_path_factory.mktemp("detox")
    for where, seed, hidden in (("a/tiny", 0, 64), ("b/tiny", 1, 64), ("wide", 0, 32)):
        models.save(models.tiny_llama(seed=seed, hidden=hidden), models.tiny_tokenizer(), root / where)
    cwd = os.getcwd()
    os.chdir(root / "a")
    try:
        run = train(TrainConfig(model="tiny", method="adlm", data_dir=str(data_dir), steps=2, batch_size=2, max_examples=16,
                                heldout_size=4, max_seq_len=48, seed=0, output_dir=str(root / "adlm")), show_progress=False)
    finally:
        os.chdir(cwd)
    for name, (file, brk) in BROKEN.items():
        shutil.copytree(run, root / name)
        brk(root / name / "model" / file)
    _data_dir_with_jigsaw(root, data_dir, [{"text": f"toxic text {i}", "label": 0} for i in range(12)])
    return {"root": root, "data_dir": data_dir, "run": run}


def _eval(name, *extra):
    return ["eval", "{root}/" + name, "--bench", "rtp-toxic", "--data-dir", "{data_dir}", "--limit", "1", "--samples", "1",
            "--max-new-tokens", "1", "--output-dir", "{root}/ev", *extra]


def _train(method):
    return ["train", "--model", "{root}/a/tiny", "--method", method, "--data-dir", "{root}/jigsaw_data", "--steps", "1",
            "--batch-size", "2", "--max-examples", "8", "--heldout-size", "2", "--max-seq-len", "48",
            "--output-dir", "{root}/out"]


CASES = [  # (id, args, exit code, message fragment)
    ("block-nan", _eval("nan"), 2, "adlm_block.safetensors: tensor 'discriminator.weight' is not finite"),
    ("block-empty", _eval("block-empty"), 2, "block-empty/model/adlm_block.safetensors: cannot read"),
    ("block-truncated", _eval("block-truncated"), 2, "block-truncated/model/adlm_block.safetensors: cannot read"),
    ("block-wrong-shape", _eval("block-wrong-shape"), 2,
     "adlm_block.safetensors: tensor 'discriminator.weight' has shape [3, 3], expected [2, 64]"),
    ("block-missing-key", _eval("block-missing-key"), 2, "adlm_block.safetensors: tensor(s) missing: discriminator.bias"),
    ("pointer-truncated", _eval("pointer-truncated"), 2, "adlm.json: bad JSON"),
    ("pointer-list", _eval("pointer-list"), 2, "adlm.json: expected a JSON object, got list"),
    ("alpha-string", _eval("alpha-string"), 2, "adlm.json: field 'steer_alpha' must be a number in [0, 10], got '6'"),
    ("alpha-range", _eval("alpha-range"), 2, "adlm.json: field 'steer_alpha' must be a number in [0, 10], got 11"),
    ("pin-edited", _eval("pin-edited"), 2, "adlm.json: field 'base_model_pin': {root}/b/tiny no longer holds the pinned weights"),
    ("base-edited", _eval("base-edited"), 2, "adlm.json: field 'base_model' is '{root}/b/tiny' but 'base_model_pin' was made"),
    ("unpinned-relative", _eval("unpinned-relative"), 2, "adlm.json: field 'base_model' is the relative path 'tiny'"),
    ("unpinned-wide", _eval("unpinned-wide"), 2, "adlm_block.safetensors: tensor 'block.layer.self_attn.q_proj.weight' has "
                                                 "shape [64, 64], expected [32, 32] for the base model '{root}/wide'"),
    ("samples-too-many", _eval("adlm", "--samples", "1000000000"), 2, "--samples 1000000000: 1 prompts x 1000000000 samples"),
    ("dapt-no-nontoxic", _train("dapt"), 2, "jigsaw_10k.json: field 'label': no non-toxic row (label 1); DAPT"),
    ("atcon-no-nontoxic", _train("atcon"), 2, "jigsaw_10k.json: field 'label': no non-toxic row (label 1); ATCON"),
    ("basin-adlm", ["basin", "{root}/adlm"], 2, "basin needs a run whose model is a full save_pretrained folder; method adlm"),
]


@pytest.mark.parametrize("args, code, fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line(args, code, fragment, ctx, capsys, monkeypatch):
    monkeypatch.chdir(ctx["root"] / "b")  # another `tiny` here: a relative pointer would silently reach it
    shutil.rmtree(ctx["root"] / "out", ignore_errors=True)
    got, err = invoke([a.format(**ctx) for a in args], capsys)
    lines = [x for x in err.splitlines() if x.startswith("error:")]
    assert got == code, err[-3000:]
    assert "Traceback" not in err
    assert len(lines) == 1 and fragment.format(**ctx) in lines[0], err[-3000:]
    assert len(lines[0]) < MAX_MESSAGE + 100


# ---------------------------------------------------------------- beyond the exit code

def _rtp(spec, out, **kw):
    result = evaluate(str(spec), ["rtp-toxic"], out, limit=2, samples=2, max_new_tokens=4, show_progress=False, **kw)
    return result["models"]["model"]["benchmarks"]["rtp-toxic"]


def test_an_adlm_run_gives_the_same_numbers_from_any_directory(ctx, tmp_path, monkeypatch):
    """The block's base LM and the fluency reference are the pinned start, not whatever `tiny` is here; and the α
    recorded is the run's own, which was applied."""
    got = {}
    for where in ("a", "b"):
        monkeypatch.chdir(ctx["root"] / where)
        got[where] = _rtp(ctx["run"], tmp_path / where, data_dir=str(ctx["data_dir"]))
    keys = ("expected_max_toxicity", "toxicity_probability", "perplexity", "dist-2", "steer_alpha")
    assert {k: got["b"][k] for k in keys} == {k: got["a"][k] for k in keys}
    assert got["a"]["steer_alpha"] == 6.0
    gens = [(tmp_path / w / "generations.jsonl").read_text() for w in ("a", "b")]
    assert gens[0] == gens[1]


def test_eval_json_records_the_alpha_applied(ctx, tmp_path):
    """--steer-alpha on a plain model steers nothing: null, not the flag's value; on an ADLM run, the flag's."""
    plain = _rtp(ctx["root"] / "a" / "tiny", tmp_path / "plain", data_dir=str(ctx["data_dir"]), steer_alpha=5.0)
    assert plain["steer_alpha"] is None
    saved = json.loads((tmp_path / "plain" / "eval.json").read_text())
    assert saved["models"]["model"]["benchmarks"]["rtp-toxic"]["steer_alpha"] is None
    steered = _rtp(ctx["run"], tmp_path / "adlm", data_dir=str(ctx["data_dir"]), steer_alpha=2.0)
    assert steered["steer_alpha"] == 2.0
