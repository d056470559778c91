"""`safebasin demo detox`: base vs DAPT vs ATCON vs ADLM on a fixed subset of RealToxicityPrompts, on a CPU.

Every arm starts from the same LM, trains the same number of steps on the same Jigsaw rows (DAPT: its
non-toxic half), and is scored on the first N challenging prompts with the same seeded nucleus
sampling, the same offline toxicity scorer and the same fluency model (the base LM).
"""

import html
import logging
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .. import atomic, methods, models, report
from . import metrics
from ..config import TrainConfig, build, from_preset
from ..evaluate import load_bench
from ..stats import ci_sign, paired_bootstrap_diff
from ..scenario import DemoDir, check_arm_names

log = logging.getLogger(__name__)


class DetoxDemoConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = "smollm2-135m-instruct"
    data_dir: str | None = None
    seed: int = 0
    prompts: int = Field(32, ge=1)  # the first N rtp-toxic (challenging) prompts: no cherry-picking
    samples: int = Field(8, ge=1)  # k per prompt (paper protocol: 25)
    max_new_tokens: int = Field(20, ge=1)
    top_p: float = Field(0.9, gt=0, le=1)
    steps: int = Field(60, ge=1)  # every trained arm: the same steps, batch and rows
    batch_size: int = Field(8, ge=1)
    max_seq_len: int = Field(64, ge=16)  # Jigsaw comments are short; the main cost lever on a CPU
    train_rows: int = Field(2000, ge=16)
    finetune_lr: float = Field(5e-5, gt=0)  # DAPT and ATCON: full fine-tuning
    adlm_lr: float = Field(2e-3, gt=0)  # ADLM trains one block and two small heads
    # λ, γ and α: benchmarks/detox_tuning.py scored them on 48 rtp-toxic prompts the demo never scores (docs/detox.md)
    adlm_args: dict = {"disc_weight": 1.0, "ewc_weight": 1.0, "steer_rule": "contrast"}
    steer_alpha: float = Field(6.0, ge=0, le=10)
    # more ADLM arms, name -> method_args over adlm_args: the tuning's fluency-first pick (γ 100), shown beside
    fluent_arms: dict[str, dict] = {"adlm-ewc100": {"ewc_weight": 100.0}}
    ablations: bool = False  # also ADLM without the discriminator (λ=0) and without EWC (γ=0)
    # the fine-tuned baselines; --quick runs none: CI checks ADLM against the base model, and the two cost 6 of its 9 minutes
    baselines: list[Literal["dapt", "atcon"]] = ["dapt", "atcon"]


ABLATIONS = {"adlm-no-disc": {"disc_weight": 0.0}, "adlm-no-ewc": {"ewc_weight": 0.0}}  # λ = 0, γ = 0

PRESETS = {
    "quick": {"prompts": 16, "samples": 4, "steps": 24, "train_rows": 1000, "fluent_arms": {}, "baselines": []},
    "default": {},
    "full": {"prompts": 200, "samples": 25, "steps": 100, "train_rows": 9000, "ablations": True},
}

SCALED_DOWN = [
    "model: SmolLM2-135M-Instruct (embedded GGUF) used as a plain LM, instead of GPT-2 large",
    "prompts: the first {prompts} of 1,196 challenging RealToxicityPrompts, {samples} samples each (paper: 25)",
    "training: {steps} steps of batch {batch_size} on {train_rows} Jigsaw rows at {max_seq_len} tokens per arm",
    "toxicity: an offline scorer validated against the stored Perspective scores, not the Perspective API",
]


def detox_config(preset: str = "default", path: str | None = None, overrides: dict | None = None) -> DetoxDemoConfig:
    cfg = from_preset(DetoxDemoConfig, PRESETS, preset, path, overrides, "detox demo")
    check_arm_names(list(cfg.fluent_arms), {"base", "adlm", "dapt", "atcon", *ABLATIONS}, path or "detox demo", "fluent_arms")
    return cfg


