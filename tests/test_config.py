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


def test_yaml_syntax_error_names_the_line(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("lr: 1e-4\nsteps: [1, 2\n")
    with pytest.raises(UserError, match=r"broken.yaml: line \d+: invalid YAML"):
        load_train_config(bad)


def test_defaults_are_safe():
    cfg = TrainConfig()
    assert cfg.trust_remote_code is False and cfg.ema_beta is None and cfg.lora_r == 0
