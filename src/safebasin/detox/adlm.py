"""ADLM: a frozen LM, a trainable projection block and an attribute discriminator (arXiv 2210.10329).

The block is a copy of the LM's last decoder layer, fed the previous layer's hidden states plus a
learned embedding of the attribute (toxic / non-toxic), zero at the start, so the model starts out
equal to the LM. It trains with
    loss = LM loss (conditioned on the row's attribute) + λ·discriminator loss, and γ·EWC
where the discriminator classifies the block's pooled output by attribute, and EWC keeps the block
near the layer it was copied from, weighted by a diagonal Fisher of the LM's own loss. At generation
the trunk runs once; only the block runs twice (both attributes, one batch of 2B rows) and the
next-token log-probabilities are combined, by default log p_nt + α·(log p_nt − log p_t) ("contrast": suppress
what the toxic attribute prefers, amplify what the non-toxic one does), or only the suppression,
log p_nt − α·max(0, log p_t − log p_nt) ("suppress"). Which of these details are the paper's and which
are choices made here is in docs/detox.md.
"""

import contextlib
import copy
import json
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import save_file

from .. import atomic, data, models
from ..errors import UserError
from ..methods import Method, register
from .data import NONTOXIC, TOXIC

ATTRIBUTES = (TOXIC, NONTOXIC)  # attribute id = index here
STEER_RULES = ("contrast", "suppress")
BLOCK_FILE, POINTER_FILE = "adlm_block.safetensors", "adlm.json"


class AttributeBlock(torch.nn.Module):
    """Stands in the decoder's last layer slot. `attr_ids` (B,) selects one attribute per row; `steer` runs
    both attributes on the same trunk states and returns 2B rows (non-toxic first)."""

    def __init__(self, layer: torch.nn.Module, hidden: int):
        super().__init__()
        self.layer = copy.deepcopy(layer)
        self.attribute = torch.nn.Embedding(len(ATTRIBUTES), hidden)
        torch.nn.init.zeros_(self.attribute.weight)  # starts equal to the LM
        # the embedding is added as gain·e, gain = the RMS of the hidden states it joins (set at the start of
        # training): Adam moves e by about lr per step, which must be on the scale of those states to matter
        self.register_buffer("gain", torch.ones(()))
        self.attr_ids: torch.Tensor | None = None
        self.steer = False
        self.last_output: torch.Tensor | None = None

    def forward(self, *args, **kwargs):
        """Called as the decoder calls its layers: hidden states first, then whatever that family passes, by
        position (GPT-2 passes its cache and mask so) or by name; in steer mode every batch-first tensor of them
        is repeated for the second attribute."""
        hidden_states, args = (args[0], args[1:]) if args else (kwargs.pop("hidden_states"), ())
        b = hidden_states.shape[0]
        emb = (self.attribute.weight * self.gain).to(hidden_states.dtype)
        if self.steer:
            hidden_states = torch.cat([hidden_states + emb[ATTRIBUTES.index(NONTOXIC)],
                                       hidden_states + emb[ATTRIBUTES.index(TOXIC)]])
            args = tuple(_twice(a, b) for a in args)
            kwargs = {k: _twice(v, b) for k, v in kwargs.items()}
        else:
            ids = self.attr_ids if self.attr_ids is not None else torch.full((b,), ATTRIBUTES.index(NONTOXIC),
                                                                               device=hidden_states.device)
            hidden_states = hidden_states + emb[ids][:, None, :]
        out = self.layer(hidden_states, *args, **kwargs)
        self.last_output = out[0] if isinstance(out, tuple) else out
        return out


def _twice(t, b: int):
    """A batch-first tensor (mask, position ids, rotary cos/sin) of batch B repeated for the two attributes, and a
    pair of them each; batch-1 tensors broadcast as they are, and 1-D ones (cache_position) are not per row."""
    if isinstance(t, tuple) and t and all(torch.is_tensor(x) for x in t):
        return tuple(_twice(x, b) for x in t)
    return torch.cat([t, t]) if torch.is_tensor(t) and t.dim() >= 2 and t.shape[0] == b and b > 1 else t


# Where each decoder-only family keeps its decoder layers and the final norm the LM head reads, as attribute
# paths; the first that the model has is used. One table, so a family is added in one line.
TRUNKS = (
    ("model.layers", "model.norm"),  # Llama, Qwen2, Mistral, Phi3, Gemma 2 and 3, SmolLM2
    ("transformer.h", "transformer.ln_f"),  # GPT-2 (the ADLM paper's own model)
    ("gpt_neox.layers", "gpt_neox.final_layer_norm"),  # GPT-NeoX, Pythia
    ("model.decoder.layers", "model.decoder.final_layer_norm"),  # OPT (None when the layer norm comes first)
)