def arms(cfg: DetoxDemoConfig) -> dict[str, dict]:
    """name -> TrainConfig values; the base arm trains nothing."""
    common = dict(model=cfg.model, data_dir=cfg.data_dir, seed=cfg.seed, steps=cfg.steps, batch_size=cfg.batch_size,
                  max_seq_len=cfg.max_seq_len, max_examples=cfg.train_rows, heldout_size=16, schedule="constant")
    out = {name: common | {"method": name, "lr": cfg.finetune_lr} for name in cfg.baselines}
    out["adlm"] = common | {"method": "adlm", "lr": cfg.adlm_lr, "method_args": cfg.adlm_args}
    for name, args in (cfg.fluent_arms | (ABLATIONS if cfg.ablations else {})).items():
        out[name] = out["adlm"] | {"method_args": cfg.adlm_args | args}
    return out


def run_detox_demo(cfg: DetoxDemoConfig, output_dir: str | Path, show_progress: bool = True,
                   overwrite: bool = False) -> dict:
    demo_dir = DemoDir(output_dir, "detox", cfg.model_dump(mode="json"), overwrite)
    out = demo_dir.path
    demo_dir.claim_arms([out / name for name in arms(cfg)])
    bench = load_bench("rtp-toxic", cfg.data_dir, limit=cfg.prompts)  # fixed before any training
    base_model, tok = models.load(cfg.model)  # scored as "base", and the fluency reference of every arm
    context = {"seed": cfg.seed, "data_dir": cfg.data_dir, "reference": None, "cache": {cfg.model: base_model.eval()}}

    def score(label: str, model, tok, method) -> dict:
        entry = demo_dir.score(label, model, tok, [bench], max_new_tokens=cfg.max_new_tokens, batch_size=16,
                               show_progress=show_progress, context=context | {"method": method, "reference": cfg.model},
                               settings={"toxicity": {"samples": cfg.samples, "top_p": cfg.top_p,
                                                      "steer_alpha": cfg.steer_alpha if method.name == "adlm" else None}})
        return entry["benchmarks"][bench.name]

    results = {"base": score("base", base_model, tok, methods.Method(None))}
    configs = {"base": {"model": cfg.model}}
    for name, values in arms(cfg).items():
        tc = build(TrainConfig, values | {"output_dir": str(out / name)}, f"detox arm {name}")
        model, tok, method = demo_dir.train_and_load(name, tc, show_progress)
        results[name] = score(name, model, tok, method)
        configs[name] = tc.model_dump(mode="json")
        del model
    summary = make_summary(cfg, results, configs, demo_dir.stop_clock(), bench.source)
    for name, diff in differences_vs_base(demo_dir.generations, results["base"]["scorer"], cfg.seed).items():
        summary["arms"][name]["emt_diff_vs_base"] = diff
    return demo_dir.finish(summary, write_report)


def differences_vs_base(generations: list[dict], scorer: str, seed: int = 0) -> dict[str, dict]:
    """Each arm's expected max toxicity minus the base model's, on the same prompts, with a paired bootstrap CI."""
    per_arm: dict[str, dict[int, list[float]]] = {}
    for g in generations:
        per_arm.setdefault(g["model"], {}).setdefault(g["index"], []).append(g[f"toxicity:{scorer}"])
    base = per_arm["base"]
    prompts = sorted(base)
    return {name: paired_bootstrap_diff([scores[j] for j in prompts], [base[j] for j in prompts],
                                        metrics.expected_max_toxicity, seed=seed)
            for name, scores in per_arm.items() if name != "base"}


def _relative(arm: dict, base: dict, key: str) -> float | None:
    """The arm's value relative to the base model's (+0.35 = 35% higher); None without both."""
    return arm[key] / base[key] - 1 if arm.get(key) is not None and base.get(key) else None


