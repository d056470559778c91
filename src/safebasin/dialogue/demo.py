"""`safebasin demo dialogue`: context-dependent instruction tuning against its baselines on DailyDialog, on a CPU.

Every trained arm starts from the same model and trains the same steps on the same turns: plain response
fine-tuning (`sft`), one fixed instruction (`fixed-instruct`), and per-turn instructions
(`context-instruct`); zero-shot is the model as it is. The context-instruct model is also given the gold
instruction (an upper bound) and a shuffled one (a sanity check). Scored on the first N validation turns.
"""

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .. import atomic, methods, models, report
from ..config import TrainConfig, build, from_preset
from ..evaluate import load_bench
from ..stats import paired_differences
from ..scenario import DemoDir, check_arm_names


class DialogueDemoConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = "smollm2-135m-instruct"
    data_dir: str | None = None
    seed: int = 0
    turns: int = Field(96, ge=1)  # the first N validation turns (windows of 3 previous turns)
    max_new_tokens: int = Field(40, ge=1)
    steps: int = Field(32, ge=1)  # 40 steps took ~13.5 min with the evals on an idle 2-core Xeon: over the 12-minute plan
    batch_size: int = Field(8, ge=1)
    max_seq_len: int = Field(160, ge=32)
    train_rows: int = Field(2000, ge=16)
    lr: float = Field(5e-5, gt=0)
    levels: list[str] = ["act", "emotion", "keywords"]
    # the trained baselines; --quick runs none: CI checks context-instruct against zero-shot, and the two cost 7 of its 13 minutes
    baselines: list[Literal["response-ft", "fixed-instruct"]] = ["response-ft", "fixed-instruct"]


PRESETS = {"quick": {"turns": 32, "steps": 16, "train_rows": 400, "baselines": []}, "default": {},
           "full": {"turns": 500, "steps": 150, "train_rows": 10000}}

BASELINE_METHODS = {"response-ft": "sft", "fixed-instruct": "fixed-instruct"}


def dialogue_config(preset: str = "default", path: str | None = None, overrides: dict | None = None) -> DialogueDemoConfig:
    cfg = from_preset(DialogueDemoConfig, PRESETS, preset, path, overrides, "dialogue demo")
    check_arm_names(cfg.baselines, {"zero-shot", "context-instruct"}, path or "dialogue demo", "baselines")
    return cfg


def trained_arms(cfg: DialogueDemoConfig) -> dict[str, dict]:
    """name -> the TrainConfig values that differ between arms; zero-shot trains nothing."""
    arms = {name: {"method": BASELINE_METHODS[name]} for name in cfg.baselines}
    return arms | {"context-instruct": {"method": "context-instruct", "method_args": {"levels": cfg.levels}}}


def run_dialogue_demo(cfg: DialogueDemoConfig, output_dir: str | Path, show_progress: bool = True,
                      overwrite: bool = False) -> dict:
    demo_dir = DemoDir(output_dir, "dialogue", cfg.model_dump(mode="json"), overwrite)
    out = demo_dir.path
    demo_dir.claim_arms([out / name for name in trained_arms(cfg)])
    bench = load_bench("dailydialog", cfg.data_dir, limit=cfg.turns)
    results: dict = {}

    def score(label: str, model, tok, method, mode: str = "self"):
        entry = demo_dir.score(label, model, tok, [bench], max_new_tokens=cfg.max_new_tokens, batch_size=16,
                               show_progress=show_progress,
                               context={"method": method, "data_dir": cfg.data_dir, "seed": cfg.seed},
                               settings={"dialogue": {"instruction_mode": mode}})
        results[label] = entry["benchmarks"][bench.name]

    base, tok = models.load(cfg.model)
    score("zero-shot", base, tok, methods.Method(None))
    common = dict(model=cfg.model, data="dailydialog", data_dir=cfg.data_dir, seed=cfg.seed, steps=cfg.steps,
                  batch_size=cfg.batch_size, max_seq_len=cfg.max_seq_len, max_examples=cfg.train_rows, heldout_size=16,
                  lr=cfg.lr, schedule="constant", filter_safety=False)
    for name, extra in trained_arms(cfg).items():
        tc = build(TrainConfig, common | extra | {"output_dir": str(out / name)}, f"dialogue arm {name}")
        model, tok, method = demo_dir.train_and_load(name, tc, show_progress)
        score(name, model, tok, method)
        if name == "context-instruct":
            score("context-instruct + gold instruction", model, tok, method, "gold")
            score("context-instruct + shuffled instruction", model, tok, method, "shuffled")
    summary = make_summary(cfg, results, demo_dir.compute, demo_dir.stop_clock(), demo_dir.generations)
    return demo_dir.finish(summary, write_report)


