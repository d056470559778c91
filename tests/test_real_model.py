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
