"""Hugging Face model cards for trained runs: `<run>/model/README.md`.

`train` writes the card once the kept model is saved: YAML front matter (base_model, datasets, tags with
safebasin and the method; the license is left to the user) and a body with the recipe (the validated
config's key fields) and the training figures. `eval` of a run dir adds its results to the front matter as
a `model-index` (what the Hub and its tools read), each tagged with its judge and decoding settings; an eval
of a bench with a judge replaces that bench+judge's earlier results instead of adding a second set.

The body's generated parts sit between `<!-- safebasin:NAME -->` markers and are rebuilt from the run's
files and the front matter on every write; the rest of the body is left as it is. Every string that comes
from data, a path or a model is escaped for Markdown and HTML (the card never quotes generations), and
strings that go into the front matter are reduced to plain characters. Writes are atomic.
"""

import html
import json
import logging
import re
from pathlib import Path

from . import atomic, methods
from .errors import UserError

log = logging.getLogger(__name__)

CARD = "README.md"
HUB_IDS = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}  # built-in models: their Hub ids
LICENSE_PLACEHOLDER = ("# license: not set by safebasin. The base model's license and the training data's terms apply;"
                       " set `license:` (e.g. apache-2.0) before publishing")
TASK = "text-generation"
UTILITY = "utility"  # the metric_config of held-out loss, perplexity and ROUGE-L


def write(run_dir: str | Path, results: dict | None = None) -> Path | None:
    """Write (after `train`) or update (after `eval`, with its results) the run's model card; returns its path.
    The card is a by-product: a run without config.yaml gets none, and a failure is a warning, never an error."""
    run_dir = Path(run_dir)
    path = run_dir / "model" / CARD
    try:
        text = card_text(run_dir, path.read_text(encoding="utf-8") if path.is_file() else None, results)
        if text is None:
            return None
        atomic.write_text(path, text)
    except (UserError, ValueError, OSError) as e:
        log.warning("%s: model card not written: %s", path, e)
        return None
    return path


def card_text(run_dir: Path, existing: str | None, results: dict | None) -> str | None:
    from huggingface_hub import ModelCard

    from .config import TrainConfig, build, read_yaml

    if not (run_dir / "config.yaml").is_file():
        return None
    cfg = build(TrainConfig, read_yaml(run_dir / "config.yaml"), str(run_dir / "config.yaml"))
    summary_file = run_dir / "train_summary.json"
    summary = json.loads(summary_file.read_text(encoding="utf-8")) if summary_file.is_file() else {}
    name = slug(run_dir.resolve().name) or "model"
    card = ModelCard(existing) if existing is not None else None  # ValueError on a front matter it cannot read
    data = card.data if card is not None else card_data(cfg)
    body = card.text if card is not None else skeleton(cfg, name)
    if results and "model" in results.get("models", {}):
        data.eval_results = merge(data.eval_results or [], eval_results(results))
        data.model_name = data.model_name or name
    body = replace_block(body, "training", training_block(cfg, summary, data.eval_results or []))
    body = replace_block(body, "eval", eval_block(data.eval_results or []))
    front = data.to_yaml()
    if not data.get("license"):
        front += "\n" + LICENSE_PLACEHOLDER
    text = f"---\n{front}\n---\n{body}"
    ModelCard(text)  # it reads back
    return text


# ---------------------------------------------------------------- escaping

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~])")


def md(value) -> str:
    """Text for the card's Markdown: one line, Markdown punctuation backslash-escaped, then <, > and & as HTML
    entities, so no data string can open a tag, a link, an image, a heading or a table cell."""
    text = " ".join(str(value).split())
    return html.escape(_MD_SPECIAL.sub(r"\\\1", text), quote=False)


def slug(value) -> str:
    """A data string for the front matter (a bench file's name, a judge): plain characters only."""
    return re.sub(r"[^\w .:/@+=-]+", "_", " ".join(str(value).split())).strip()[:200]


# ---------------------------------------------------------------- front matter

def base_model(spec: str) -> str:
    """The Hub id of a built-in model; else the spec as given (a local path stays a path: the body says so)."""
    return HUB_IDS.get(spec, slug(spec))


def is_local(spec: str) -> bool:
    from .models import looks_like_path

    return spec not in HUB_IDS and looks_like_path(spec)


