"""Fine-tuning methods as plug-ins: one object per method, one training loop (`train.py`) for all.

A method says how it builds or wraps the model, which parameters train, its loss for a batch
(plus named terms to log), how rows become batches, what it does to the weights at the end,
and whether `eval` needs its own generation step. The loop owns everything else: Accelerate,
accumulation, the EMA step (so "any method + EMA" comes for free), checkpoints, the monitor,
NaN stops and logging. A new system registers its methods with `@register`; the registry finds
the subpackages of `safebasin` (`detox/`, `dialogue/`, `kg/`, ...) and the `safebasin.plugins`
entry points by itself (`plugins.py`), so neither the loop nor the CLI changes.

| method      | what it does                                                       | source |
|-------------|--------------------------------------------------------------------|--------|
| sft         | plain fine-tuning (the baseline)                                   | Qi et al. 2023, "Fine-tuning aligned LMs compromises safety" |
| ema         | sft + parameter-space EMA θ̄ ← β·θ̄ + (1−β)·θ, θ̄ kept              | Kim, Kwak et al. 2025, arXiv 2508.12531 |
| safety-mix  | mix N (instruction -> refusal) rows into the benign data           | Bianchi et al. 2024, "Safety-Tuned LLaMAs" (SafeInstr) |
| lora        | low-rank adapters; limits how far the weights can move             | Hu et al. 2022, "LoRA" |
| interpolate | post-hoc θ = α·θ_ft + (1−α)·θ0                                     | Wortsman et al. 2022, "Robust fine-tuning of zero-shot models" (WiSE-FT) |
| l2-anchor   | loss + λ‖θ−θ0‖²: the regularisation view of staying in the basin   | Kirkpatrick et al. 2017 (EWC with identity Fisher); Xuhong et al. 2018 (L2-SP) |

Only safety-mix needs extra (safety) data. EMA and interpolate both end near θ0; EMA averages
the whole trajectory, interpolate only its end point.

A method's own knobs are its `Settings`, given as `method_args` (safety-mix: fraction, count, data;
interpolate: alpha; l2-anchor: weight), as every system's method does. The flat keys they had before
(`safety_mix_fraction`, `interpolate_alpha`, `l2_lambda`, ...) are `config.LEGACY_KEYS`: still
accepted, with one deprecation line. LoRA stays a flat `lora_*` group of TrainConfig, not a method's
setting: any method may wear adapters (safety-mix + LoRA, EMA over LoRA), so they belong to the loop.
"""

import contextlib
import copy
import logging

import torch
from pydantic import BaseModel, ConfigDict, Field

from . import data
from .errors import UserError
from .registry import Registry

log = logging.getLogger(__name__)

REGISTRY: Registry[type["Method"]] = Registry("method")


def register(cls: type["Method"]) -> type["Method"]:
    """Class decorator: make a method available by its `name` to the config, the CLI and the loop."""
    return REGISTRY.register(cls.name, cls)


def names() -> list[str]:
    return REGISTRY.names()


def get(name: str) -> type["Method"]:
    return REGISTRY.lookup(name)


