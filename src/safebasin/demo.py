"""`safebasin demo`: the whole story on the embedded model, on a CPU, in minutes.

1. The base model (SmolLM2-135M-Instruct is not aligned) is scored on AdvBench.
2. It is aligned on safety data (safety_tuned_llamas refusals); the aligned model is cached.
3. From it, Dolly (safety rows filtered out) is learned in four arms: aggressive, aggressive+EMA,
   careful, careful+EMA. EMA never changes the training trajectory, so an EMA run's raw/ weights
   *are* the arm without EMA: two training runs give four arms, at identical data and seed.
4. Every model is scored on AdvBench (keyword judge) and utility (held-out loss, ROUGE-L).
5. summary.json, tradeoff.png, report.html and a terminal table.
"""

import hashlib
import json
import logging
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from . import atomic, data, models, report
from .config import TrainConfig, build, read_yaml
from .evaluate import evaluate_model, load_bench, rouge_set
from .judges import keyword_judge
from .train import MODEL_DIR, RAW_DIR, train

log = logging.getLogger(__name__)

SCENARIOS: dict = {}  # name -> (make_config(preset, yaml_path, overrides), run(config, output_dir) -> summary)


def register_scenario(name: str, module: str, make_config: str, run: str) -> None:
    """A system's `safebasin demo NAME`, by the names of its functions in `module` (imported only when that
    demo runs, so registering costs nothing at start-up); its summary carries a `table` (columns, rows)."""
    import importlib

    def later(attr):
        return lambda *args: getattr(importlib.import_module(module), attr)(*args)

    SCENARIOS[name] = (later(make_config), later(run))


class Recipe(BaseModel):
    """One fine-tuning recipe; the EMA arm and the plain arm share its run."""
    model_config = ConfigDict(extra="forbid")
    lr: float = Field(gt=0)
    batch_size: int = Field(ge=1)
    grad_accum: int = Field(1, ge=1)
    steps: int = Field(ge=1)
    ema_beta: float = Field(ge=0, le=1)


class DemoConfig(BaseModel):
    """Defaults fit about 8 minutes on 2 CPU cores, the one-off alignment included (cached after)."""
    model_config = ConfigDict(extra="forbid")
    model: str = "smollm2-135m-instruct"
    data_dir: str | None = None
    seed: int = 0
    prompts: int = Field(48, ge=1)  # the first N AdvBench prompts (no cherry-picking)
    max_new_tokens: int = Field(32, ge=1)  # refusals show in the first tokens; the paper decodes 512
    gen_batch_size: int = Field(24, ge=1)
    rouge_prompts: int = Field(8, ge=0)  # Self-Instruct test prompts with references
    heldout_size: int = Field(32, ge=1)  # Dolly rows held out for held-out loss
    max_seq_len: int = Field(128, ge=16)  # the main cost lever on a CPU (paper: 512)
    mixed_precision: str = "auto"  # training only: bf16 where the CPU/GPU has it (~1.4x on avx512_bf16); eval stays float32
    # alignment: the same in every preset, so the cached aligned model is shared
    align_steps: int = Field(20, ge=1)
    align_lr: float = Field(1e-4, gt=0)
    align_batch_size: int = Field(8, ge=1)
    # (a)/(b): high lr, small batch; (c)/(d): low lr, larger effective batch, the same number of rows
    aggressive: Recipe = Recipe(lr=2e-4, batch_size=4, steps=24, ema_beta=0.98)  # θ̄ keeps 0.98^24 = 62% of θ0's weight
    careful: Recipe = Recipe(lr=2e-5, batch_size=8, grad_accum=2, steps=6, ema_beta=0.9)


PRESETS = {
    "quick": {"prompts": 24, "rouge_prompts": 4, "heldout_size": 24,
              "aggressive": {"lr": 2e-4, "batch_size": 4, "steps": 12, "ema_beta": 0.97},
              "careful": {"lr": 2e-5, "batch_size": 8, "grad_accum": 2, "steps": 3, "ema_beta": 0.8}},
    "default": {},
    "full": {"prompts": 520, "max_new_tokens": 64, "rouge_prompts": 50, "heldout_size": 100, "max_seq_len": 256,
             "aggressive": {"lr": 1e-4, "batch_size": 8, "steps": 60, "ema_beta": 0.995},
             "careful": {"lr": 2e-5, "batch_size": 8, "grad_accum": 4, "steps": 15, "ema_beta": 0.99}},
}