def _at(model, path: str):
    for name in path.split("."):
        model = getattr(model, name, None)
    return model


def trunk(model) -> tuple[torch.nn.ModuleList, torch.nn.Module]:
    """(decoder layers, final norm): the layers the block's slot is in and the norm applied to its output."""
    for layers_at, norm_at in TRUNKS:
        layers = _at(model, layers_at)
        if isinstance(layers, torch.nn.ModuleList) and len(layers):
            return layers, _at(model, norm_at) or torch.nn.Identity()
    raise UserError(f"ADLM needs a decoder-only LM whose decoder layers are at one of "
                    f"{', '.join(layers for layers, _ in TRUNKS)}; {type(model).__name__} has none of them")


def decoder_layers(model) -> torch.nn.ModuleList:
    return trunk(model)[0]


def attach(model) -> tuple[AttributeBlock, torch.nn.Linear]:
    """Freeze the LM, put the block in its last layer's slot and add the discriminator (both trainable)."""
    for p in model.parameters():
        p.requires_grad_(False)
    layers = decoder_layers(model)
    block = AttributeBlock(layers[-1], model.config.hidden_size)
    for p in block.parameters():
        p.requires_grad_(True)
    layers[-1] = block
    model.adlm_discriminator = torch.nn.Linear(model.config.hidden_size, len(ATTRIBUTES))
    return block, model.adlm_discriminator


class ADLMSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    # benchmarks/detox_tuning.py (docs/detox.md): at the demo's lr 2e-3 and 60 steps, γ 1 with α 6 detoxifies at a
    # large fluency cost; γ 100 keeps fluency but its toxicity reduction did not hold on held-out prompts
    disc_weight: float = Field(1.0, ge=0)  # λ; 0 = the ablation without the discriminator
    ewc_weight: float = Field(1.0, ge=0)  # γ; 0 = the ablation without EWC (Fisher normalised to mean 1)
    fisher_batches: int = Field(8, ge=1)  # batches of the training data for the diagonal Fisher at θ0
    steer_alpha: float = Field(6.0, ge=0, le=10)  # default strength at generation (eval --steer-alpha overrides)
    steer_rule: Literal[STEER_RULES] = "contrast"  # how the two attributes' predictions combine (module doc)


