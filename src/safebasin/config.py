"""Run configs are data: YAML in, validated, saved beside every run.

Defaults live here, grouped, with why they are what they are. Unknown keys and wrong
types are errors that name the key, so a typo never silently trains the wrong thing.
"""

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from . import methods
from .data import is_bench
from .errors import UserError, one_line


class TrainConfig(BaseModel):
    # allow_inf_nan=False: `lr: .inf` would train every weight to NaN and save it
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    # --- what to train, on what, and how (safebasin.methods documents each method and its source)
    method: str = "sft"  # a registered method: sft, ema, safety-mix, lora, interpolate, l2-anchor, or a system's own
    method_args: dict = {}  # settings of a system's method, validated by that method (e.g. adlm: disc_weight, ewc_weight)
    model: str = "smollm2-135m-instruct"  # built-in name, HF id, save_pretrained folder or .gguf
    data: str = "dolly"  # dataset name (resolved in data_dir, then the hub) or a local file
    data_dir: str | None = None  # default: $SAFEBASIN_DATA_DIR, else ../shared/data when it exists
    max_examples: int | None = Field(None, ge=1)  # first N rows after the seeded shuffle
    heldout_size: int = Field(100, ge=0)  # rows held out for utility (held-out loss); same seed = same split
    filter_safety: bool = True  # drop safety-related rows (Qi et al. 2023 phrase list): the "no-safety" setting
    max_seq_len: int = Field(256, ge=8)
    chat_template: str | None = None  # a Jinja file or string, only for models that ship none
    trust_remote_code: bool = False  # never on unless asked: it runs code from the model repo
    allow_pickle: bool = False  # .bin/.pt weights unpickle arbitrary code; safetensors only unless asked

    # --- optimisation: the paper's first finding is that these decide safety
    lr: float = Field(2e-5, gt=0)  # Qi et al. baseline; 1e-4 erodes safety on small batches
    batch_size: int = Field(8, ge=1)  # per device, per micro-batch
    grad_accum: int = Field(1, ge=1)  # effective batch = batch_size * grad_accum * devices
    group_by_length: bool = False  # batch rows of similar length: much less padding, a slightly less random order
    steps: int | None = Field(None, ge=1)  # optimizer steps; overrides epochs when set
    epochs: float = Field(1.0, gt=0)
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    adam_beta2: float = Field(0.999, ge=0, lt=1)
    grad_clip: float | None = Field(1.0, gt=0)  # max global grad norm; None disables
    seed: int = Field(0, ge=0, lt=2**32)  # numpy's seed range
    split_seed: int | None = Field(None, ge=0, lt=2**32)  # the held-out split's seed (None: seed); fix it to compare seeds on one split

    # --- the paper's method: parameter-space EMA (None = off)
    ema_beta: float | None = Field(None, ge=0, le=1)  # higher = closer to the aligned model, slower to learn
    ema_on_cpu: bool = False  # hold θ̄ in CPU RAM to save accelerator memory

    # --- baselines that compete with EMA (method-specific; ignored by other methods)
    safety_mix_fraction: float = Field(0.03, ge=0, le=1)  # safety-mix: share of the benign rows added as safety rows
    safety_mix_count: int | None = Field(None, ge=0)  # safety-mix: an exact number instead of the fraction
    safety_mix_data: str = "safety"  # safety-mix: where the (instruction -> refusal) rows come from
    interpolate_alpha: float = Field(0.5, ge=0, le=1)  # interpolate: θ = α·θ_ft + (1−α)·θ0
    l2_lambda: float = Field(0.01, ge=0)  # l2-anchor: loss + λ‖θ−θ0‖²

    # --- LoRA (0 = full fine-tuning)
    lora_r: int = Field(0, ge=0)
    lora_alpha: int | None = Field(None, ge=1)  # default: 2 * lora_r
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    lora_target_modules: list[str] | str = "all-linear"

    # --- hardware
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    gradient_checkpointing: bool = False

    # --- safety monitor: probe harmful rate during training (0 = off)
    monitor: int = Field(0, ge=0)  # number of probe evaluations over the run (10 is a good start)
    monitor_bench: str = "advbench"  # the eval bench; the probe is drawn from a disjoint set (JBB for AdvBench)
    monitor_probe: int = Field(32, ge=1)  # probe prompts, a seeded sample
    monitor_max_new_tokens: int = Field(32, ge=1)
    # the monitor's largest share of the training time: probes are re-spaced to fit (0 or null = probe as planned)
    monitor_budget: float | None = Field(0.15, ge=0)
    monitor_stop: float | None = Field(None, gt=0, le=1)  # stop when the kept model's probe rate exceeds the start's by this
    refusal_list: str = "gcg"  # keyword judge list for the monitor

    # --- outputs, checkpoints and fault handling
    output_dir: str = "runs/train"
    log_every: int = Field(1, ge=1)
    # experiment trackers, comma-separated: tensorboard, mlflow, wandb (offline), or none; logs in <output_dir>/trackers.
    # Where a run reports is not what it is: re-running a run dir with other trackers resumes it (train.plan_output_dir)
    report_to: str = "none"
    save_every: int = Field(0, ge=0)  # checkpoint every N steps and at the end; 0 = no checkpoints
    keep_checkpoints: int = Field(1, ge=1)  # only the last K are kept (each holds weights + optimizer)
    stop_grad_norm: float | None = Field(None, gt=0)  # stop when the grad norm exceeds this ...
    stop_patience: int = Field(3, ge=1)  # ... for this many steps in a row

    @model_validator(mode="before")
    @classmethod
    def _method_defaults(cls, values):
        """A named method fills in the setting that defines it, when the user gave none."""
        if isinstance(values, dict) and isinstance(values.get("method", "sft"), str):
            if values.get("method", "sft") in methods.names():
                values = methods.get(values.get("method", "sft")).defaults(dict(values))
        return values

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        if value not in methods.names():
            raise ValueError(f"unknown method {value!r}; known: {', '.join(methods.names())}")
        return value

    @field_validator("monitor_bench")
    @classmethod
    def _known_bench(cls, value: str) -> str:
        if not is_bench(value):
            raise ValueError(f"unknown bench {value!r} (not a registered bench nor a prompts file)")
        return value

    @field_validator("report_to", mode="before")
    @classmethod
    def _known_trackers(cls, value) -> str:
        return check_report_to(value)

    @model_validator(mode="after")
    def _check(self):
        methods.get(self.method).check(self)
        try:
            methods.get(self.method).settings(self)
        except ValidationError as e:
            raise ValueError(_one_line(e, f"method_args of {self.method}")) from None
        if self.warmup_steps and self.steps and self.warmup_steps >= self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be smaller than steps ({self.steps})")
        return self