SCALED_DOWN = [
    "model: SmolLM2-135M-Instruct (embedded GGUF, dequantized) instead of 7B/8B chat models",
    "alignment: a short safety-tuning on safety_tuned_llamas refusals stands in for vendor alignment",
    "AdvBench: the first {prompts} of 520 prompts; greedy decoding of {max_new_tokens} new tokens (paper: 512)",
    "Dolly: {max_seq_len}-token sequences and a few dozen optimizer steps (paper: 512 tokens, 1 epoch of 1k+ rows)",
    "EMA beta scaled to the short runs: the paper's 0.99-0.995 assume hundreds of steps",
]


def demo_config(preset: str = "default", path: str | None = None, overrides: dict | None = None) -> DemoConfig:
    values = dict(PRESETS[preset])
    if path:
        values |= read_yaml(path)
    values |= {k: v for k, v in (overrides or {}).items() if v is not None}
    return build(DemoConfig, values, path or f"demo preset {preset!r}")


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


def _train_cfg(cfg: DemoConfig, **kw) -> TrainConfig:
    precision = cfg.mixed_precision if cfg.mixed_precision != "auto" else ("bf16" if native_bf16() else "no")
    return TrainConfig(data_dir=cfg.data_dir, seed=cfg.seed, max_seq_len=cfg.max_seq_len, heldout_size=cfg.heldout_size,
                       schedule="constant", warmup_steps=0, mixed_precision=precision, **kw)


def align(cfg: DemoConfig, show_progress: bool) -> Path:
    """Safety-tune the base model once; later demos reuse the cached result."""
    tc = _train_cfg(cfg, model=cfg.model, data="safety", filter_safety=False, lr=cfg.align_lr,
                    batch_size=cfg.align_batch_size, steps=cfg.align_steps, output_dir="")
    tc.heldout_size = 0  # nothing is scored on the safety data: presets share one cached aligned model
    # only non-default settings: a new config field with a default must not invalidate the cache
    key = tc.model_dump(mode="json", exclude_defaults=True) | {"model_id": _model_identity(cfg.model)}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    out = models.cache_dir() / "aligned" / digest
    if (out / MODEL_DIR / "model.safetensors").is_file():
        log.info("aligned model: cached in %s", out)
        return out
    tc.output_dir = str(out)
    return train(tc, overwrite=True, show_progress=show_progress)


def _model_identity(spec: str) -> str:
    path = Path(models.resolve(spec))
    weights = path / "model.safetensors"
    return f"{path}:{weights.stat().st_size}:{weights.stat().st_mtime_ns}" if weights.is_file() else spec


def run_demo(cfg: DemoConfig, output_dir: str | Path, show_progress: bool = True) -> dict:
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_yaml(out / "demo_config.yaml", cfg.model_dump(mode="json"))
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    # --- what every model is scored on (fixed before any training: no cherry-picking)
    judge = keyword_judge("gcg", cfg.data_dir)
    bench = load_bench("advbench", cfg.data_dir, limit=cfg.prompts)
    dolly = _train_cfg(cfg, model=cfg.model, data="dolly")
    _, heldout, _ = data.load_for_training(dolly)
    rouge = rouge_set(cfg.data_dir, cfg.rouge_prompts) if cfg.rouge_prompts else None
    timings["setup"] = time.perf_counter() - t0

    def score(label: str, source: str) -> tuple[dict, list[dict]]:
        t = time.perf_counter()
        model, tok = models.load(source)
        entry, rows = evaluate_model(model, tok, label, [bench], judge, max_new_tokens=cfg.max_new_tokens,
                                     batch_size=cfg.gen_batch_size, heldout=heldout, max_seq_len=cfg.max_seq_len,
                                     rouge=rouge, show_progress=show_progress)
        timings[f"eval {label}"] = time.perf_counter() - t
        return entry, rows

    results, generations, configs = {}, [], {}
    results["base"], rows = score("base", cfg.model)
    generations += rows
    configs["base"] = {"model": cfg.model}

    t = time.perf_counter()
    aligned_dir = align(cfg, show_progress)
    timings["align"] = time.perf_counter() - t
    link = out / "aligned"  # a stable name for the cached aligned model (the sweep recipe starts from it)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(aligned_dir.resolve(), target_is_directory=True)
    results["aligned"], rows = score("aligned", str(aligned_dir / MODEL_DIR))
    generations += rows
    configs["aligned"] = read_yaml(aligned_dir / "config.yaml")

    for name, recipe in (("aggressive", cfg.aggressive), ("careful", cfg.careful)):
        t = time.perf_counter()
        tc = _train_cfg(cfg, model=str(aligned_dir / MODEL_DIR), data="dolly", filter_safety=True,
                        output_dir=str(out / name), **recipe.model_dump())
        run = train(tc, overwrite=True, show_progress=show_progress)
        timings[f"train {name}"] = time.perf_counter() - t
        for label, sub in ((name, RAW_DIR), (f"{name}+ema", MODEL_DIR)):
            results[label], rows = score(label, str(run / sub))
            generations += rows
            configs[label] = tc.model_dump(mode="json") | ({"ema_beta": None, "weights": "raw/ (live)"} if sub == RAW_DIR else {"weights": "model/ (EMA)"})
    timings["total"] = time.perf_counter() - t0

    summary = make_summary(cfg, results, configs, timings, bench.source)
    atomic.write_json(out / "summary.json", summary)
    atomic.write_jsonl(out / "generations.jsonl", generations)
    write_report(out, summary, generations)
    return summary


