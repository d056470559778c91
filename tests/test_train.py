import json

import pytest
import torch

from conftest import load_state, run_cli
from safebasin.config import TrainConfig
from safebasin.errors import UserError
from safebasin.train import train, train_arm


def _cfg(tiny_model_dir, data_dir, out, **kw):
    base = dict(model=str(tiny_model_dir), data="dolly", data_dir=str(data_dir), max_examples=48, heldout_size=8,
                max_seq_len=96, batch_size=4, steps=2, lr=1e-3, seed=0, output_dir=str(out))
    return TrainConfig(**(base | kw))


@pytest.fixture(scope="module")
def ema_runs(tiny_model_dir, data_dir, tmp_path_factory):
    """Three EMA runs on the same tiny model and data, differing only in β (and steps for 0.7)."""
    root = tmp_path_factory.mktemp("ema")
    return {
        beta: train(_cfg(tiny_model_dir, data_dir, root / str(beta), ema_beta=beta, steps=steps), show_progress=False)
        for beta, steps in ((1.0, 3), (0.0, 3), (0.7, 1))
    }


def test_output_dir_layout_and_log(ema_runs):
    out = ema_runs[0.0]
    for name in ("config.yaml", "model/model.safetensors", "model/tokenizer.json", "raw/model.safetensors", "train_log.jsonl"):
        assert (out / name).is_file(), name
    lines = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3]
    assert all({"step", "loss", "lr", "tokens", "seconds"} <= set(r) for r in lines)
    assert all(r["tokens"] > 0 and r["loss"] > 0 for r in lines)


def test_beta_one_keeps_the_initial_weights(ema_runs, tiny_model_dir):
    kept, init, raw = load_state(ema_runs[1.0] / "model"), load_state(tiny_model_dir), load_state(ema_runs[1.0] / "raw")
    assert kept.keys() == init.keys()
    assert all(torch.equal(kept[k], init[k]) for k in init)
    assert any(not torch.equal(raw[k], init[k]) for k in init)  # training did move the live weights


def test_beta_zero_keeps_the_live_weights(ema_runs):
    kept, raw = load_state(ema_runs[0.0] / "model"), load_state(ema_runs[0.0] / "raw")
    assert all(torch.equal(kept[k], raw[k]) for k in raw)


def test_one_step_beta_07_is_the_weighted_average(ema_runs, tiny_model_dir):
    kept, init, raw = load_state(ema_runs[0.7] / "model"), load_state(tiny_model_dir), load_state(ema_runs[0.7] / "raw")
    for k in init:
        torch.testing.assert_close(kept[k], 0.7 * init[k] + 0.3 * raw[k], rtol=1e-5, atol=1e-6)


def test_kept_model_loads_with_plain_transformers(ema_runs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    m = AutoModelForCausalLM.from_pretrained(ema_runs[0.7] / "model")
    tok = AutoTokenizer.from_pretrained(ema_runs[0.7] / "model")
    assert tok.chat_template and m.config.model_type == "llama"


def test_same_seed_same_losses_and_weights(tiny_model_dir, data_dir, tmp_path):
    a = train(_cfg(tiny_model_dir, data_dir, tmp_path / "a", steps=3, grad_accum=2), show_progress=False)
    b = train(_cfg(tiny_model_dir, data_dir, tmp_path / "b", steps=3, grad_accum=2), show_progress=False)
    la = [json.loads(x)["loss"] for x in (a / "train_log.jsonl").read_text().splitlines()]
    lb = [json.loads(x)["loss"] for x in (b / "train_log.jsonl").read_text().splitlines()]
    assert la == lb and len(la) == 3
    wa, wb = load_state(a / "model"), load_state(b / "model")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not (a / "raw").exists()  # no EMA, no raw/


def test_grad_accum_matches_one_big_batch(tiny_model_dir, data_dir, tmp_path):
    """Loss is normalised over the whole accumulated batch, so 2x4 accumulated == 1x8 (same rows)."""
    a = train(_cfg(tiny_model_dir, data_dir, tmp_path / "a", steps=1, batch_size=8, grad_clip=None), show_progress=False)
    b = train(_cfg(tiny_model_dir, data_dir, tmp_path / "b", steps=1, batch_size=4, grad_accum=2, grad_clip=None), show_progress=False)
    la = json.loads((a / "train_log.jsonl").read_text())["loss"]
    lb = json.loads((b / "train_log.jsonl").read_text())["loss"]
    assert la == pytest.approx(lb, rel=1e-5)
    wa, wb = load_state(a / "model"), load_state(b / "model")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-6)


