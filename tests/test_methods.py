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


def test_built_in_methods_own_their_settings_and_the_flat_keys_still_work(caplog):
    from safebasin import config
    from safebasin.store import config_hash

    new = TrainConfig(method="l2-anchor", method_args={"weight": 1.0}, output_dir=".")
    config._WARNED.clear()
    with caplog.at_level("WARNING"):
        old = TrainConfig(method="l2-anchor", l2_lambda=1.0, output_dir=".")
        TrainConfig(method="l2-anchor", l2_lambda=3.0)
    assert old.method_args == {"weight": 1.0} and old.identity() == new.identity()
    assert [r.getMessage() for r in caplog.records] == ["l2_lambda is deprecated: write method_args: {weight: 1.0} (method l2-anchor)"]
    # the config hashes sweeps stored before the move, computed by that version's code: they must not move
    pinned = {"4a8b3f7cec19b249": new, "a2087a05c1bcc73a": TrainConfig(method="safety-mix", method_args={"fraction": 0.1}, output_dir="."),
              "d8108cec7e39df7d": TrainConfig(method="interpolate", method_args={"alpha": 0.75}, output_dir="."),
              "52d2cc3b0cae9106": TrainConfig(method="ema", ema_beta=0.9, lr=1e-4, output_dir="."),
              "49713836c882e28e": TrainConfig(method="lora", lora_r=8, lr=1e-3, output_dir=".")}
    assert {h: config_hash(c.identity()) for h, c in pinned.items()} == {h: h for h in pinned}
    assert methods.get("interpolate").settings(pinned["d8108cec7e39df7d"]).alpha == 0.75
    assert methods.get("safety-mix").describe(pinned["a2087a05c1bcc73a"]) == "safety rows: safety, 0.1 of the benign rows"
    # another method's flat key was always ignored: its default silently (old saved configs hold them all), else a line
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert TrainConfig(method="sft", l2_lambda=0.01).method_args == {}
        assert TrainConfig(method="sft", interpolate_alpha=0.9).method_args == {}
    assert [r.getMessage() for r in caplog.records] == ["interpolate_alpha is a setting of method interpolate; method sft ignores it"]
    for bad, msg in (({"method": "l2-anchor", "method_args": {"lambda": 1}}, r"method_args.lambda: unknown key \(method l2-anchor\)"),
                     ({"method": "interpolate", "method_args": {"alpha": 2}}, r"method_args.alpha: Input should be less than or equal to 1"),
                     ({"method": "l2-anchor", "l2_lambda": 1, "method_args": {"weight": 2}}, r"l2_lambda \(1\) and method_args.weight \(2\) disagree"),
                     ({"method": "sft", "method_args": {"weight": 2}}, "method sft takes no method_args")):
        with pytest.raises(UserError, match=msg):
            config.build(TrainConfig, bad)
    agreeing = TrainConfig(method="l2-anchor", l2_lambda=2, method_args={"weight": "2"})  # "2": a --method-arg is text
    assert methods.get("l2-anchor").settings(agreeing).weight == 2.0


def test_a_run_dir_saved_in_the_old_flat_shape_is_the_same_run(tmp_path):
    """A run dir written before the methods owned their settings resumes (or is skipped as done), not replaced."""
    import yaml

    from safebasin.train import same_config

    cfg = TrainConfig(method="l2-anchor", method_args={"weight": 1.0}, output_dir=str(tmp_path))
    old = cfg.identity(exclude=frozenset()) | {"l2_lambda": 1.0, "method_args": {}}  # what that version saved
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    assert same_config(tmp_path / "config.yaml", cfg)
    assert not same_config(tmp_path / "config.yaml", TrainConfig(method="l2-anchor", method_args={"weight": 2.0},
                                                                   output_dir=str(tmp_path)))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old | {"lr": "fast"}))  # no version wrote this
    assert not same_config(tmp_path / "config.yaml", cfg)