def make_summary(cfg, results: dict, configs: dict, timings: dict, source: str) -> dict:
    base = results["base"]
    arms_out = {}
    for name, r in results.items():
        arms_out[name] = {
            "expected_max_toxicity": r["expected_max_toxicity"], "emt_ci": r["emt_ci"],
            "toxicity_probability": r["toxicity_probability"], "tp_ci": r["tp_ci"], "perplexity": r["perplexity"],
            "emt_relative_change_vs_base": _relative(r, base, "expected_max_toxicity"),
            "perplexity_relative_change_vs_base": _relative(r, base, "perplexity"),
            "dist-1": r["dist-1"], "dist-2": r["dist-2"], "dist-3": r["dist-3"], "scorer": r["scorer"],
            "second_scorer": r.get("second_scorer"), "config": configs[name]}
    return {"scenario": "detox", "seed": cfg.seed, "benchmark": "rtp-toxic", "benchmark_source": Path(source).name,
            "settings": cfg.model_dump(mode="json"), "arms": arms_out,
            "scaled_down": [s.format(**cfg.model_dump()) for s in SCALED_DOWN], "timings_s": timings,
            "table": {"columns": ["arm", "exp. max toxicity (95% CI)", "toxicity prob. (95% CI)", "perplexity", "dist-2"],
                      "rows": [[n, f"{a['expected_max_toxicity']:.3f} ({a['emt_ci'][0]:.3f}-{a['emt_ci'][1]:.3f})",
                                f"{a['toxicity_probability']:.1%} ({a['tp_ci'][0]:.0%}-{a['tp_ci'][1]:.0%})",
                                f"{a['perplexity']:.1f}", f"{a['dist-2']:.3f}"] for n, a in arms_out.items()]}}


# What each arm is, in plain words (a plug-in arm without words here gets its method's own line)
ARM_WORDS = {"base": "the LM as shipped, no training: the reference every arm is compared with",
             "dapt": "fine-tuned on the non-toxic half of the Jigsaw rows (domain-adaptive pretraining)",
             "atcon": "fine-tuned on all Jigsaw rows with a control code per attribute, generated with the non-toxic code",
             "adlm": "the LM frozen; a copy of its last layer with an attribute embedding and a toxic/non-toxic "
                     "discriminator is trained, and generation suppresses what the toxic attribute prefers"}
# docs/detox.md's caveats, which hold whatever a run's numbers are
CAVEATS = [
    "The default steering strength α was first chosen on the first 24 rtp-toxic prompts, part of the demo's own, so "
    "ADLM's reduction here is optimistic; on 48 prompts no preset scores the same setting gave −19% (docs/detox.md).",
    "Perplexity is measured under the base LM, which favours the base model; fine-tuning on Jigsaw's talk-page "
    "comments moves every trained arm (DAPT and ATCON too) away from what the base LM finds likely.",
    "DAPT and ATCON learn from Jigsaw's argumentative comment style, and its non-toxic half is not free of rudeness "
    "below the 0.5 line, so after a few dozen steps they can end up more toxic than the base model.",
    "Toxicity is an offline scorer validated against the stored Perspective scores, not the Perspective API.",
    "SmolLM2-135M-Instruct stands in for GPT-2 large, and tens of steps for the paper's training.",
]
CONTENT_WARNING = ("the prompts are RealToxicityPrompts' challenging set, chosen because they lead models to toxic "
                   "text; prompts and continuations below are offensive.")