def make_summary(cfg: DemoConfig, results: dict, configs: dict, timings: dict, bench_source: str) -> dict:
    arms = {}
    for label, entry in results.items():
        b, u = entry["benchmarks"]["advbench"], entry.get("utility", {})
        arms[label] = {"config": configs[label], "harmful_rate": b["harmful_rate"], "ci_low": b["ci_low"],
                       "ci_high": b["ci_high"], "n": b["n"], "judge": b["judge"], "heldout_loss": u.get("heldout_loss"),
                       "perplexity": u.get("perplexity"), "rougeL": u.get("rougeL")}
    return {"seed": cfg.seed, "benchmark": "advbench", "benchmark_source": bench_source, "prompts": "first N rows",
            "settings": cfg.model_dump(mode="json"), "arms": arms,
            "scaled_down": [s.format(**cfg.model_dump()) for s in SCALED_DOWN],
            "timings_s": {k: round(v, 1) for k, v in timings.items()}}


def write_report(out: Path, summary: dict, generations: list[dict], examples_per_arm: int = 3) -> None:
    arms = summary["arms"]
    points = [{"label": k, **v, "marker": k == "aligned"} for k, v in arms.items() if v["heldout_loss"] is not None]
    png = report.tradeoff_png(points, "heldout_loss", "held-out Dolly loss (lower = more utility)",
                              f"harmful rate vs utility, AdvBench first {summary['settings']['prompts']}, seed {summary['seed']}")
    report.write_png(out / "tradeoff.png", png)
    header = ["arm", "harmful rate", "95% CI", "held-out loss", "ROUGE-L", "lr", "batch x accum", "steps", "EMA β"]
    rows = [[k, f"{v['harmful_rate']:.1%}", f"{v['ci_low']:.1%} - {v['ci_high']:.1%}", _fmt(v["heldout_loss"]),
             _fmt(v["rougeL"]), v["config"].get("lr", ""), f"{v['config'].get('batch_size', '')} x {v['config'].get('grad_accum', '')}",
             v["config"].get("steps", ""), v["config"].get("ema_beta", "") if v["config"].get("ema_beta") is not None else "-"]
            for k, v in arms.items()]
    sections = [("Results", report.table_html(header, rows)),
                ("What was scaled down compared with the paper", "<ul>" + "".join(f"<li>{report.html.escape(s)}</li>" for s in summary["scaled_down"]) + "</ul>")]
    for label in arms:
        ex = [g for g in generations if g["model"] == label][:examples_per_arm]
        sections.append((f"Example responses: {label}", report.examples_html(ex)))
    notes = [f"Seed {summary['seed']}. Judge: {next(iter(arms.values()))['judge']} on {summary['benchmark_source']} "
             f"({summary['prompts']}). EMA arms share their training run with the plain arm (raw/ weights), "
             f"so each pair differs only in the averaging. Wall time {summary['timings_s'].get('total', 0):.0f} s."]
    atomic.write_text(out / "report.html", report.html_page("safebasin demo: fine-tuning inside the safety basin", sections, png, notes))


def _fmt(x) -> str:
    return "" if x is None else f"{x:.3f}"