TRACKERS = ("tensorboard", "mlflow", "wandb")  # --report-to: through Accelerate's tracker API, all offline


def check_report_to(value) -> str:
    """`tensorboard,mlflow` (or a YAML list) -> the canonical "tensorboard,mlflow"; "none" for no tracker."""
    names = value if isinstance(value, list) else str(value).split(",") if isinstance(value, str) else None
    if names is None:
        raise ValueError("expected tracker names: none, or a comma-separated list of " + ", ".join(TRACKERS))
    names = list(dict.fromkeys(str(n).strip().lower() for n in names if str(n).strip()))
    unknown = [n for n in names if n not in TRACKERS + ("none",)]
    if unknown:
        raise ValueError(f"unknown tracker {unknown[0]!r}: use none, or any of {', '.join(TRACKERS)} (comma-separated)")
    if "none" in names and len(names) > 1:
        raise ValueError("none cannot be combined with a tracker")
    return ",".join(n for n in names if n != "none") or "none"


def _one_line(err: ValidationError, source: str) -> str:
    parts = []
    for e in err.errors():
        key = ".".join(str(x) for x in e["loc"]) or "config"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        shown = e["type"] != "extra_forbidden" and "input" in e and not isinstance(e["input"], (dict, list))
        parts.append(f"{key}: {msg}" + (f" (got {one_line(repr(e['input']), 80)})" if shown else ""))
    return f"{source}: invalid config: " + "; ".join(parts)


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read config: {e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}:" if mark else ""
        raise UserError(f"{path}:{where} invalid YAML: {getattr(e, 'problem', e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: a config must be a mapping of keys to values, got {type(data).__name__}")
    return data


def build(cls, values: dict, source: str = "config"):
    """Validate a dict into a config class, turning pydantic's report into one line."""
    try:
        return cls(**values)
    except ValidationError as e:
        raise UserError(_one_line(e, source)) from None
    except TypeError as e:  # non-string keys
        raise UserError(f"{source}: invalid config: {e}") from None


def layered(cls, base: dict, path: str | Path | None, overrides: dict | None, source: str):
    """Every config's layering: `base` (a preset, a recipe), then the YAML file's values, then the command line's
    (None = not given), validated once; errors name the file, else `source`."""
    values = dict(base)
    if path:
        values |= read_yaml(path)
    values |= {k: v for k, v in (overrides or {}).items() if v is not None}
    return build(cls, values, str(path) if path else source)


def from_preset(cls, presets: dict, preset: str, path: str | None = None, overrides: dict | None = None,
                label: str = "demo"):
    """A demo's config: the preset's values under the YAML file and the command line."""
    return layered(cls, presets[preset], path, overrides, f"{label} preset {preset!r}")


RECIPES_DIR = Path(__file__).parent / "recipes"  # named recipes: validated YAML shipped in the wheel (docs/guidelines.md)


def recipe_values(name: str) -> dict:
    """`--recipe NAME` (safebasin/recipes/NAME.yaml) or a YAML path: the lowest layer of a training config."""
    path = RECIPES_DIR / f"{name}.yaml"
    if not path.is_file():
        if not Path(name).expanduser().is_file():
            known = ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")))
            raise UserError(f"--recipe {name!r}: no such recipe (built in: {known}) and no such file")
        path = Path(name).expanduser()
    values = read_yaml(path)
    build(TrainConfig, values, f"recipe {path}")  # checked alone, so a bad recipe is named as the culprit
    return values


def load_train_config(path: str | Path | None = None, overrides: dict | None = None, recipe: str | None = None) -> TrainConfig:
    """A recipe first, then the YAML file, then non-None overrides (CLI flags) on top."""
    return layered(TrainConfig, recipe_values(recipe) if recipe else {}, path, overrides,
                   f"recipe {recipe}" if recipe else "config")