def test_bf16_and_gradient_checkpointing_keep_the_run_and_a_float32_ema(tiny_model_dir, data_dir, tmp_path):
    """The GPU memory levers, on a CPU: checkpointing recomputes the same activations (same losses);
    bf16 autocast changes the arithmetic a little, not the run, and θ̄ stays float32."""
    kw = dict(steps=3, ema_beta=0.7)
    ref = train(_cfg(tiny_model_dir, data_dir, tmp_path / "ref", **kw), show_progress=False)
    ckpt = train(_cfg(tiny_model_dir, data_dir, tmp_path / "ckpt", gradient_checkpointing=True, **kw), show_progress=False)
    bf16 = train(_cfg(tiny_model_dir, data_dir, tmp_path / "bf16", mixed_precision="bf16", **kw), show_progress=False)

    def losses(run):
        return [json.loads(x)["loss"] for x in (run / "train_log.jsonl").read_text().splitlines()]

    assert losses(ckpt) == pytest.approx(losses(ref), rel=1e-6)
    assert losses(bf16) == pytest.approx(losses(ref), rel=2e-2) and losses(bf16) != losses(ref)
    kept, raw = load_state(bf16 / "model"), load_state(bf16 / "raw")
    assert all(t.dtype == torch.float32 for t in kept.values())
    ref_kept = load_state(ref / "model")
    k = next(k for k in kept if "q_proj" in k)
    torch.testing.assert_close(kept[k], ref_kept[k], rtol=0.05, atol=2e-3)
    assert not torch.equal(kept[k], raw[k])


def test_lora_trains_adapters_and_exports_a_merged_model(tiny_model_dir, data_dir, tmp_path):
    out = train(_cfg(tiny_model_dir, data_dir, tmp_path / "lora", lora_r=4, ema_beta=1.0, steps=2, lr=1e-2), show_progress=False)
    init, kept, raw = load_state(tiny_model_dir), load_state(out / "model"), load_state(out / "raw")
    assert kept.keys() == init.keys()  # merged: a plain model, no lora_ keys
    assert all(torch.equal(kept[k], init[k]) for k in init)  # β=1 over LoRA params: the base model
    changed = [k for k in init if not torch.equal(raw[k], init[k])]
    assert changed and all(k.endswith("proj.weight") for k in changed)  # only LoRA-targeted linears move


def test_different_run_in_output_dir_is_refused(tiny_model_dir, data_dir, tmp_path):
    train(_cfg(tiny_model_dir, data_dir, tmp_path / "x", steps=1), show_progress=False)
    with pytest.raises(UserError, match="holds a different run's config.yaml"):
        train(_cfg(tiny_model_dir, data_dir, tmp_path / "x", steps=2), show_progress=False)
    train(_cfg(tiny_model_dir, data_dir, tmp_path / "x", steps=2), overwrite=True, show_progress=False)


def test_a_demo_arm_keeps_a_finished_run_of_its_config_and_replaces_any_other(tiny_model_dir, data_dir, tmp_path):
    """An interrupted demo picks up at the arm it stopped in: the arms it finished are not trained again."""
    first = train_arm(_cfg(tiny_model_dir, data_dir, tmp_path / "arm", steps=1), show_progress=False)
    log = first / "train_log.jsonl"
    stamp, weights = log.stat().st_mtime_ns, load_state(first / "model")
    train_arm(_cfg(tiny_model_dir, data_dir, tmp_path / "arm", steps=1), show_progress=False)
    assert log.stat().st_mtime_ns == stamp  # kept, not retrained
    train_arm(_cfg(tiny_model_dir, data_dir, tmp_path / "arm", steps=2), show_progress=False)  # another config
    assert len(log.read_text().splitlines()) == 2
    assert any(not torch.equal(weights[k], v) for k, v in load_state(first / "model").items())


def test_cli_train_and_one_line_errors(tiny_model_dir, data_dir, tmp_path):
    out = tmp_path / "cli"
    ok = run_cli("train", "--model", tiny_model_dir, "--data", "dolly", "--data-dir", data_dir, "--steps", 2,
                 "--batch-size", 2, "--max-examples", 8, "--heldout-size", 4, "--max-seq-len", 64,
                 "--ema-beta", 0.99, "--output-dir", out)
    assert ok.returncode == 0, ok.stderr
    assert (out / "model" / "model.safetensors").is_file() and (out / "raw" / "model.safetensors").is_file()
    for args, needle in [
        (("--lr", "-1"), "lr: Input should be greater than 0"),
        (("--ema-beta", "2"), "ema_beta: Input should be less than or equal to 1"),
        (("--data", "nosuchset"), "unknown dataset 'nosuchset'"),
        (("--model", tmp_path / "nomodel"), "no such file or folder"),
    ]:
        base = {"--model": str(tiny_model_dir), "--data": "dolly", "--output-dir": str(tmp_path / "e")}
        base.update({args[0]: str(args[1])})
        r = run_cli("train", *[x for kv in base.items() for x in kv], "--steps", 1, "--data-dir", data_dir)
        assert r.returncode == 2, r.stderr
        assert needle in r.stderr and "Traceback" not in r.stderr
        assert len([l for l in r.stderr.splitlines() if l.startswith("error:")]) == 1