class Method:
    """Plain fine-tuning; every other method overrides only what it changes.

    The loop calls, in order: `prepare_rows` and `encode` (data), `build` (the model; every user
    mistake must surface here, before the run dir is touched), `trainable`, `start` (the weights are
    θ0 now), then per step `collate`, `loss` per micro-batch and `after_backward`, and at the end
    `finalize` and `export`.
    """

    name = "sft"
    about = ""  # one line for `--help`: what the method does, and its source
    changes_final_weights = False  # finalize() rewrites the weights: the loop saves the live ones as raw/ first
    supports_sharding = True  # False: needs full weights on every rank (FSDP / ZeRO-3 are refused)
    folder_marker: str | None = None  # a file in the method's own saved folders (not a plain save_pretrained one)
    prompt_prefix = ""  # text put before every plain-text prompt at generation (ATCON's control code)
    Settings = None  # a pydantic model validating cfg.method_args (extra keys forbidden); None = takes none
    implied: dict = {}  # settings the method's name implies (its data set, ...); what the user gives wins

    def __init__(self, cfg):
        self.cfg = cfg

    # --- config: what the method's name implies, and what it cannot combine with
    @classmethod
    def defaults(cls, values: dict) -> dict:
        """Fill in the setting that defines the method when the user gave none (raw config values)."""
        return cls.implied | values

    @classmethod
    def check(cls, cfg) -> None:
        """Raise ValueError for a setting the method cannot run with."""

    @classmethod
    def settings(cls, cfg):
        """cfg.method_args validated by the method's own Settings (its defaults filled in)."""
        if cls.Settings is None:
            if cfg.method_args:
                raise ValueError(f"method {cls.name} takes no method_args (got {', '.join(cfg.method_args)})")
            return None
        return cls.Settings(**cfg.method_args)

    @classmethod
    def describe(cls, cfg) -> str | None:
        """The method's own setting as a model card's recipe line shows it (None: nothing beyond the recipe)."""
        return None

    # --- data
    def prepare_rows(self, rows: list) -> list:
        return rows

    def encode(self, rows: list, tok, source: str) -> list[dict]:
        return data.tokenize(rows, tok, self.cfg.max_seq_len, source)

    def collate(self, items: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
        return data.collate(items, pad_id)

    # --- model
    def build(self, model):
        """Wrap or extend the loaded model: LoRA when lora_r > 0 (any method may use adapters)."""
        return lora_wrap(model, self.cfg) if self.cfg.lora_r else model

    def trainable(self, model) -> list[tuple[str, torch.nn.Parameter]]:
        return [(n, p) for n, p in model.named_parameters() if p.requires_grad]

    def param_groups(self, named: list[tuple[str, torch.nn.Parameter]]) -> list[dict]:
        """The optimizer's parameter groups (one, at the run's lr, unless a method's new modules need their own)."""
        return [{"params": [p for _, p in named]}]

    def start(self, params: list[torch.Tensor]) -> None:
        """The trainable weights are θ0 now (before any update, before a resume loads a checkpoint)."""

    # --- one step
    def loss(self, model, batch: dict, n_items: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """(loss, named extra terms to log). `n_items`: response tokens of the whole accumulated global batch."""
        return model(**batch, num_items_in_batch=n_items).loss, {}

    def after_backward(self, params: list[torch.Tensor]) -> dict:
        """Gradients of the whole step are in place (before clipping); returns named terms to log."""
        return {}

    # --- end of training and outputs
    def finalize(self, params: list[torch.Tensor]) -> None:
        """Rewrite the trainable weights into the kept model, when `changes_final_weights`."""

    def export(self, model):
        """A plain transformers model for save_pretrained: LoRA adapters are merged into a copy."""
        if hasattr(model, "merge_and_unload"):
            return copy.deepcopy(model).merge_and_unload()
        return model

    def save(self, model, tok, folder, state_dict=None) -> None:
        """Write the kept (or raw) model: a plain save_pretrained folder unless the method keeps its own format."""
        from . import models

        models.save(self.export(model), tok, folder, state_dict=state_dict)

    @classmethod
    def load_folder(cls, folder, **load_kwargs):
        """(model, tokenizer) from a folder this method saved with its `folder_marker`."""
        raise NotImplementedError

    @contextlib.contextmanager
    def steered(self, model, alpha: float | None):
        """For sampled plain-text generation: yields a `combine(logits) -> logits` step while the model is in the
        method's steered mode (ADLM: both attributes from one trunk pass), or None for the model's own logits."""
        yield None


def is_model_folder(folder) -> bool:
    """Whether `folder` holds a saved model: a plain save_pretrained folder, or a method's own format (its marker)."""
    from pathlib import Path

    folder = Path(folder)
    if (folder / "config.json").is_file():
        return True
    return any(cls.folder_marker and (folder / cls.folder_marker).is_file() for cls in REGISTRY.values())


def load_model_folder(folder, **load_kwargs):
    """(model, tokenizer, method class) for a saved model folder: a method's own format when its marker is
    there (an ADLM block beside a pointer to its base model), else a plain save_pretrained folder."""
    from pathlib import Path

    from . import models

    for cls in REGISTRY.values():
        if cls.folder_marker and (Path(folder) / cls.folder_marker).is_file():
            model, tok = cls.load_folder(Path(folder), **load_kwargs)
            return model, tok, cls
    model, tok = models.load(str(folder), **load_kwargs)
    return model, tok, None


def lora_wrap(model, cfg):
    from peft import LoraConfig, get_peft_model

    lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha or 2 * cfg.lora_r, lora_dropout=cfg.lora_dropout,
                      target_modules=cfg.lora_target_modules, task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, lcfg)
    except ValueError as e:  # peft: "Target modules {...} not found in the base model"
        raise UserError(f"lora_target_modules {cfg.lora_target_modules!r}: {e}") from None


@register
class SFT(Method):
    name = "sft"
    about = "plain fine-tuning, the baseline (Qi et al. 2023)"


@register
class EMAMethod(Method):
    """The EMA itself is the loop's own step (after every optimizer step, for any method with ema_beta);
    this name only gives it a default β."""

    name = "ema"
    about = "sft + parameter-space EMA of the weights, the average kept (Kim, Kwak et al. 2025)"

    @classmethod
    def defaults(cls, values):
        return values | {"ema_beta": 0.99} if values.get("ema_beta") is None else values

    @classmethod
    def check(cls, cfg):
        if not cfg.ema_beta:
            raise ValueError("method ema needs ema_beta > 0")


@register
class LoRA(Method):
    name = "lora"
    about = "sft through low-rank adapters, merged at the end (Hu et al. 2022)"

    @classmethod
    def defaults(cls, values):
        return values | {"lora_r": 8} if not values.get("lora_r") else values

    @classmethod
    def check(cls, cfg):
        if not cfg.lora_r:
            raise ValueError("method lora needs lora_r > 0")


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class SafetyMixSettings(_Settings):
    fraction: float = Field(0.03, ge=0, le=1)  # share of the benign rows added as safety rows (Bianchi et al.: 3%)
    count: int | None = Field(None, ge=0)  # an exact number of safety rows instead of the fraction
    data: str = "safety"  # where the (instruction -> refusal) rows come from: a train set name or a file


@register
class SafetyMix(Method):
    name = "safety-mix"
    about = "mixes safety refusals into the benign data (Bianchi et al. 2024)"
    Settings = SafetyMixSettings

    def prepare_rows(self, rows):
        mix = self.settings(self.cfg)
        mixed, n = data.mix_safety(rows, mix.data, mix.count, mix.fraction, self.cfg.data_dir, self.cfg.seed)
        log.info("safety-mix: added %d safety rows to %d benign rows", n, len(rows))
        return mixed

    @classmethod
    def describe(cls, cfg):
        mix = cls.settings(cfg)
        return f"safety rows: {mix.data}, " + (f"{mix.count}" if mix.count is not None else f"{mix.fraction:g} of the benign rows")


class Anchored(Method):
    """Methods that need θ0 beside the live weights (a full copy: not under sharding yet)."""

    supports_sharding = False

    @classmethod
    def check(cls, cfg):
        if cfg.lora_r:
            raise ValueError(f"method {cls.name} is defined for full fine-tuning (lora_r must be 0)")

    def start(self, params):
        self.theta0 = [p.detach().clone() for p in params]


class InterpolateSettings(_Settings):
    alpha: float = Field(0.5, ge=0, le=1)  # θ = α·θ_ft + (1−α)·θ0: 0 is θ0, 1 is the fine-tuned end point


@register
class Interpolate(Anchored):
    name = "interpolate"
    about = "θ = α·θ_ft + (1−α)·θ0 after training (WiSE-FT, Wortsman et al. 2022)"
    changes_final_weights = True
    Settings = InterpolateSettings

    @classmethod
    def describe(cls, cfg):
        return f"α = {cls.settings(cfg).alpha:g} (θ = α·θ_ft + (1−α)·θ0)"

    @classmethod
    def check(cls, cfg):
        super().check(cfg)
        if cfg.ema_beta is not None:
            raise ValueError("method interpolate merges the final weights with θ0; it does not combine with ema_beta")

    @torch.no_grad()
    def finalize(self, params):
        for p, m in zip(params, interpolate(self.theta0, params, self.settings(self.cfg).alpha)):
            p.copy_(m)


class L2AnchorSettings(_Settings):
    weight: float = Field(0.01, ge=0)  # λ in loss + λ‖θ−θ0‖²


@register
class L2Anchor(Anchored):
    name = "l2-anchor"
    about = "loss + λ‖θ−θ0‖² (L2-SP, Xuhong et al. 2018)"
    Settings = L2AnchorSettings

    def start(self, params):
        super().start(params)
        self.weight = self.settings(self.cfg).weight

    def after_backward(self, params):
        return {"l2_penalty": l2_anchor_grad(params, self.theta0, self.weight)}

    @classmethod
    def describe(cls, cfg):
        return f"λ = {cls.settings(cfg).weight:g} (loss + λ‖θ−θ0‖²)"


@torch.no_grad()
def interpolate(theta0: list[torch.Tensor], theta_ft: list[torch.Tensor], alpha: float) -> list[torch.Tensor]:
    """α·θ_ft + (1−α)·θ0, exact at α=0 (θ0) and α=1 (θ_ft)."""
    return [torch.lerp(a.float(), b.to(a.device, torch.float32), alpha) for a, b in zip(theta0, theta_ft)]


@torch.no_grad()
def l2_anchor_grad(params: list[torch.Tensor], theta0: list[torch.Tensor], lam: float) -> float:
    """Add ∇(λ‖θ−θ0‖²) = 2λ(θ−θ0) to the gradients in place; returns the penalty λ‖θ−θ0‖²."""
    diff = torch._foreach_sub([p.detach() for p in params], theta0)
    grads = [p.grad for p in params]
    if any(g is None for g in grads):
        raise RuntimeError("l2-anchor: a trainable parameter has no gradient")
    torch._foreach_add_(grads, diff, alpha=2.0 * lam)
    return lam * float(sum(float(n) ** 2 for n in torch._foreach_norm(diff)))