@register
class ADLM(Method):
    name = "adlm"
    about = "detox: a frozen LM with a projection block and an attribute discriminator (ADLM)"
    folder_marker = POINTER_FILE
    Settings = ADLMSettings
    supports_sharding = False

    implied = {"data": "jigsaw", "filter_safety": False}

    @classmethod
    def check(cls, cfg):
        if cfg.lora_r:
            raise ValueError("method adlm trains its own block on a frozen LM; lora_r must be 0")

    def encode(self, rows, tok, source):
        encoded = data.tokenize(rows, tok, self.cfg.max_seq_len, source)
        for n, item in enumerate(encoded, 1):
            if item.get("attribute") not in ATTRIBUTES:
                raise UserError(f"{source}: example {n}: ADLM needs rows with an attribute ({' or '.join(ATTRIBUTES)}), "
                                f"got {item.get('attribute')!r}; train on jigsaw or a text file with 'attribute'")
        self.encoded = encoded
        return encoded

    def collate(self, items, pad_id):
        batch = data.collate(items, pad_id)
        batch["attribute"] = torch.tensor([ATTRIBUTES.index(x["attribute"]) for x in items])
        return batch

    def build(self, model):
        self.model = model
        self.block, self.discriminator = attach(model)
        self.args = self.settings(self.cfg)
        return model

    def trainable(self, model):
        return [(n, p) for n, p in model.named_parameters() if p.requires_grad]

    def start(self, params):
        """θ0, the attribute gain, and a diagonal Fisher of the LM's own loss for the block's layer (EWC),
        from the first batches."""
        layer = [p for p in self.block.layer.parameters()]
        self.theta0 = [p.detach().clone() for p in layer]
        self.ewc_params = layer
        fisher = [torch.zeros_like(p) for p in layer]
        pad = self.model.config.pad_token_id if self.model.config.pad_token_id is not None else 0
        bs = self.cfg.batch_size
        batches = [self.encoded[i: i + bs] for i in range(0, len(self.encoded), bs)][: self.args.fisher_batches]
        device = layer[0].device
        for items in batches:
            batch = {k: v.to(device) for k, v in data.collate(items, pad).items()}
            self.block.attr_ids = None
            with torch.no_grad():
                saved = self.block.attribute.weight.clone()
                self.block.attribute.weight.zero_()  # the LM's own loss: no attribute
            loss = self.model(**batch).loss
            grads = torch.autograd.grad(loss, layer)
            with torch.no_grad():
                self.block.attribute.weight.copy_(saved)
            for f, g in zip(fisher, grads):
                f += g.detach() ** 2 / len(batches)
        mean = sum(float(f.sum()) for f in fisher) / max(1, sum(f.numel() for f in fisher))
        self.fisher = [f / mean if mean > 0 else f for f in fisher]
        seen = []
        hook = self.block.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().float().pow(2).mean()))
        with torch.no_grad():
            batch = {k: v.to(device) for k, v in data.collate(batches[0], pad).items()}
            self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        hook.remove()
        self.block.gain.fill_(float(seen[0]) ** 0.5)

    def loss(self, model, batch, n_items):
        attr = batch.pop("attribute")
        self.block.attr_ids = attr
        out = model(**batch, num_items_in_batch=n_items)
        self.block.attr_ids = None
        h = trunk(self.model)[1](self.block.last_output)  # the latent the LM head reads: the block's output, normalised
        mask = batch["attention_mask"][..., None].to(h.dtype)
        pooled = (h * mask).sum(1) / mask.sum(1).clamp(min=1)
        logits = self.discriminator(pooled.float())
        disc = torch.nn.functional.cross_entropy(logits, attr) / self.cfg.grad_accum
        acc = float((logits.argmax(-1) == attr).float().mean()) / self.cfg.grad_accum
        return out.loss + self.args.disc_weight * disc, {"lm_loss": float(out.loss.detach()),
                                                         "disc_loss": float(disc.detach()), "disc_acc": acc}

    @torch.no_grad()
    def after_backward(self, params):
        """EWC's gradient, γ·2F(θ−θ0), added once per step (like the L2 anchor); returns the penalty γ·Σ F(θ−θ0)²."""
        if not self.args.ewc_weight:
            return {"ewc": 0.0}
        penalty = 0.0
        for p, p0, f in zip(self.ewc_params, self.theta0, self.fisher):
            d = p.detach() - p0
            if p.grad is not None:
                p.grad.add_(2.0 * self.args.ewc_weight * f * d)
            penalty += float((f * d * d).sum())
        return {"ewc": self.args.ewc_weight * penalty}

    # --- saving: the block, the attribute embedding and the discriminator, beside a pointer to the base LM
    def save(self, model, tok, folder, state_dict=None):
        tensors = {f"block.{k}": v.detach().cpu().contiguous() for k, v in self.block.state_dict().items()}
        tensors |= {f"discriminator.{k}": v.detach().cpu().contiguous() for k, v in self.discriminator.state_dict().items()}
        with atomic.replace_folder(folder) as tmp:
            save_file(tensors, str(tmp / BLOCK_FILE))
            (tmp / POINTER_FILE).write_text(json.dumps({
                "method": "adlm", "base_model": self.cfg.model, "base_model_pin": models.pin(self.cfg.model),
                # the template's text, not the path as typed: a relative path means another file from elsewhere
                "chat_template": models.read_chat_template(self.cfg.chat_template) if self.cfg.chat_template else None,
                "attributes": list(ATTRIBUTES), "steer_alpha": self.args.steer_alpha, "steer_rule": self.args.steer_rule,
                "block_params": sum(v.numel() for v in tensors.values()),
            }, indent=2) + "\n")
            tok.save_pretrained(tmp)

    @classmethod
    def load_folder(cls, folder, **load_kwargs):
        """The base LM its pin leads to (never whatever `base_model` reaches from this directory), with the block
        and discriminator checked against it: every bad side file is one line naming the file and field."""
        path = folder / POINTER_FILE
        pointer = _read_pointer(path)
        tensors = _read_block(folder / BLOCK_FILE)
        base = _base_spec(pointer, path)
        try:
            template = load_kwargs.pop("chat_template", None) or pointer.get("chat_template")  # eval --chat-template wins
            model, tok = models.load(base, chat_template=template, **load_kwargs)
        except UserError as e:
            raise UserError(f"{folder}: the ADLM block's base model {base!r} cannot be loaded: {e}") from None
        block, disc = attach(model)
        want = {f"block.{k}": v for k, v in block.state_dict().items()}
        want |= {f"discriminator.{k}": v for k, v in disc.state_dict().items()}
        models.check_side_tensors(want, tensors, folder / BLOCK_FILE, f" for the base model {pointer['base_model']!r} "
                                  f"({POINTER_FILE}: field 'base_model'); a block trained on another base model?")
        block.load_state_dict({k.removeprefix("block."): v for k, v in tensors.items() if k.startswith("block.")})
        disc.load_state_dict({k.removeprefix("discriminator."): v for k, v in tensors.items() if k.startswith("discriminator.")})
        model.adlm_steer_alpha = pointer.get("steer_alpha", 1.0)
        model.adlm_steer_rule = pointer.get("steer_rule", "contrast")
        model.eval()
        return model, tok

    @contextlib.contextmanager
    def steered(self, model, alpha):
        block = decoder_layers(model)[-1]
        if alpha is None:  # the run's own, checked when its pointer loaded
            alpha = getattr(model, "adlm_steer_alpha", 1.0)
        elif not 0 <= alpha <= 10:
            raise UserError(f"--steer-alpha must be in [0, 10], got {alpha}")

        rule = getattr(model, "adlm_steer_rule", "contrast")

        def combine(logits, top_p: float):
            """The rule's combination over the non-toxic distribution's top-p nucleus (as DExperts filters with its
            base model): steering re-ranks the plausible tokens and never brings in implausible ones."""
            b = logits.shape[0] // 2
            nt, t = logits[:b].float().log_softmax(-1), logits[b:].float().log_softmax(-1)
            probs, order = nt.exp().sort(dim=-1, descending=True)
            cut = probs.cumsum(-1) - probs >= top_p  # the same rule as sampling.nucleus_sample
            outside = torch.zeros_like(cut).scatter(-1, order, cut)
            shift = (nt - t) if rule == "contrast" else -(t - nt).clamp(min=0)
            return (nt + alpha * shift).masked_fill(outside, float("-inf"))

        combine.alpha = alpha  # what was applied, for eval.json
        block.steer = True
        try:
            yield combine
        finally:
            block.steer = False


