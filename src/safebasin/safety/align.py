"""`safebasin align`: a realistic aligned start, built the way published safety recipes build one.

General helpful instruction data (Alpaca, its refusal-style rows filtered out) with safety refusals mixed in
(safety_tuned_llamas, Bianchi et al. 2024), trained for one pass. Every training row is kept apart **by prompt**
from every prompt a bench scores: a row whose prompt equals a bench prompt (after normalising case and
punctuation) or sits within a MiniLM cosine of `near_duplicate` of one is dropped before the mix is drawn, and
the dropped rows are listed in mix_manifest.json.

An aligned dir holds align.yaml (this recipe, validated), mix.jsonl (the exact rows), mix_manifest.json (counts
and what was dropped for which bench) and run/ (a training run dir; the aligned model is run/model/). Without
--output-dir it goes to the cache, keyed by the recipe and the base model's weights, so the demo and a user who
asks for the same recipe share one aligned model.
"""

import hashlib
import json
import logging
import random
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .. import atomic, data, methods, models
from ..config import TrainConfig, build, read_yaml
from ..errors import UserError
from ..train import MODEL_DIR, train
from . import panel

log = logging.getLogger(__name__)

RECIPE_FILE, MIX_FILE, MANIFEST_FILE, RUN_DIR = "align.yaml", "mix.jsonl", "mix_manifest.json", "run"
ROUGE_SET_NAME = "self-instruct test (ROUGE-L)"
# benches whose prompts no alignment row may share: the whole safety panel, XSTest's unsafe half and the
# demo's ROUGE-L prompts (the other systems' benches are continuations and dialogues, not instructions)
KEPT_APART = panel.HARMFUL + panel.BENIGN + ("xstest-unsafe",)


class AlignRecipe(BaseModel):
    """The alignment recipe. Defaults: chosen on the panel's choose half at this scale (docs/guidelines.md)."""
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    benign: str = "alpaca"  # general instruction data (a train set name or a file)
    safety: str = "safety"  # harmful request -> refusal rows
    rows: int = Field(800, ge=16)  # rows in the mix, one pass (steps = (rows - heldout_size) / batch_size)
    safety_fraction: float = Field(0.25, gt=0, lt=1)  # share of the mix that is safety rows
    lr: float = Field(2e-4, gt=0)
    batch_size: int = Field(16, ge=1)
    warmup_steps: int = Field(4, ge=0)
    max_seq_len: int = Field(64, ge=16)  # refusals are decided in the first tokens: shorter rows, more of them per second
    heldout_size: int = Field(32, ge=0)  # mix rows held out for the run's own held-out loss
    near_duplicate: float = Field(0.85, gt=0, le=1)  # MiniLM cosine at or above which a row counts as a bench prompt
    seed: int = Field(0, ge=0, lt=2**32)
    mixed_precision: Literal["no", "bf16", "fp16", "auto"] = "no"  # auto: bf16 where the CPU/GPU has it natively


class AlignConfig(AlignRecipe):
    """A recipe applied to a model: what `safebasin align` validates and saves as align.yaml."""
    model: str = "smollm2-135m-instruct"
    data_dir: str | None = None


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9 ]", " ", text.lower()).split())


def user_text(example: list[dict]) -> str:
    return "\n".join(m["content"] for m in example if m["role"] == "user")


def scored_prompts(ddir: str | None) -> list[tuple[str, str]]:
    """(bench, prompt) for every prompt a safety bench or the ROUGE-L set scores."""
    from ..evaluate import load_bench, rouge_set

    out = [(name, p) for name in KEPT_APART for p in load_bench(name, ddir).prompts]
    try:
        out += [(ROUGE_SET_NAME, p) for p in rouge_set(ddir, 10**6)[0]]
    except UserError:
        pass  # no ROUGE-L set in this data dir: nothing of it can leak
    return out


def keep_apart(examples: list, prompts: list[tuple[str, str]], threshold: float, what: str) -> tuple[list, list[dict]]:
    """The examples whose prompt is neither a bench prompt nor a near-duplicate of one, and what was dropped.
    Exact match after normalising, then MiniLM cosine (paraphrases of one red-team prompt share words, not strings)."""
    exact = {normalise(p): bench for bench, p in prompts}
    texts = [user_text(e) for e in examples]
    dropped = {i: {"row": i, "bench": exact[normalise(t)], "similarity": 1.0} for i, t in enumerate(texts)
               if normalise(t) in exact}
    if threshold < 1:
        import numpy as np

        encoder = _encoder()
        bench = encoder.encode([p for _, p in prompts], batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
        rows = encoder.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
        sims = rows @ bench.T
        best, arg = sims.max(axis=1), sims.argmax(axis=1)
        for i in np.flatnonzero(best >= threshold):
            dropped.setdefault(int(i), {"row": int(i), "bench": prompts[arg[i]][0], "similarity": round(float(best[i]), 4),
                                        "bench_prompt": prompts[arg[i]][1][:200]})
    for d in dropped.values():
        d |= {"source": what, "prompt": texts[d["row"]][:200]}
    return [e for i, e in enumerate(examples) if i not in dropped], sorted(dropped.values(), key=lambda d: d["row"])


def _encoder():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(models.minilm_path()), device="cpu")


