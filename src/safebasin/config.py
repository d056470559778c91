"""Run configs are data: YAML in, validated, saved beside every run.

Defaults live here, grouped, with why they are what they are. Unknown keys and wrong
types are errors that name the key, so a typo never silently trains the wrong thing.
"""

import logging
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import UserError, one_line

log = logging.getLogger(__name__)


class TrainConfig(BaseModel):
    # allow_inf_nan=False: `lr: .inf` would train every weight to NaN and save it
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    # Each field's description is its documentation and its `safebasin train --help` text (cli.config_options).
    # --- what to train, on what, and how (safebasin.methods documents each method and its source)
    method: str = Field("sft", description="A registered method (listed below). ema is sft with ema_beta defaulting "
                        "to 0.99, lora is sft with lora_r defaulting to 8: an explicit value wins.")
    method_args: dict = Field({}, description="The method's own settings, checked by it (safety-mix: fraction, count, "
                              "data; interpolate: alpha; l2-anchor: weight; adlm: disc_weight, ...).")
    model: str = Field("smollm2-135m-instruct", description="smollm2-135m-instruct, a HF id, a save_pretrained folder "
                       "or a .gguf file.")
    data: str = Field("dolly", description="A named data set (listed below; resolved in data_dir, then the hub) or a "
                      ".json/.jsonl/.csv file.")
    data_dir: str | None = Field(None, description="Where named datasets live (default: $SAFEBASIN_DATA_DIR, else "
                                 "../shared/data when it exists).")
    max_examples: int | None = Field(None, ge=1, description="Use at most this many training rows (the first after "
                                     "the seeded shuffle).")
    heldout_size: int = Field(100, ge=0, description="Rows held out (by seed) for the held-out loss.")
    filter_safety: bool = Field(True, description="Drop safety-related rows (Qi et al. 2023's phrase list): the "
                                "paper's no-safety setting.")
    max_seq_len: int = Field(256, ge=8, description="Longer examples are truncated.")
    chat_template: str | None = Field(None, description="A Jinja chat template (file or string), for models that ship none.")
    trust_remote_code: bool = Field(False, description="Run code shipped with the model (never on unless asked).")
    allow_pickle: bool = Field(False, description="Load .bin/.pt (pickle) weights; they can run code. Safetensors "
                               "only unless asked.")

    # --- optimisation: the paper's first finding is that these decide safety
    lr: float = Field(2e-5, gt=0, description="Peak learning rate (Qi et al.'s baseline; 1e-4 erodes safety on small "
                      "batches).")
    batch_size: int = Field(8, ge=1, description="Per-device micro-batch size.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step (effective batch = batch_size × "
                            "grad_accum × devices).")
    group_by_length: bool = Field(False, description="Batch rows of similar length: much less padding, a slightly "
                                  "less random order.")
    steps: int | None = Field(None, ge=1, description="Optimizer steps (overrides epochs).")
    epochs: float = Field(1.0, gt=0, description="Passes over the data when steps is not given.")
    schedule: Literal["cosine", "constant"] = Field("cosine", description="Learning-rate schedule: cosine or constant.")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    adam_beta1: float = Field(0.9, ge=0, lt=1, description="AdamW β1.")
    adam_beta2: float = Field(0.999, ge=0, lt=1, description="AdamW β2.")
    grad_clip: float | None = Field(1.0, gt=0, description="Max global grad norm (null in a config disables it).")
    seed: int = Field(0, ge=0, lt=2**32, description="Seed of the shuffle, the split and the run (numpy's range).")
    split_seed: int | None = Field(None, ge=0, lt=2**32, description="The held-out split's own seed (default: seed); "
                                   "fix it to compare seeds on one split.")

    # --- the paper's method: parameter-space EMA (None = off)
    ema_beta: float | None = Field(None, ge=0, le=1, description="Parameter-space EMA β in [0, 1]: higher stays "
                                   "closer to the aligned model and learns slower. Omit for no EMA.")
    ema_on_cpu: bool = Field(False, description="Hold the EMA copy θ̄ in CPU RAM, to save accelerator memory.")

    # --- LoRA (0 = full fine-tuning); any method may wear adapters, so they are the loop's, not a method's
    # (the baselines' own knobs, safety-mix's fraction, interpolate's α and l2-anchor's λ, are their method_args)
    lora_r: int = Field(0, ge=0, description="LoRA rank; 0 = full fine-tuning.")
    lora_alpha: int | None = Field(None, ge=1, description="LoRA alpha (default: 2 × lora_r).")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout.")
    lora_target_modules: list[str] | str = Field("all-linear", description="Modules that get adapters: all-linear, "
                                                 "or names (comma-separated on the command line).")

    # --- hardware
    mixed_precision: Literal["no", "bf16", "fp16"] = Field("no", description="no, bf16 or fp16 (autocast). The "
                                                           "demo's config also takes auto: bf16 where the CPU has "
                                                           "avx512_bf16/AMX or the GPU supports it, else no (emulated "
                                                           "bf16 is slower than float32).")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward: less memory, about "
                                         "30% slower.")

    # --- safety monitor: probe harmful rate during training (0 = off)
    monitor: int = Field(0, ge=0, description="Safety monitor: N probe evaluations over the run (10 is a good start; "
                         "0 = off).")
    monitor_bench: str = Field("advbench", description="The monitor's eval bench; the probe is drawn from a disjoint "
                               "set (JBB for AdvBench).")
    monitor_probe: int = Field(32, ge=1, description="Probe prompts, a seeded sample.")
    monitor_max_new_tokens: int = Field(32, ge=1, description="Tokens generated per probe prompt.")
    monitor_budget: float | None = Field(0.15, ge=0, description="Largest share of the training time the monitor may "
                                         "take; probes are re-spaced to fit (0 = every planned probe).")
    monitor_stop: float | None = Field(None, gt=0, le=1, description="Stop when the kept model's probe harmful rate "
                                       "exceeds the start's by this.")
    refusal_list: str = Field("gcg", description="The monitor's keyword judge list: gcg, qi2024, gcg-api, or a JSON file.")

    # --- outputs, checkpoints and fault handling
    output_dir: str = Field("runs/train", description="Where config.yaml, model/, raw/ and train_log.jsonl go.")
    log_every: int = Field(1, ge=1, description="Log every N optimizer steps.")
    # Where a run reports is not what it is: re-running a run dir with other trackers resumes it (train.plan_output_dir)
    report_to: str = Field("none", description="Experiment trackers: tensorboard, mlflow, wandb (offline; "
                           "comma-separated), or none; logs go to OUTPUT_DIR/trackers.")
    save_every: int = Field(0, ge=0, description="Checkpoint every N steps (and at the end); 0 = no checkpoints.")
    keep_checkpoints: int = Field(1, ge=1, description="Only the last K checkpoints are kept (each holds the weights "
                                  "and the optimizer).")
    stop_grad_norm: float | None = Field(None, gt=0, description="Stop when the grad norm exceeds this for "
                                         "stop_patience steps in a row.")
    stop_patience: int = Field(3, ge=1, description="Steps in a row over stop_grad_norm before the run stops.")

    @model_validator(mode="before")
    @classmethod
    def _method_defaults(cls, values):
        """Flat keys of a method's settings move into its method_args; then a named method fills in the setting
        that defines it, when the user gave none."""
        from . import methods

        if isinstance(values, dict) and isinstance(values.get("method", "sft"), str):
            if values.get("method", "sft") in methods.names():
                values = upgrade_legacy_keys(values)
                values = methods.get(values.get("method", "sft")).defaults(dict(values))
        return values

    def identity(self, exclude: frozenset = frozenset({"output_dir", "report_to"})) -> dict:
        """What a run is, as run dirs and a sweep's config hashes see it: the config in the shape it had before the
        built-in methods owned their settings (their flat keys, each method's default where it is not the run's),
        so that run dirs and stored sweeps from then keep resuming and skipping their finished trials."""
        from . import methods

        values = self.model_dump(mode="json", exclude=set(exclude))
        for flat, (method, field) in LEGACY_KEYS.items():
            cls = methods.get(method)
            settings = cls.settings(self) if method == self.method else cls.Settings()
            values[flat] = getattr(settings, field)
        if self.method in {method for method, _ in LEGACY_KEYS.values()}:
            values["method_args"] = {}
        return values

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        from . import methods

        if value not in methods.names():
            raise ValueError(f"unknown method {value!r}; known: {', '.join(methods.names())}")
        return value

    @field_validator("monitor_bench")
    @classmethod
    def _known_bench(cls, value: str) -> str:
        from .data import is_bench

        if not is_bench(value):
            raise ValueError(f"unknown bench {value!r} (not a registered bench nor a prompts file)")
        return value

    @field_validator("report_to", mode="before")
    @classmethod
    def _known_trackers(cls, value) -> str:
        return check_report_to(value)

    @model_validator(mode="after")
    def _check(self):
        from . import methods

        methods.get(self.method).check(self)
        try:
            settings = methods.get(self.method).settings(self)
        except ValidationError as e:
            raise ValueError("; ".join(_problems(e, "method_args.")) + f" (method {self.method})") from None
        if settings is not None:  # text from --method-arg is saved as the value it means ("0.5" -> 0.5); numbers
            typed = settings.model_dump(mode="json")  # from YAML stay as written, so their config hashes do not move
            given = {k: typed[k] if isinstance(v, str) and not isinstance(typed[k], str) else v
                     for k, v in self.method_args.items()}
            if given != self.method_args:
                self.__dict__["method_args"] = given  # not setattr: validate_assignment would run this check again
        if self.warmup_steps and self.steps and self.warmup_steps >= self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be smaller than steps ({self.steps})")
        return self