def card_data(cfg):
    from huggingface_hub import ModelCardData

    from . import data
    from .plugins import discover

    discover()
    mix = methods.get(cfg.method).settings(cfg) if cfg.method == "safety-mix" else None
    named = [cfg.data] + ([mix.data] if mix else [])
    hub_ids = [data.TRAIN_SETS[n].hub for n in named if n in data.TRAIN_SETS and data.TRAIN_SETS[n].hub]
    tags = ["safebasin", slug(cfg.method)]
    tags += (["ema"] if cfg.ema_beta is not None else []) + (["lora"] if cfg.lora_r else []) + ["safety"]
    return ModelCardData(base_model=base_model(cfg.model), datasets=list(dict.fromkeys(hub_ids)) or None,
                         library_name="transformers", pipeline_tag=TASK, tags=list(dict.fromkeys(tags)))


# ---------------------------------------------------------------- eval results (model-index)

def bench_dataset(bench: str) -> dict:
    """The model-index dataset of a bench: its Hub id, config and split when it is a named bench (a filtered
    subset names its filter as the config), else the file's name."""
    from . import data

    spec = data.BENCH_SETS.get(bench) if data.is_bench(bench) else None
    if spec is None or not spec.hub:
        return {"dataset_type": slug(bench), "dataset_name": slug(bench)}
    config = f"{spec.where[0]}={spec.where[1]}" if spec.where else spec.hub_config
    return {"dataset_type": spec.hub, "dataset_name": slug(bench), "dataset_config": config, "dataset_split": spec.hub_split}


def eval_results(results: dict) -> list:
    """The kept model's results of one `eval` as EvalResults: per bench, the rate each judge gives (CI, n, judge
    and decoding in metric_args), and utility."""
    from huggingface_hub import EvalResult

    settings, entry = results.get("settings", {}), results["models"]["model"]
    subset = {k: settings[k] for k in ("limit", "sample") if settings.get(k) is not None}
    if "sample" in subset:
        subset["seed"] = settings.get("seed")
    out = []
    for bench, b in entry.get("benchmarks", {}).items():
        dataset = bench_dataset(bench)
        kind = b.get("kind", "harmful")
        if kind in ("harmful", "over-refusal"):
            decoding = {"decoding": settings.get("decoding", "greedy"),
                        "max_new_tokens": settings.get("max_new_tokens") or "the bench's default"}
            rows = [(b, "refusal_rate" if kind == "over-refusal" else "harmful_rate")]
            rows += [(b[k], "harmful_rate") for k in ("llm_judge", "classifier_judge") if isinstance(b.get(k), dict)]
            for r, metric in rows:
                value = r.get(metric)
                if value is None:  # no verdicts: no number, rather than a 0%
                    continue
                ci = (r.get("ci_low"), r.get("ci_high"))
                if metric == "refusal_rate" and None not in ci:
                    ci = (1.0 - ci[1], 1.0 - ci[0])
                judge = slug(r.get("judge") or settings.get("judge") or "unknown")
                out.append(EvalResult(task_type=TASK, **dataset, metric_type=metric, metric_value=value,
                                      metric_name=f"{metric.replace('_', ' ')} ({judge})", metric_config=judge,
                                      metric_args={"judge": judge, **decoding, "n": r.get("n"), "ci_low": ci[0],
                                                   "ci_high": ci[1], **subset}))
        else:  # a system's kind (toxicity, dialogue): its own top-level numbers, tagged with its scorer
            judge = slug(b.get("scorer") or b.get("judge") or kind)
            args = {"judge": judge, **{k: b[k] for k in ("n", "samples", "top_p", "max_new_tokens") if k in b}, **subset}
            for metric, value in b.items():
                if isinstance(value, float) and metric not in ("top_p",):
                    out.append(EvalResult(task_type=TASK, **dataset, metric_type=slug(metric), metric_value=value,
                                          metric_name=f"{metric.replace('_', ' ')} ({judge})", metric_config=judge,
                                          metric_args=args))
    utility, heldout = entry.get("utility") or {}, settings.get("heldout") or {}
    if "heldout_loss" in utility:
        from . import data

        spec = data.TRAIN_SETS.get(heldout.get("data", ""))
        dataset = {"dataset_type": spec.hub if spec and spec.hub else slug(heldout.get("data", "heldout")),
                   "dataset_name": f"{slug(heldout.get('data', ''))} held-out", "dataset_split": "heldout"}
        args = {"rows": utility.get("heldout_n"), "seed": heldout.get("seed")}
        out += [EvalResult(task_type=TASK, **dataset, metric_type="loss", metric_value=utility["heldout_loss"],
                           metric_name="held-out loss", metric_config=UTILITY, metric_args=args),
                EvalResult(task_type=TASK, **dataset, metric_type="perplexity", metric_value=utility["perplexity"],
                           metric_name="held-out perplexity", metric_config=UTILITY, metric_args=args)]
    if "rougeL" in utility:
        out.append(EvalResult(task_type=TASK, dataset_type="self-instruct-user-oriented", metric_type="rougeL",
                              dataset_name="Self-Instruct user-oriented references", metric_value=utility["rougeL"],
                              metric_name="ROUGE-L", metric_config=UTILITY, metric_args={"n": utility.get("rougeL_n")}))
    return out