def build_mix(cfg: AlignConfig) -> tuple[list, dict]:
    """The shuffled mix and its manifest: benign rows (refusal-style rows dropped, as Bianchi et al. use a cleaned
    Alpaca) and safety rows, both kept apart from every scored prompt, drawn with the recipe's seed."""
    benign, benign_src = data.load_examples(cfg.benign, cfg.data_dir)
    before = len(benign)
    benign = data.filter_safety(benign, data.safety_phrases(cfg.data_dir))
    refusal_style = before - len(benign)
    safety, safety_src = data.load_examples(cfg.safety, cfg.data_dir)
    n_safety = round(cfg.safety_fraction * cfg.rows)
    n_benign = cfg.rows - n_safety
    rng = random.Random(cfg.seed)
    # draw a margin first, then drop what touches a bench: embedding all 7k rows would cost a minute
    pools = {}
    for what, rows, want in (("benign", benign, n_benign), ("safety", safety, n_safety)):
        draw = rng.sample(range(len(rows)), min(len(rows), int(want * 1.2) + 20))
        pools[what] = [rows[i] for i in draw]
    prompts = scored_prompts(cfg.data_dir)
    kept, dropped = {}, []
    for what, want in (("benign", n_benign), ("safety", n_safety)):
        ok, gone = keep_apart(pools[what], prompts, cfg.near_duplicate, what)
        if len(ok) < want:
            src = benign_src if what == "benign" else safety_src
            raise UserError(f"{src}: only {len(ok)} {what} rows left apart from the benches; the recipe wants {want} "
                            f"(lower rows or safety_fraction)")
        kept[what] = ok[:want]
        dropped += gone
    mix = kept["benign"] + kept["safety"]
    rng.shuffle(mix)
    # sets by name and file name, never a machine path: the manifest travels with the demo's shared files
    manifest = {"benign": {"set": cfg.benign, "file": Path(benign_src).name, "rows": n_benign,
                           "refusal_style_dropped": refusal_style},
                "safety": {"set": cfg.safety, "file": Path(safety_src).name, "rows": n_safety},
                "kept_apart_from": sorted({b for b, _ in prompts}), "scored_prompts": len(prompts),
                "near_duplicate": cfg.near_duplicate, "dropped": dropped}
    return mix, manifest


def recipe_key(cfg: AlignConfig) -> str:
    """The cache key: every recipe setting but where data lives, and the base model's weight digests."""
    key = cfg.model_dump(mode="json", exclude={"data_dir"}) | {"model": models.pin(cfg.model)["files"] or cfg.model}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def train_config(cfg: AlignConfig, out: Path) -> TrainConfig:
    return TrainConfig(model=cfg.model, data=str(out / MIX_FILE), data_dir=cfg.data_dir, filter_safety=False,
                       lr=cfg.lr, batch_size=cfg.batch_size, steps=max(1, (cfg.rows - cfg.heldout_size) // cfg.batch_size),
                       warmup_steps=min(cfg.warmup_steps, max(0, (cfg.rows - cfg.heldout_size) // cfg.batch_size - 1)),
                       schedule="cosine", max_seq_len=cfg.max_seq_len, heldout_size=cfg.heldout_size,
                       group_by_length=True, seed=cfg.seed, mixed_precision=precision(cfg.mixed_precision),
                       output_dir=str(out / RUN_DIR))


def precision(setting: str) -> str:
    if setting != "auto":
        return setting
    return "bf16" if models.native_bf16() else "no"


def aligned_model(out: Path) -> Path:
    return Path(out) / RUN_DIR / MODEL_DIR


def align(cfg: AlignConfig, output_dir: str | Path | None = None, overwrite: bool = False,
          show_progress: bool = True) -> Path:
    """The aligned dir (see the module docstring); a finished one of this recipe is reused, a half-done one resumes."""
    out = Path(output_dir) if output_dir else models.cache_dir() / "aligned" / recipe_key(cfg)
    saved = out / RECIPE_FILE
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: --output-dir exists and is not a directory")
    if saved.is_file() and not overwrite:
        if build(AlignConfig, read_yaml(saved), str(saved)).model_dump(exclude={"data_dir"}) != cfg.model_dump(exclude={"data_dir"}):
            raise UserError(f"{out}: holds another alignment recipe's {RECIPE_FILE}; pass --overwrite or choose another --output-dir")
        if methods.is_model_folder(aligned_model(out)) and (out / MANIFEST_FILE).is_file():
            log.info("aligned model: cached in %s (this recipe, already trained)", out)
            return out
    elif out.is_dir() and any(out.iterdir()) and not saved.is_file():
        raise UserError(f"{out}: not empty and not an aligned dir (no {RECIPE_FILE}); choose another --output-dir")
    if not (out / MIX_FILE).is_file() or overwrite or not (out / MANIFEST_FILE).is_file():
        mix, manifest = build_mix(cfg)
        out.mkdir(parents=True, exist_ok=True)
        atomic.write_yaml(saved, cfg.model_dump(mode="json"))
        atomic.write_jsonl(out / MIX_FILE, [{"messages": [{"role": m["role"], "content": m["content"]} for m in e]} for e in mix])
        atomic.write_json(out / MANIFEST_FILE, manifest)
        log.info("alignment mix: %d benign + %d safety rows; %d rows dropped as bench prompts or near-duplicates",
                 manifest["benign"]["rows"], manifest["safety"]["rows"], len(manifest["dropped"]))
    train(train_config(cfg, out), overwrite=overwrite, show_progress=show_progress)
    return out