def _read_pointer(path) -> dict:
    """adlm.json as ADLM wrote it: an object whose `base_model` is a spec and whose steering settings are in range."""
    pointer = atomic.read_json_object(path)
    if not isinstance(pointer.get("base_model"), str) or not pointer["base_model"]:
        raise UserError(f"{path}: field 'base_model' is missing or not a model spec")
    alpha = pointer.get("steer_alpha", 1.0)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 10:  # NaN fails the range
        raise UserError(f"{path}: field 'steer_alpha' must be a number in [0, 10], got {alpha!r}")
    if pointer.get("steer_rule", "contrast") not in STEER_RULES:
        raise UserError(f"{path}: field 'steer_rule' must be one of {', '.join(STEER_RULES)}, "
                        f"got {pointer.get('steer_rule')!r}")
    return pointer


def _base_spec(pointer: dict, path) -> str:
    """The base LM to load: the pinned absolute path (refused when it now holds other weights, or when
    `base_model` was edited away from it). A pointer from before the pin loads only when its `base_model` means
    the same from every directory (a built-in name, a hub id, an absolute path)."""
    base = pointer["base_model"]
    if "base_model_pin" in pointer:
        pin = pointer["base_model_pin"]
        if isinstance(pin, dict) and pin.get("as_written") != base:
            raise UserError(f"{path}: field 'base_model' is {base!r} but 'base_model_pin' was made from "
                            f"{pin.get('as_written')!r}; the pointer was hand-edited: restore it or retrain")
        return models.check_pin(pin, str(path), "base_model_pin")
    if base not in models.BUILTIN and models.looks_like_path(base) and not Path(base).expanduser().is_absolute():
        raise UserError(f"{path}: field 'base_model' is the relative path {base!r}, which leads to another model from "
                        "another directory, and the pointer has no 'base_model_pin' (written before pins); retrain")
    return base


def _read_block(path) -> dict[str, torch.Tensor]:
    """The block file's tensors, each finite: a NaN block would steer every token into NaN logits."""
    return models.read_side_tensors(path, "the ADLM block and discriminator")
