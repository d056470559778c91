"""ADLM on a tiny model: the block starts as the LM, the trunk never changes, the saved block loads back
through `eval` with no extra flags, steering at α = 0 is the block's plain generation, and bad input is
one line. The scorer and metric functions have their own files."""

import json

import pytest
import torch

from conftest import load_state
from safebasin import methods, models
from safebasin.config import TrainConfig
from safebasin.detox.adlm import ATTRIBUTES, BLOCK_FILE, POINTER_FILE, AttributeBlock, attach
from safebasin.detox.data import read_jigsaw
from safebasin.detox.sampling import sample_continuations
from safebasin.errors import UserError
from safebasin.train import train


def _cfg(tiny_model_dir, data_dir, out, **kw):
    base = dict(model=str(tiny_model_dir), method="adlm", data_dir=str(data_dir), max_examples=48, heldout_size=8,
                max_seq_len=48, batch_size=4, steps=3, lr=1e-2, seed=0, output_dir=str(out))
    return TrainConfig(**(base | kw))


@pytest.fixture(scope="module")
def adlm_run(tiny_model_dir, data_dir, tmp_path_factory):
    return train(_cfg(tiny_model_dir, data_dir, tmp_path_factory.mktemp("adlm") / "run",
                      method_args={"disc_weight": 1.0, "ewc_weight": 0.5}), show_progress=False)


def test_the_block_starts_out_equal_to_the_lm(tiny_model_dir):
    base, tok = models.load(str(tiny_model_dir))
    steered, _ = models.load(str(tiny_model_dir))
    attach(steered)
    ids = tok(["Hello there, how are you", "The quick brown fox"], return_tensors="pt", padding=True)
    with torch.no_grad():
        want = base(**ids).logits
        for attr in range(len(ATTRIBUTES)):
            steered.model.layers[-1].attr_ids = torch.full((2,), attr)
            assert torch.equal(steered(**ids).logits, want)


def test_training_changes_only_the_block_and_saves_no_copy_of_the_lm(adlm_run, tiny_model_dir):
    log = [json.loads(x) for x in (adlm_run / "train_log.jsonl").read_text().splitlines()]
    assert {"lm_loss", "disc_loss", "disc_acc", "ewc"} <= set(log[-1]) and log[0]["ewc"] == 0.0 and log[-1]["ewc"] > 0
    files = sorted(p.name for p in (adlm_run / "model").iterdir())
    assert BLOCK_FILE in files and POINTER_FILE in files and "model.safetensors" not in files
    pointer = json.loads((adlm_run / "model" / POINTER_FILE).read_text())
    assert pointer["base_model"] == str(tiny_model_dir)
    # the frozen trunk, bit for bit: everything but the last layer (whose slot the block takes)
    model, _, cls = methods.load_model_folder(adlm_run / "model")
    assert cls.name == "adlm" and isinstance(model.model.layers[-1], AttributeBlock)
    last = f"model.layers.{len(model.model.layers) - 1}."
    init = load_state(tiny_model_dir)
    loaded = {k: v for k, v in model.state_dict().items() if not k.startswith(last) and not k.startswith("adlm_")}
    trunk = {k: v for k, v in init.items() if not k.startswith(last)}
    assert loaded.keys() == trunk.keys() and all(torch.equal(loaded[k], trunk[k]) for k in trunk)
    # and the block did train
    block = model.model.layers[-1].layer.state_dict()
    assert any(not torch.equal(block[k], init[last + k]) for k in block)


def test_steering_at_alpha_zero_is_the_blocks_plain_generation(adlm_run):
    model, tok, _ = methods.load_model_folder(adlm_run / "model")
    method = methods.get("adlm")(None)
    prompts = ["You are such a", "The weather today"]
    plain = sample_continuations(model, tok, prompts, k=3, max_new_tokens=6, seed=5)
    with method.steered(model, 0.0) as combine:
        steered = sample_continuations(model, tok, prompts, k=3, max_new_tokens=6, seed=5, combine=combine)
    assert steered == plain
    with method.steered(model, 5.0) as combine:  # a strong α does change the text
        strong = sample_continuations(model, tok, prompts, k=3, max_new_tokens=6, seed=5, combine=combine)
    assert strong != plain
    assert model.model.layers[-1].steer is False  # the context restores the plain mode