def headline(summary: dict) -> str:
    """One sentence from the numbers: ADLM (or the lowest-toxicity arm) against the base model, with its cost."""
    arms_ = summary["arms"]
    base = arms_["base"]
    name = "adlm" if "adlm" in arms_ else min((n for n in arms_ if n != "base"),
                                              key=lambda n: arms_[n]["expected_max_toxicity"])
    a, d = arms_[name], arms_[name].get("emt_diff_vs_base")
    if d is None:
        return (f"{name}: expected max toxicity {a['expected_max_toxicity']:.3f} against the base model's "
                f"{base['expected_max_toxicity']:.3f}.")
    verdict = {-1: "lowered", 1: "raised", 0: "did not measurably change"}[ci_sign(d)]
    ppl = _relative(a, base, "perplexity")
    return (f"{name} {verdict} expected max toxicity on {summary['settings']['prompts']} challenging prompts: "
            f"{base['expected_max_toxicity']:.3f} (base) → {a['expected_max_toxicity']:.3f}, {d['diff']:+.3f} "
            f"(paired 95% CI {d['low']:+.3f} to {d['high']:+.3f})" + (f", at {ppl:+.0%} perplexity." if ppl is not None else "."))


def _arm_words(name: str, config: dict) -> str:
    method = config.get("method")
    words = ARM_WORDS.get(name) or ARM_WORDS.get(method) or (methods.get(method).about if method else name)
    extra = dict(config.get("method_args") or {}) if name not in ("base", "adlm") and method == "adlm" else {}
    lr = f"; lr {config['lr']:g}, {config['steps']} steps" if "lr" in config else ""
    return words + (f" (settings changed: {', '.join(f'{k} {v}' for k, v in extra.items())})" if extra else "") + lr


def _differences(arms_: dict) -> str:
    rows = []
    for n, a in arms_.items():
        d = a.get("emt_diff_vs_base")
        if n == "base" or d is None:
            continue
        verdict = {-1: "lower", 1: "higher", 0: "no measurable difference"}[ci_sign(d)]
        ppl = _relative(a, arms_["base"], "perplexity")
        rows.append([n, f"{d['diff']:+.3f} ({d['low']:+.3f} to {d['high']:+.3f})", verdict,
                     "" if ppl is None else f"{ppl:+.0%} ({arms_['base']['perplexity']:.1f} → {a['perplexity']:.1f})"])
    return ("<p>Each arm minus the base model, on the same prompts and samples (a paired bootstrap over prompts). "
            "The cost of lower toxicity is fluency: the last column is the relative change of the continuations' "
            "perplexity under the base LM (not paired).</p>"
            + report.table_html(["arm", "exp. max toxicity − base (paired 95% CI)", "verdict",
                                 "perplexity vs base (relative)"], rows))


def _caveats(summary: dict) -> list[str]:
    out = list(CAVEATS)
    for n, a in summary["arms"].items():
        d = a.get("emt_diff_vs_base")
        if d and ci_sign(d) > 0:
            out.append(f"In this run {n} is more toxic than the base model ({d['diff']:+.3f}, CI {d['low']:+.3f} to "
                       f"{d['high']:+.3f}).")
        elif d and ci_sign(d) == 0:
            out.append(f"In this run {n} does not differ measurably from the base model (CI {d['low']:+.3f} to "
                       f"{d['high']:+.3f}).")
    return out + [f"Scaled down: {x}." for x in summary["scaled_down"]]


def _examples(summary: dict, generations: list[dict], scorer: str, shown: int) -> list[tuple[str, str]]:
    """A seeded sample of prompts, then the prompts whose max toxicity differs most across arms."""
    names = list(summary["arms"])
    first, worst = {}, {}
    for g in generations:
        key = (g["model"], g["index"])
        worst[key] = max(worst.get(key, 0.0), g[f"toxicity:{scorer}"])
        if g["sample"] == 0:
            first[key] = g
    prompts = sorted({i for _, i in worst})
    spread = sorted(prompts, key=lambda i: (-(max(worst.get((n, i), 0) for n in names)
                                              - min(worst.get((n, i), 0) for n in names)), i))

    def table(indices: list[int]) -> str:
        rows = [[i, g["prompt"] if n == names[0] else "", n, g["continuation"], f"{g[f'toxicity:{scorer}']:.2f}",
                 f"{worst[(n, i)]:.2f}"] for i in indices for n in names if (g := first.get((n, i)))]
        return report.table_html(["index", "prompt", "arm", "continuation (sample 0)", "its toxicity",
                                  f"max over {summary['settings']['samples']} samples"], rows)

    sample = report.seeded_sample(prompts, shown, summary["seed"])
    return [("Examples: a seeded sample of prompts", f"<p>Prompts {', '.join(map(str, sample))} (the index in "
             f"generations.jsonl), drawn with seed {summary['seed']}, not chosen by hand.</p>" + table(sample)),
            ("Examples: where the arms differ most", "<p>The prompts with the largest spread of max toxicity across "
             "the arms.</p>" + table(spread[:shown]))]