def _key(r) -> tuple:
    """A bench (dataset, config, split) with one judge: what a later eval replaces rather than repeats."""
    return r.dataset_type, r.dataset_config, r.dataset_split, r.metric_config


def merge(old: list, new: list) -> list:
    """`new` replaces old results of the same bench+judge, in their place; results of other benches stay."""
    fresh = {}
    for r in new:
        fresh.setdefault(_key(r), []).append(r)
    out, placed = [], set()
    for r in old:
        key = _key(r)
        if key not in fresh:
            out.append(r)
        elif key not in placed:
            out += fresh[key]
            placed.add(key)
    return out + [r for key, group in fresh.items() if key not in placed for r in group]


# ---------------------------------------------------------------- body

def skeleton(cfg, name: str) -> str:
    ema = (f", keeping the parameter-space EMA of its weights (β = {cfg.ema_beta}) as the model"
           if cfg.ema_beta is not None else "")
    local = (f"\n\nThe base model was the local {'file' if Path(cfg.model).suffix else 'folder'} {md(cfg.model)}: "
             "set `base_model` in the front matter to its Hub id before publishing." if is_local(cfg.model) else "")
    return (f"\n# {md(name)}\n\nFine-tuned from {md(base_model(cfg.model))} on {md(cfg.data)} with safebasin's "
            f"{md(cfg.method)} method{ema}. safebasin fine-tunes chat models on benign data and measures whether "
            f"they still refuse harmful requests.{local}\n\n"
            "<!-- safebasin:training -->\n<!-- /safebasin:training -->\n\n<!-- safebasin:eval -->\n<!-- /safebasin:eval -->\n\n"
            "## License\n\nsafebasin sets no license: the base model's license and the training data's terms apply. "
            "Set `license:` in the front matter before publishing.\n")


def replace_block(body: str, name: str, content: str) -> str:
    """The text between `<!-- safebasin:NAME -->` and `<!-- /safebasin:NAME -->`, rebuilt (appended when gone)."""
    start, end = f"<!-- safebasin:{name} -->", f"<!-- /safebasin:{name} -->"
    block = f"{start}\n{content.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(body):
        return pattern.sub(lambda _: block, body, count=1)
    return body.rstrip("\n") + f"\n\n{block}\n"


