import pytest

from safebasin.config import TrainConfig, load_train_config
from safebasin.errors import UserError


@pytest.mark.parametrize("overrides, needle", [
    ({"lr": 0}, "lr: Input should be greater than 0"),
    ({"lr": -1e-5}, "lr: Input should be greater than 0"),
    ({"ema_beta": 1.5}, "ema_beta: Input should be less than or equal to 1"),
    ({"ema_beta": -0.1}, "ema_beta: Input should be greater than or equal to 0"),
    ({"batch_size": 0}, "batch_size: Input should be greater than or equal to 1"),
    ({"steps": 0}, "steps: Input should be greater than or equal to 1"),
    ({"lr": "fast"}, "lr: Input should be a valid number"),
])
def test_invalid_values_give_one_line_error_naming_the_key(overrides, needle):
    with pytest.raises(UserError) as e:
        load_train_config(None, overrides)
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_yaml_unknown_key_and_flag_precedence(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: 1e-4\nlearning_rate: 3\n")
    with pytest.raises(UserError, match=r"bad.yaml: invalid config: learning_rate: unknown key"):
        load_train_config(bad)
    good = tmp_path / "good.yaml"
    good.write_text("lr: 1.0e-4\nema_beta: 0.99\nsteps: 5\n")
    cfg = load_train_config(good, {"steps": 7, "seed": None})
    assert (cfg.lr, cfg.ema_beta, cfg.steps, cfg.seed) == (1e-4, 0.99, 7, 0)


def test_recipe_is_the_lowest_layer_and_is_validated(tmp_path):
    """--recipe safe ships in the package; a config file and the flags override it; a bad recipe is named."""
    from safebasin.config import RECIPES_DIR, recipe_values

    safe = recipe_values("safe")
    assert (RECIPES_DIR / "safe.yaml").is_file() and safe["lr"] <= 3e-5  # the map's safe side (docs/guidelines.md)
    cfg = load_train_config(None, {"seed": 3}, "safe")
    assert (cfg.lr, cfg.batch_size, cfg.schedule, cfg.seed) == (safe["lr"], safe["batch_size"], "constant", 3)
    over = tmp_path / "over.yaml"
    over.write_text("lr: 1.0e-6\n")
    cfg = load_train_config(over, {"ema_beta": 0.5}, "safe")
    assert (cfg.lr, cfg.ema_beta, cfg.batch_size) == (1e-6, 0.5, safe.get("batch_size", TrainConfig().batch_size))
    with pytest.raises(UserError, match=r"--recipe 'fast': no such recipe \(built in: .*safe.*\) and no such file"):
        load_train_config(None, {}, "fast")
    bad = tmp_path / "bad-recipe.yaml"
    bad.write_text("lr: -1\n")
    with pytest.raises(UserError, match=r"recipe .*bad-recipe.yaml: .*lr"):
        load_train_config(None, {}, str(bad))


def test_yaml_syntax_error_names_the_line(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("lr: 1e-4\nsteps: [1, 2\n")
    with pytest.raises(UserError, match=r"broken.yaml: line \d+: invalid YAML"):
        load_train_config(bad)


def test_defaults_are_safe():
    cfg = TrainConfig()
    assert cfg.trust_remote_code is False and cfg.ema_beta is None and cfg.lora_r == 0


def test_every_shipped_config_validates():
    """configs/ is data the user runs as is: each file must load with the schema it is for."""
    import yaml

    from conftest import ROOT
    from safebasin.config import load_train_config
    from safebasin.scenario import SCENARIOS
    from safebasin.sweep import load_sweep_config, trials

    files = sorted((ROOT / "configs").rglob("*.yaml"))
    assert len(files) >= 10
    for f in files:
        values = yaml.safe_load(f.read_text())
        if "accelerate" in f.parts:
            assert values["distributed_type"] in ("FSDP", "DEEPSPEED", "MULTI_GPU") and values["mixed_precision"] == "bf16", f
            if values["distributed_type"] == "FSDP":
                assert values["fsdp_config"]["fsdp_state_dict_type"] == "FULL_STATE_DICT", f  # save gathers the full model
        elif (scenario := f.relative_to(ROOT / "configs").parts[0]) in SCENARIOS:  # configs/<scenario>/...: a demo config
            assert SCENARIOS[scenario].config("default", str(f), {}), f
        elif "base" in values or "grid" in values or "trials" in values:
            cfg = load_sweep_config(str(f), [], {}, None)
            assert trials(cfg), f
        else:
            load_train_config(f)
    paper = {f.name: yaml.safe_load(f.read_text()) for f in files if "paper" in f.parts}
    for ds in ("dolly", "alpaca", "orca"):
        recipe = paper[f"llama2-7b-chat_{ds}.yaml"]
        assert recipe["base"]["max_seq_len"] == 512 and recipe["eval"]["max_new_tokens"] == 512
        assert sorted(t["ema_beta"] for t in recipe["trials"] if "ema_beta" in t) == [0.9, 0.95, 0.99, 0.995, 0.999]
        qi = recipe["trials"][0]
        assert qi["lr"] == 2e-5 and qi["batch_size"] * qi["grad_accum"] * 8 == 128