def make_summary(cfg, results: dict, compute: dict, timings: dict, generations: list[dict]) -> dict:
    diffs = paired_differences(generations, "context-instruct", ("rougeL", "unigram_f1"), cfg.seed)
    rows = []
    for name, r in results.items():
        d = diffs.get(name)
        rows.append([name, f"{r['bleu-1']:.1f}/{r['bleu-2']:.1f}/{r['bleu-4']:.1f}",
                     f"{r['rougeL']:.3f} ({r['rougeL_ci'][0]:.3f}-{r['rougeL_ci'][1]:.3f})",
                     f"{r['unigram_f1']:.3f} ({r['unigram_f1_ci'][0]:.3f}-{r['unigram_f1_ci'][1]:.3f})",
                     f"{r['distinct-2']:.3f}",
                     "" if "instruction_act" not in r else f"{r['instruction_act']['accuracy']:.1%}",
                     "" if d is None else f"{d['rougeL']['diff']:+.3f} ({d['rougeL']['low']:+.3f}, {d['rougeL']['high']:+.3f})",
                     "" if name not in compute else f"{compute[name]['tokens']:,} tok, {compute[name]['seconds']:.0f} s"])
    return {"scenario": "dialogue", "seed": cfg.seed, "benchmark": "dailydialog", "settings": cfg.model_dump(mode="json"),
            "rows": results, "compute": compute, "differences_vs_context_instruct": diffs, "timings_s": timings,
            "table": {"columns": ["row", "BLEU-1/2/4", "ROUGE-L (95% CI)", "unigram F1 (95% CI)", "distinct-2",
                                  "own instruction's act correct", "context-instruct − row, ROUGE-L (95% CI)",
                                  "training compute"], "rows": rows}}


def write_report(out: Path, summary: dict, generations: list[dict], shown: int = 5) -> None:
    res = summary["rows"]
    points = [{"label": n, "unigram_f1": r["unigram_f1"], "unigram_f1_ci": r["unigram_f1_ci"], "rougeL": r["rougeL"],
               "marker": n == "context-instruct"} for n, r in res.items()]
    png = report.tradeoff_png(points, "rougeL", "ROUGE-L (higher is better)", "DailyDialog validation: unigram F1 vs ROUGE-L",
                              y_label="unigram F1 (95% bootstrap CI; higher is better)", y_key="unigram_f1")
    report.write_png(out / "dialogue.png", png)
    sections = [("Results", report.table_html(summary["table"]["columns"], summary["table"]["rows"]))]
    by = {}
    for g in generations:
        by.setdefault(g["index"], {})[g["model"]] = g
    for i in sorted(by)[:shown]:
        rows = by[i]
        first = next(iter(rows.values()))
        ctx = " / ".join(first["context"])
        table = [[name, g["instruction"] or "", g["response"]] for name, g in rows.items()]
        table.append(["reference", "", first["reference"]])
        sections.append((f"Turn {i + 1}: {ctx}", report.table_html(["row", "instruction", "response"], table)))
    notes = [f"Seed {summary['seed']}; the first {summary['settings']['turns']} validation turns (3 previous turns of "
             f"context); greedy, {summary['settings']['max_new_tokens']} new tokens; every trained row: "
             f"{summary['settings']['steps']} steps of batch {summary['settings']['batch_size']} on the same "
             f"{summary['settings']['train_rows']} training turns. Wall time {summary['timings_s']['total']:.0f} s."]
    atomic.write_text(out / "report.html", report.html_page("safebasin demo dialogue: context-dependent instructions",
                                                            sections, png, notes))
