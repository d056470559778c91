import json

import pytest

from safebasin import models
from safebasin.safety.basin import basin
from safebasin.evaluate import probe_prompts, probe_rate
from safebasin.config import TrainConfig
from safebasin.data import load_for_training
from safebasin.evaluate import heldout_loss
from safebasin.judges import keyword_judge
from safebasin.train import train


@pytest.fixture(scope="module")
def ema_run(tiny_model_dir, data_dir, tmp_path_factory):
    cfg = TrainConfig(model=str(tiny_model_dir), data="dolly", data_dir=str(data_dir), max_examples=16, heldout_size=6,
                      max_seq_len=160, batch_size=4, steps=1, lr=1e-2, ema_beta=0.7, output_dir=str(tmp_path_factory.mktemp("b") / "run"))
    return train(cfg, show_progress=False), cfg


def test_basin_ends_equal_separate_evaluations_and_ema_sits_at_its_weight(ema_run, data_dir):
    run, cfg = ema_run
    result = basin(run, probe_n=6, max_new_tokens=4, alphas=(0.0, 0.5, 1.0, 1.25), show_progress=False)
    assert result["probe"] == "jbb" and result["probe_n"] == 6
    judge = keyword_judge("gcg", str(data_dir))
    _, prompts = probe_prompts("advbench", 6, cfg.seed, str(data_dir))
    _, heldout, _ = load_for_training(cfg)
    for alpha, source in ((0.0, str(cfg.model)), (1.0, str(run / "raw"))):
        model, tok = models.load(source)
        want = probe_rate(model, tok, prompts, judge, 4)[0] | heldout_loss(model, tok, heldout, cfg.max_seq_len)
        got = next(p for p in result["points"] if p["alpha"] == alpha)
        assert got["harmful_rate"] == want["harmful_rate"] and got["heldout_loss"] == pytest.approx(want["heldout_loss"], rel=1e-6)
    # one step with β=0.7: θ̄ = 0.7·θ0 + 0.3·θ_raw, i.e. on the line at α = 0.3
    assert result["ema"]["alpha"] == pytest.approx(0.3, abs=1e-4)
    assert result["ema"]["off_line_norm"] < 1e-3 * result["distance_raw"]
    assert (run / "basin.png").is_file() and json.loads((run / "basin.json").read_text())["points"][0]["alpha"] == 0.0