def write_report(out: Path, summary: dict, generations: list[dict], prompts_shown: int = 4) -> None:
    """The shared story page (report.story_page): headline, arms, paired differences, caveats, fair examples,
    every continuation, with a content warning first."""
    arms_, st = summary["arms"], summary["settings"]
    points = [{"label": n, "expected_max_toxicity": a["expected_max_toxicity"], "expected_max_toxicity_ci": a["emt_ci"],
               "perplexity": a["perplexity"], "marker": n == "base"} for n, a in arms_.items()]
    png = report.tradeoff_png(points, "perplexity", "perplexity under the base LM (lower = more fluent)",
                              f"expected max toxicity vs fluency, rtp-toxic first {st['prompts']}",
                              y_label="expected max toxicity (95% bootstrap CI)", y_key="expected_max_toxicity")
    report.write_png(out / "toxicity_vs_perplexity.png", png)
    scorer = next(iter(arms_.values()))["scorer"]
    columns = [k for k in (generations[0] if generations else {}) if k.startswith("toxicity:")]
    columns = [f"toxicity:{scorer}"] + [c for c in columns if c != f"toxicity:{scorer}"]  # the second scorer beside it
    rows = [[g["model"], g["index"], g["sample"], g["prompt"], g["continuation"]]
            + [f"{g[c]:.2f}" if isinstance(g.get(c), (int, float)) else "" for c in columns] for g in generations]
    every = (f"<p>{len(rows)} continuations; click a column head to sort.</p>"
             + report.filter_html("generations", {0: ("arm", list(arms_))}, "search prompts and continuations")
             + report.table_html(["arm", "index", "sample", "prompt", "continuation"]
                                 + [c.removeprefix("toxicity:") for c in columns], rows, table_id="generations", sortable=True))
    done = (f"Each trained arm started from {st['model']} and trained {st['steps']} steps of batch {st['batch_size']} "
            f"on the same {st['train_rows']} Jigsaw rows; every arm, the base model included, then wrote "
            f"{st['samples']} sampled continuations (top-p {st['top_p']}, {st['max_new_tokens']} new tokens, seed "
            f"{summary['seed']}) for each of the first {st['prompts']} challenging RealToxicityPrompts, all scored by "
            "the same offline toxicity scorer.")
    results = (f"<p>Lower toxicity is better; scorer: {html.escape(scorer)}.</p>"
               + report.table_html(summary["table"]["columns"], summary["table"]["rows"]))
    files = [("summary.json", "every number on this page"), ("generations.jsonl", "every continuation and its scores"),
             ("demo_config.yaml", "the settings"), ("toxicity_vs_perplexity.png", "the plot")]
    page = report.story_page(
        "safebasin demo detox: ADLM against its baselines", headline=headline(summary), done=done,
        arms={n: _arm_words(n, a.get("config") or {}) for n, a in arms_.items()}, results=results, png=png,
        differences=_differences(arms_), caveats=_caveats(summary),
        examples=_examples(summary, generations, scorer, prompts_shown), generations=every,
        files=[(f, w) for f, w in files if f == "summary.json" or (out / f).is_file()], timings=summary["timings_s"],
        content_warning=CONTENT_WARNING)
    atomic.write_text(out / "report.html", page)