_WARNED: set[tuple[str, bool]] = set()  # (flat key, owned): one line each per process


# the built-in methods' knobs as flat keys, from before each method owned its settings: flat key -> (method, field)
LEGACY_KEYS = {"safety_mix_fraction": ("safety-mix", "fraction"), "safety_mix_count": ("safety-mix", "count"),
               "safety_mix_data": ("safety-mix", "data"), "interpolate_alpha": ("interpolate", "alpha"),
               "l2_lambda": ("l2-anchor", "weight")}


def _same_value(a, b) -> bool:
    """1, 1.0 and "1" (a --method-arg is text) are one value."""
    try:
        return a == b or str(a) == str(b) or float(a) == float(b)
    except (TypeError, ValueError):
        return False


def upgrade_legacy_keys(values: dict, warn: bool = True) -> dict:
    """`l2_lambda: 1.0` -> `method_args: {weight: 1.0}` for the method that owns the key (one deprecation line per
    key and process). Another method's flat key was always ignored: it is dropped, with a line unless it is that
    method's default (every saved config of the old shape holds them all)."""
    from . import methods

    values = dict(values)
    method = values.get("method", "sft")
    for flat, (owner, field) in LEGACY_KEYS.items():
        if flat not in values:
            continue
        value = values.pop(flat)
        if owner == method:
            args = values.get("method_args", {})
            if not isinstance(args, dict):
                values[flat] = value  # method_args is not a mapping: its own validation names it
                continue
            if field in args and not _same_value(args[field], value):
                raise ValueError(f"{flat} ({value!r}) and method_args.{field} ({args[field]!r}) disagree; give only "
                                 f"method_args.{field}")
            values["method_args"] = args | {field: value}
            note = f"{flat} is deprecated: write method_args: {{{field}: {value}}} (method {method})"
        elif value != methods.get(owner).Settings.model_fields[field].default:
            note = f"{flat} is a setting of method {owner}; method {method} ignores it"
        else:
            continue
        if warn and (flat, owner == method) not in _WARNED:
            _WARNED.add((flat, owner == method))
            log.warning(note)
    return values


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
    return f"{source}: invalid config: " + "; ".join(_problems(err))


def _problems(err: ValidationError, prefix: str = "") -> list[str]:
    """'key: what is wrong (got value)' per error; a whole-config check's message stands alone."""
    parts = []
    for e in err.errors():
        key = prefix + ".".join(str(x) for x in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        shown = e["type"] != "extra_forbidden" and "input" in e and not isinstance(e["input"], (dict, list))
        got = f" (got {one_line(repr(e['input']), 80)})" if shown else ""
        parts.append(f"{key}: {msg}{got}" if key != prefix else msg + got)
    return parts


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
    (None = not given; a mapping, such as --method-arg's, is merged into the layers' own), validated once; errors
    name the file, else `source`."""
    values = dict(base)
    if path:
        values |= read_yaml(path)
    for key, value in (overrides or {}).items():
        if value is not None:
            below = values.get(key)
            values[key] = below | value if isinstance(value, dict) and isinstance(below, dict) else value
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