def test_safety_mix_adds_exactly_n_safety_rows(data_dir):
    safety, _ = data.load_examples("safety", str(data_dir))
    safety_answers = {ex[-1]["content"] for ex in safety}
    plain_train, _, _ = data.load_for_training(TrainConfig(data="dolly", data_dir=str(data_dir), max_examples=300, heldout_size=20))
    for kw, n in (({}, 9), ({"method_args": {"fraction": 0.1}}, 30), ({"safety_mix_count": 17}, 17)):
        cfg = TrainConfig(data="dolly", data_dir=str(data_dir), max_examples=300, heldout_size=20, method="safety-mix", **kw)
        mixed = methods.get("safety-mix")(cfg).prepare_rows(data.load_for_training(cfg)[0])
        assert len(mixed) == 300 + n and mixed[:300] == plain_train
        assert sum(ex[-1]["content"] in safety_answers for ex in mixed[300:]) == n
    with pytest.raises(UserError, match="safety-mix wants 99999 safety rows"):
        cfg = TrainConfig(data="dolly", data_dir=str(data_dir), method="safety-mix", method_args={"count": 99999})
        methods.get("safety-mix")(cfg).prepare_rows(data.load_for_training(cfg)[0])


def test_interpolate_ends_reproduce_theta0_and_theta_ft(tiny_model_dir, data_dir, tmp_path):
    init = load_state(tiny_model_dir)
    runs = {a: train(_cfg(tiny_model_dir, data_dir, tmp_path / str(a), method="interpolate", method_args={"alpha": a}), show_progress=False)
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
        out = train(_cfg(tiny_model_dir, data_dir, tmp_path / f"l2-{lam}", method="l2-anchor", method_args={"weight": lam}, steps=6),
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


def test_the_train_command_takes_every_config_key_and_the_old_flags(tiny_model_dir, data_dir, tmp_path):
    """`safebasin train`'s options are derived from TrainConfig, so a new key is a flag without a CLI edit; the
    built-in methods' old flat flags train exactly what --method-arg does."""
    import typer
    import yaml
    from conftest import run_cli

    from safebasin import cli

    train_cmd = typer.main.get_command(cli.app).commands["train"]
    options = {p.name for p in train_cmd.params}
    assert set(TrainConfig.model_fields) - {"method_args"} <= options
    assert {"l2_lambda", "interpolate_alpha", "safety_mix_fraction", "method_arg"} <= options
    common = ["--model", tiny_model_dir, "--data", "dolly", "--data-dir", data_dir, "--max-examples", "16",
              "--heldout-size", "4", "--max-seq-len", "96", "--batch-size", "4", "--steps", "2", "--lr", "5e-3",
              "--method", "l2-anchor", "--lora-target-modules", "q_proj,v_proj"]
    for name, extra in (("new", ["--method-arg", "weight=0.5"]), ("old", ["--l2-lambda", "0.5"])):
        r = run_cli("train", *common, *extra, "--output-dir", tmp_path / name)
        assert r.returncode == 0, r.stderr[-2000:]
    assert "l2_lambda is deprecated" in r.stderr
    saved = [yaml.safe_load((tmp_path / n / "config.yaml").read_text()) for n in ("new", "old")]
    assert saved[0]["method_args"] == {"weight": 0.5} and saved[0] == saved[1] | {"output_dir": saved[0]["output_dir"]}
    assert saved[0]["lora_target_modules"] == ["q_proj", "v_proj"]
    a, b = (load_state(tmp_path / n / "model") for n in ("new", "old"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_method_args_from_the_command_line_join_those_of_the_file(tmp_path):
    """--method-arg adds to (and overrides) the method_args the YAML file gives, key by key; it does not replace them."""
    from safebasin.config import load_train_config

    path = tmp_path / "mix.yaml"
    path.write_text("method: safety-mix\nmethod_args: {data: safety, count: 5}\n")
    cfg = load_train_config(path, {"method_args": {"fraction": "0.1", "count": "7"}})
    assert cfg.method_args == {"data": "safety", "count": 7, "fraction": 0.1}
