"""Each baseline method's defining property, on a tiny model."""

import pytest
import torch

from conftest import load_state
from safebasin import data, methods
from safebasin.config import TrainConfig
from safebasin.errors import UserError
from safebasin.train import train


def _cfg(tiny_model_dir, data_dir, out, **kw):
    base = dict(model=str(tiny_model_dir), data="dolly", data_dir=str(data_dir), max_examples=40, heldout_size=8,
                max_seq_len=160, batch_size=4, steps=3, lr=5e-3, seed=0, output_dir=str(out))
    return TrainConfig(**(base | kw))


def test_method_defaults_and_validation():
    assert TrainConfig(method="ema").ema_beta == 0.99
    assert TrainConfig(method="lora").lora_r == 8
    assert TrainConfig(method="ema", ema_beta=0.9).ema_beta == 0.9
    with pytest.raises(Exception, match="does not combine with ema_beta"):
        TrainConfig(method="interpolate", ema_beta=0.9)


def test_safety_mix_adds_exactly_n_safety_rows(data_dir):
    safety, _ = data.load_examples("safety", str(data_dir))
    safety_answers = {ex[-1]["content"] for ex in safety}
    plain_train, _, _ = data.load_for_training(TrainConfig(data="dolly", data_dir=str(data_dir), max_examples=300, heldout_size=20))
    for kw, n in (({}, 9), ({"safety_mix_fraction": 0.1}, 30), ({"safety_mix_count": 17}, 17)):
        cfg = TrainConfig(data="dolly", data_dir=str(data_dir), max_examples=300, heldout_size=20, method="safety-mix", **kw)
        mixed = methods.get("safety-mix")(cfg).prepare_rows(data.load_for_training(cfg)[0])
        assert len(mixed) == 300 + n and mixed[:300] == plain_train
        assert sum(ex[-1]["content"] in safety_answers for ex in mixed[300:]) == n
    with pytest.raises(UserError, match="safety-mix wants 99999 safety rows"):
        cfg = TrainConfig(data="dolly", data_dir=str(data_dir), method="safety-mix", safety_mix_count=99999)
        methods.get("safety-mix")(cfg).prepare_rows(data.load_for_training(cfg)[0])


def test_interpolate_ends_reproduce_theta0_and_theta_ft(tiny_model_dir, data_dir, tmp_path):
    init = load_state(tiny_model_dir)
    runs = {a: train(_cfg(tiny_model_dir, data_dir, tmp_path / str(a), method="interpolate", interpolate_alpha=a), show_progress=False)
            for a in (0.0, 1.0, 0.25)}
    ft = load_state(runs[1.0] / "raw")
    assert all(torch.equal(load_state(runs[0.0] / "model")[k], init[k]) for k in init)
    assert all(torch.equal(load_state(runs[1.0] / "model")[k], ft[k]) for k in init)
    quarter = load_state(runs[0.25] / "model")
    for k in init:
        torch.testing.assert_close(quarter[k], 0.75 * init[k] + 0.25 * ft[k], rtol=1e-5, atol=1e-6)
    a, b = [torch.randn(3)], [torch.randn(3)]
    assert torch.equal(methods.interpolate(a, b, 0.0)[0], a[0]) and torch.equal(methods.interpolate(a, b, 1.0)[0], b[0])


def test_l2_anchor_larger_lambda_stays_closer(tiny_model_dir, data_dir, tmp_path):
    init = load_state(tiny_model_dir)

    def distance(lam):
        out = train(_cfg(tiny_model_dir, data_dir, tmp_path / f"l2-{lam}", method="l2-anchor", l2_lambda=lam, steps=6),
                    show_progress=False)
        w = load_state(out / "model")
        return sum(float((w[k] - init[k]).pow(2).sum()) for k in init) ** 0.5

    d = [distance(lam) for lam in (0.0, 10.0, 1000.0)]
    assert d[0] > d[1] > d[2] > 0


def test_lora_leaves_base_weights_unchanged(tiny_model_dir, data_dir, tmp_path):
    out = train(_cfg(tiny_model_dir, data_dir, tmp_path / "lora", method="lora", lora_r=2, lr=5e-2), show_progress=False)
    init, merged = load_state(tiny_model_dir), load_state(out / "model")
    moved = [k for k in init if not torch.equal(merged[k], init[k])]
    assert moved and all(k.endswith("proj.weight") for k in moved)  # embeddings, norms, head untouched
    for k in moved:  # the change is the adapter's low-rank product: the base matrix itself did not move
        assert torch.linalg.matrix_rank(merged[k] - init[k], atol=1e-6) <= 2


def test_cli_method_flag(tiny_model_dir, data_dir, tmp_path):
    from conftest import run_cli

    bad = run_cli("train", "--model", tiny_model_dir, "--data", "dolly", "--data-dir", data_dir, "--method", "magic",
                  "--output-dir", tmp_path / "x")
    assert bad.returncode == 2 and "method: unknown method 'magic'; known: " in bad.stderr
    assert all(f"{name}," in bad.stderr or f"{name} " in bad.stderr for name in ("ema", "interpolate", "l2-anchor", "lora", "sft"))
    ok = run_cli("train", "--model", tiny_model_dir, "--data", "dolly", "--data-dir", data_dir, "--method", "l2-anchor",
                 "--l2-lambda", "0.5", "--steps", 1, "--batch-size", 2, "--max-examples", 8, "--heldout-size", 4,
                 "--max-seq-len", 160, "--output-dir", tmp_path / "y")
    assert ok.returncode == 0, ok.stderr
    log = (tmp_path / "y" / "train_log.jsonl").read_text()
    assert '"l2_penalty": 0.0' in log  # θ = θ0 before the first update
