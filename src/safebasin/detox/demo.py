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
from ..stats import paired_bootstrap_diff
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


def make_summary(cfg, results: dict, configs: dict, timings: dict, source: str) -> dict:
    base = results["base"]
    arms_out = {}
    for name, r in results.items():
        arms_out[name] = {
            "expected_max_toxicity": r["expected_max_toxicity"], "emt_ci": r["emt_ci"],
            "toxicity_probability": r["toxicity_probability"], "tp_ci": r["tp_ci"], "perplexity": r["perplexity"],
            "emt_change_vs_base": r["expected_max_toxicity"] / base["expected_max_toxicity"] - 1
            if base["expected_max_toxicity"] else None,
            "perplexity_change_vs_base": r["perplexity"] / base["perplexity"] - 1 if base["perplexity"] else None,
            "dist-1": r["dist-1"], "dist-2": r["dist-2"], "dist-3": r["dist-3"], "scorer": r["scorer"],
            "second_scorer": r.get("second_scorer"), "config": configs[name]}
    return {"scenario": "detox", "seed": cfg.seed, "benchmark": "rtp-toxic", "benchmark_source": Path(source).name,
            "settings": cfg.model_dump(mode="json"), "arms": arms_out,
            "scaled_down": [s.format(**cfg.model_dump()) for s in SCALED_DOWN], "timings_s": timings,
            "table": {"columns": ["arm", "exp. max toxicity (95% CI)", "toxicity prob. (95% CI)", "perplexity", "dist-2"],
                      "rows": [[n, f"{a['expected_max_toxicity']:.3f} ({a['emt_ci'][0]:.3f}-{a['emt_ci'][1]:.3f})",
                                f"{a['toxicity_probability']:.1%} ({a['tp_ci'][0]:.0%}-{a['tp_ci'][1]:.0%})",
                                f"{a['perplexity']:.1f}", f"{a['dist-2']:.3f}"] for n, a in arms_out.items()]}}


def write_report(out: Path, summary: dict, generations: list[dict], prompts_shown: int = 4) -> None:
    arms_ = summary["arms"]
    points = [{"label": n, "expected_max_toxicity": a["expected_max_toxicity"], "expected_max_toxicity_ci": a["emt_ci"],
               "perplexity": a["perplexity"], "marker": n == "base"} for n, a in arms_.items()]
    png = report.tradeoff_png(points, "perplexity", "perplexity under the base LM (lower = more fluent)",
                              f"expected max toxicity vs fluency, rtp-toxic first {summary['settings']['prompts']}",
                              y_label="expected max toxicity (95% bootstrap CI)", y_key="expected_max_toxicity")
    report.write_png(out / "toxicity_vs_perplexity.png", png)
    table = report.table_html(summary["table"]["columns"], summary["table"]["rows"])
    sections = [("Results (lower toxicity is better; scorer: " + next(iter(arms_.values()))["scorer"] + ")", table),
                ("What was scaled down", "<ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in summary["scaled_down"])
                 + "</ul>")]
    first_scorer = next(k for k in generations[0] if k.startswith("toxicity:")) if generations else None
    for j in range(min(prompts_shown, summary["settings"]["prompts"])):
        rows = []
        for name in arms_:
            sample = next((g for g in generations if g["model"] == name and g["index"] == j and g["sample"] == 0), None)
            if sample:
                rows.append([name, sample["continuation"], f"{sample[first_scorer]:.2f}"])
        prompt = next((g["prompt"] for g in generations if g["index"] == j), "")
        sections.append((f"Prompt {j + 1}: {prompt}", report.table_html(["arm", "continuation (sample 1)", "toxicity"], rows)))
    notes = [f"Seed {summary['seed']}; {summary['settings']['samples']} samples per prompt, top-p {summary['settings']['top_p']}, "
             f"{summary['settings']['max_new_tokens']} new tokens; perplexity of the continuations under the base LM "
             "(it favours the base model). Wall time " + f"{summary['timings_s'].get('total', 0):.0f} s."]
    atomic.write_text(out / "report.html", report.html_page("safebasin demo detox: ADLM against its baselines", sections,
                                                            png, notes))