def test_steered_logits_share_one_trunk_pass(adlm_run):
    model, tok, _ = methods.load_model_folder(adlm_run / "model")
    calls = {"n": 0}
    first = model.model.layers[0]
    hook = first.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    block = model.model.layers[-1]
    ids = tok(["You are such a", "Hi"], return_tensors="pt", padding=True)
    with torch.no_grad():
        block.steer = True
        both = model(**ids).logits
        block.steer = False
        block.attr_ids = torch.tensor([ATTRIBUTES.index("toxic")] * 2)
        toxic = model(**ids).logits
        block.attr_ids = None
    hook.remove()
    assert both.shape[0] == 4 and calls["n"] == 2  # one trunk pass each time, though the steered one gave 2B rows
    torch.testing.assert_close(both[2:], toxic, rtol=1e-5, atol=1e-5)


def test_eval_scores_an_adlm_run_dir_with_no_extra_flags(adlm_run, data_dir, tmp_path):
    from safebasin.evaluate import evaluate

    res = evaluate(str(adlm_run), ["rtp-toxic"], tmp_path / "eval", limit=2, samples=2, max_new_tokens=4, data_dir=str(data_dir),
                   show_progress=False, steer_alpha=1.0)
    b = res["models"]["model"]["benchmarks"]["rtp-toxic"]
    assert b["n"] == 2 and b["samples"] == 2 and 0 <= b["expected_max_toxicity"] <= 1 and b["perplexity"] > 1
    rows = [json.loads(x) for x in (tmp_path / "eval" / "generations.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all("continuation" in r for r in rows)


def test_bad_detox_input_is_one_line(tmp_path, tiny_model_dir, data_dir, adlm_run):
    f = tmp_path / "jig.json"
    f.write_text('{"text": "fine", "label": 1}\n{"text": "no label"}\n')
    with pytest.raises(UserError, match=r"jig.json: line 2: missing field 'label'"):
        read_jigsaw(f)
    f.write_text('{"text": "fine", "label": 7}\n')
    with pytest.raises(UserError, match=r"line 1: field 'label' must be 0 \(toxic\) or 1 \(non-toxic\), got 7"):
        read_jigsaw(f)
    model, _, _ = methods.load_model_folder(adlm_run / "model")
    with pytest.raises(UserError, match=r"--steer-alpha must be in \[0, 10\], got 11"):
        with methods.get("adlm")(None).steered(model, 11.0):
            pass
    moved = tmp_path / "orphan"
    import shutil

    shutil.copytree(adlm_run / "model", moved)
    pointer = json.loads((moved / POINTER_FILE).read_text())
    pointer |= {"base_model": str(tmp_path / "gone"), "base_model_pin": pointer["base_model_pin"] | {
        "as_written": str(tmp_path / "gone"), "path": str(tmp_path / "gone")}}  # the pin, not the name, is what loads
    (moved / POINTER_FILE).write_text(json.dumps(pointer))
    with pytest.raises(UserError, match=r"orphan/adlm.json: field 'base_model_pin': the model .*gone is gone"):
        methods.load_model_folder(moved)
    from safebasin.config import build

    with pytest.raises(UserError, match=r"method_args.disc_wieght: unknown key \(method adlm\)"):
        build(TrainConfig, {"method": "adlm", "method_args": {"disc_wieght": 1.0}})
    with pytest.raises(UserError, match="ADLM needs rows with an attribute"):
        train(_cfg(tiny_model_dir, data_dir, tmp_path / "y", data="dolly", filter_safety=False), show_progress=False)


def test_toxichat_gives_an_offensive_reply_rate(tiny_model_dir, data_dir, tmp_path):
    from safebasin.evaluate import evaluate

    res = evaluate(str(tiny_model_dir), ["toxichat"], tmp_path / "eval", limit=3, max_new_tokens=4, data_dir=str(data_dir),
                   show_progress=False)
    b = res["models"]["model"]["benchmarks"]["toxichat"]
    assert b["n"] == 3 and b["scorer"] == "minilm-rtp" and 0 <= b["offensive_rate"] <= 1
    assert b["ci_low"] <= b["offensive_rate"] <= b["ci_high"] and sum(c["n"] for c in b["by_category"].values()) == 3


def test_the_steering_rules_on_hand_made_logits(adlm_run, tmp_path):
    """contrast: log p_nt + α(log p_nt − log p_t); suppress: only tokens the toxic attribute prefers go down."""
    model, _, _ = methods.load_model_folder(adlm_run / "model")
    assert model.adlm_steer_rule == "contrast"  # saved in the pointer at training
    nt = torch.log_softmax(torch.tensor([[2.0, 1.0, 0.0, -1.0]]), -1)
    t = torch.log_softmax(torch.tensor([[2.0, 0.0, 1.0, -1.0]]), -1)
    both = torch.cat([nt, t])
    method = methods.get("adlm")(None)
    with method.steered(model, 2.0) as combine:
        contrast = combine(both, 1.0)
    torch.testing.assert_close(contrast, nt + 2.0 * (nt - t))
    model.adlm_steer_rule = "suppress"
    with method.steered(model, 2.0) as combine:
        suppress = combine(both, 1.0)
    want = nt.clone()
    want[0, 2] -= 2.0 * (t[0, 2] - nt[0, 2])  # the one token the toxic attribute prefers; the rest keep log p_nt
    torch.testing.assert_close(suppress, want)
    with method.steered(model, 2.0) as combine:  # the nucleus of p_nt still bounds the choice
        assert torch.isinf(combine(both, 0.5)[0, 1:]).all()
    moved = tmp_path / "bad-rule"
    import shutil

    shutil.copytree(adlm_run / "model", moved)
    pointer = json.loads((moved / POINTER_FILE).read_text()) | {"steer_rule": "boost"}
    (moved / POINTER_FILE).write_text(json.dumps(pointer))
    with pytest.raises(UserError, match=r"adlm.json: field 'steer_rule' must be one of contrast, suppress, got 'boost'"):
        methods.load_model_folder(moved)


def test_the_tuning_picks_skip_degenerate_points():
    """benchmarks/detox_tuning.py's two readings of the goals, on hand-made points (base: dist-2 1.0)."""
    import importlib.util

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("detox_tuning", ROOT / "benchmarks" / "detox_tuning.py")
    tuning = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tuning)

    def point(name, emt, ppl, dist2):
        return {"name": name, "emt_change": emt, "perplexity_change": ppl, "expected_max_toxicity": 0.6 * (1 + emt),
                "perplexity": 20 * (1 + ppl), "dist-2": dist2, "disc_weight": 1.0, "ewc_weight": 1.0, "alpha": 6.0,
                "rule": "contrast"}

    points = [point("repeats", -0.50, 0.10, 0.50), point("strong", -0.35, 0.90, 0.95), point("stronger", -0.40, 1.50, 0.95),
              point("fluent", -0.12, 0.12, 0.99), point("too-weak", -0.02, -0.05, 0.99), point("too-dull", -0.20, 0.40, 0.99)]
    picks = tuning.pick_points(points, {"dist-2": 1.0})
    assert picks["degenerate"] == ["repeats"]  # it would have won both readings
    assert picks["toxicity_first"]["name"] == "strong" and picks["fluency_first"]["name"] == "fluent"
    assert tuning.pick_points(points[:1], {"dist-2": 1.0}) == {"toxicity_first": None, "fluency_first": None,
                                                               "degenerate": ["repeats"]}


def test_the_detox_demo_arms_per_preset():
    """Every ADLM arm shares the base arm's training and differs only in its method_args."""
    from safebasin.detox.demo import arms, detox_config

    default = arms(detox_config("default"))
    assert list(default) == ["dapt", "atcon", "adlm", "adlm-ewc100"]
    assert default["adlm"]["method_args"] == {"disc_weight": 1.0, "ewc_weight": 1.0, "steer_rule": "contrast"}
    assert default["adlm-ewc100"]["method_args"]["ewc_weight"] == 100.0
    assert {k: v for k, v in default["adlm-ewc100"].items() if k != "method_args"} == \
        {k: v for k, v in default["adlm"].items() if k != "method_args"}
    assert list(arms(detox_config("quick"))) == ["adlm"]  # CI: the one arm it checks, against the base model
    full = arms(detox_config("full"))
    assert full["adlm-no-disc"]["method_args"]["disc_weight"] == 0.0 and full["adlm-no-ewc"]["method_args"]["ewc_weight"] == 0.0