def _table(rows: list[tuple[str, str]], head: tuple[str, str] = ("setting", "value")) -> str:
    return "\n".join([f"| {head[0]} | {head[1]} |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows])


def training_block(cfg, summary: dict, results: list) -> str:
    data = md(cfg.data) + (f", first {cfg.max_examples} rows" if cfg.max_examples else "")
    data += f", safety-related rows {'filtered out' if cfg.filter_safety else 'kept'}, {cfg.heldout_size} held out"
    world = summary.get("world_size", 1)
    recipe = [
        ("base model", md(base_model(cfg.model)) + (" (built in: its Q4_1 GGUF, dequantized)" if cfg.model in HUB_IDS else "")),
        ("method", md(cfg.method) + (f" {md(json.dumps(cfg.method_args, sort_keys=True))}" if cfg.method_args else "")),
        ("data", data),
        ("length", f"{f'{cfg.steps} optimizer steps' if cfg.steps else f'{cfg.epochs:g} epochs'}, "
                   f"max_seq_len {cfg.max_seq_len}"),
        ("optimizer", f"AdamW, lr {cfg.lr:g}, {cfg.schedule} schedule, {cfg.warmup_steps} warmup steps, "
                      f"betas ({cfg.adam_beta1:g}, {cfg.adam_beta2:g}), weight decay {cfg.weight_decay:g}, "
                      f"grad clip {'off' if cfg.grad_clip is None else f'{cfg.grad_clip:g}'}"),
        ("effective batch", f"{cfg.batch_size * cfg.grad_accum * world} ({cfg.batch_size} per device × "
                            f"{cfg.grad_accum} accumulation × {world} process{'es' if world > 1 else ''})"),
        ("parameter-space EMA", "off" if cfg.ema_beta is None else f"β = {cfg.ema_beta:g} (the kept weights are θ̄)"),
        ("LoRA", f"r {cfg.lora_r}, alpha {cfg.lora_alpha or 2 * cfg.lora_r}, merged into the weights" if cfg.lora_r else "off"),
        ("mixed precision", cfg.mixed_precision),
        ("seed", str(cfg.seed)),
    ]
    extra = methods.get(cfg.method).describe(cfg)
    if extra:
        recipe.insert(2, ("method setting", md(extra)))
    if cfg.monitor:
        recipe.append(("safety monitor", f"{cfg.monitor} probes of {cfg.monitor_probe} prompts (disjoint from "
                                         f"{md(cfg.monitor_bench)}), keyword judge {md(cfg.refusal_list)}"
                                         + (f", stop margin {cfg.monitor_stop:g}" if cfg.monitor_stop else "")))
    heldout = next((r for r in results if r.metric_config == UTILITY and r.metric_type == "loss"), None)
    figures = [
        ("optimizer steps", str(summary.get("steps", "not finished"))),
        ("training examples", f"{summary['examples']:,}" if "examples" in summary else "unknown"),
        ("tokens seen", f"{summary['tokens']:,}" if "tokens" in summary else "unknown"),
        ("final training loss", f"{summary['final_loss']:.4f}" if summary.get("final_loss") is not None else "unknown"),
        ("held-out loss", f"{heldout.metric_value:.4f} (safebasin eval --utility)" if heldout is not None
         else "not measured yet: safebasin eval RUN \\-\\-utility"),
        ("wall time", _duration(summary["seconds"]) + f" on {world} process{'es' if world > 1 else ''}"
         if "seconds" in summary else "unknown"),
    ]
    start = summary.get("monitor_start")
    if start:
        figures.append(("monitor: probe harmful rate at the start", f"{start['probe_harmful_kept']:.1%}"))
    if "monitor_stopped_at" in summary:
        figures.append(("monitor stop", f"at step {summary['monitor_stopped_at']}; the kept weights are step "
                                        f"{summary['monitor_kept_step']}'s, the last within the margin"))
    return ("## Training recipe\n\n" + _table(recipe) + "\n\nThe full validated config is config.yaml in the run dir.\n\n"
            "## Training figures\n\n" + _table(figures, ("figure", "value")))


def eval_block(results: list) -> str:
    if not results:
        return "## Evaluation\n\nNot evaluated yet: safebasin eval RUN adds its results here and to the front matter."
    rows = ["| bench | metric | value | 95% CI | judge | decoding | n |", "|---|---|---|---|---|---|---|"]
    for r in results:
        args = r.metric_args or {}
        rate = r.metric_type.endswith("_rate") or r.metric_type.endswith("probability")
        value = f"{r.metric_value:.1%}" if rate else f"{r.metric_value:.4g}"
        ci = (f"{args['ci_low']:.1%} – {args['ci_high']:.1%}" if rate and args.get("ci_low") is not None
              and args.get("ci_high") is not None else "")
        n = args.get("n", args.get("rows"))
        metric = r.metric_name if r.metric_config == UTILITY else r.metric_type.replace("_", " ")  # the judge has a column
        rows.append(f"| {md(r.dataset_name)} | {md(metric)} | {value} | {ci} | "
                    f"{md(args.get('judge', r.metric_config or ''))} | {md(_decoding(args))} | {'' if n is None else md(n)} |")
    return ("## Evaluation\n\nThe kept model, scored by safebasin eval (the front matter's model-index holds the same "
            "numbers). Harmful rate: the share of responses the judge does not find to be refusals, with a Wilson 95% "
            "interval; a later eval of a bench with the same judge replaces its row.\n\n" + "\n".join(rows))


def _decoding(args: dict) -> str:
    """greedy, 128 new tokens, first 50 prompts: how the responses were made and which prompts they answer."""
    parts = [args.get("decoding"), args.get("max_new_tokens") and f"{args['max_new_tokens']} new tokens",
             args.get("samples") and f"{args['samples']} samples", args.get("top_p") and f"top_p {args['top_p']}",
             args.get("limit") and f"first {args['limit']} prompts",
             args.get("sample") and f"{args['sample']} sampled prompts (seed {args.get('seed')})"]
    return ", ".join(str(p) for p in parts if p)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min {secs} s" if minutes else f"{seconds:.1f} s"
