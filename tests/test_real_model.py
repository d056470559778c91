"""Bounded tests on the embedded SmolLM2-135M-Instruct GGUF (dequantized once, then cached)."""

import json

import pytest

from safebasin import models
from safebasin.config import TrainConfig
from safebasin.train import train

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def smollm2_dir(tmp_path_factory):
    try:
        models.builtin_path("smollm2-135m-instruct")
    except Exception as e:  # pragma: no cover - the Makefile installs it
        pytest.skip(str(e))
    return models.resolve("smollm2-135m-instruct")


def test_gguf_is_dequantized_to_a_cached_plain_folder(smollm2_dir):
    from pathlib import Path

    folder = Path(smollm2_dir)
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["num_hidden_layers"] == 30
    assert models.resolve("smollm2-135m-instruct") == smollm2_dir  # second resolve: the cache
    model, tok = models.load("smollm2-135m-instruct")
    assert "<|im_start|>assistant" in tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6


def test_a_few_training_steps_on_smollm2_lower_the_loss(smollm2_dir, data_dir, tmp_path):
    cfg = TrainConfig(model="smollm2-135m-instruct", data="safety", data_dir=str(data_dir), steps=3, batch_size=2,
                      max_seq_len=96, max_examples=6, heldout_size=10, lr=1e-4, ema_beta=0.9, filter_safety=False,
                      output_dir=str(tmp_path / "run"))
    out = train(cfg, show_progress=False)
    losses = [json.loads(x)["loss"] for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(losses) == 3 and all(0 < x < 10 for x in losses)
    assert (out / "model" / "model.safetensors").is_file() and (out / "raw" / "model.safetensors").is_file()


RECIPE = (1e-5, 8, 1, "constant", 0.9, "no")  # lr, batch, grad_accum, schedule, ema_beta, precision: recipes/safe.yaml
# measured on a Xeon with avx512_bf16, float32: (harmful replies of 4, held-out loss) before and after 3 steps
# (the live weights, raw/, are the recipe without its EMA: the numbers pinned before β 0.9 joined the recipe)
PINNED = {"losses": [3.044292, 2.695029, 2.82322], "start": (4, 2.568635), "raw": (4, 2.411311), "recipe": (4, 2.539706)}


def test_the_safe_recipe_is_pinned_on_smollm2(smollm2_dir, data_dir, tmp_path):
    """`--recipe safe`'s numbers on the real model (3 steps, 4 prompts): a change in the recipe, the loop, the data
    or the scoring that moves them shows here. Float32 throughout, so any x86 CPU gives them up to float rounding."""
    from safebasin.config import load_train_config
    from safebasin.evaluate import evaluate

    cfg = load_train_config(None, {"model": "smollm2-135m-instruct", "data": "dolly", "data_dir": str(data_dir), "steps": 3,
                                   "max_seq_len": 96, "max_examples": 48, "heldout_size": 8, "seed": 0,
                                   "output_dir": str(tmp_path / "run")}, recipe="safe")
    assert (cfg.lr, cfg.batch_size, cfg.grad_accum, cfg.schedule, cfg.ema_beta, cfg.mixed_precision) == RECIPE
    out = train(cfg, show_progress=False)
    losses = [json.loads(x)["loss"] for x in (out / "train_log.jsonl").read_text().splitlines()]
    got = {}
    for name, spec in (("start", "smollm2-135m-instruct"), ("raw", str(out / "raw")), ("recipe", str(out))):
        evaluate(spec, ["advbench"], tmp_path / name, utility=True, limit=4, max_new_tokens=16, rouge_limit=1,
                 heldout_from=cfg, data_dir=str(data_dir), show_progress=False)
        m = json.loads((tmp_path / name / "eval.json").read_text())["models"]["model"]
        got[name] = (m["benchmarks"]["advbench"]["harmful"], m["utility"]["heldout_loss"])
    assert losses == pytest.approx(PINNED["losses"], abs=1e-3)
    for name in ("start", "raw", "recipe"):
        assert got[name][0] == PINNED[name][0], name  # harmful replies of 4 (the shipped model is not aligned)
        assert got[name][1] == pytest.approx(PINNED[name][1], abs=1e-3), name
    assert got["raw"][1] < got["recipe"][1] < got["start"][1]  # it learned, and the EMA holds it nearer the start
