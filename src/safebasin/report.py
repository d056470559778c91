"""Reports: a training run's report.html, and the report kit in one import (`report.pct`, `report.table_html`,
`report.tradeoff_png`, ...) for every system's demo and report. The kit lives by what it does: number formats in
`formats.py`, plots in `plots.py`, the HTML page in `htmlkit.py`. System 1's sweep analysis is
`safety/sweep_analysis.py`.
"""

from pathlib import Path

from . import atomic
from .formats import NA, lr, md_escape, num, num_diff, pct, pct_range, points_diff  # noqa: F401
from .htmlkit import (SORT_FILTER_JS, STYLE, Html, cpu_name, csp, csp_hash, details_html, environment,  # noqa: F401
                      examples_html, filter_html, html_page, img_html, seeded_sample, story_page, table_html)
from .plots import basin_png, category_png, loss_curves_png, tradeoff_png, training_png, write_png  # noqa: F401


def run_report(run_dir: str | Path) -> Path:
    """report.html for one `safebasin train` run: training and monitor curves, eval results, basin plot."""
    import json

    from .evaluate import headline, headline_columns

    import yaml

    from .errors import UserError

    run = Path(run_dir)
    if not (run / "config.yaml").is_file() or not (run / "train_log.jsonl").is_file():
        raise UserError(f"{run}: not a `safebasin train` run dir (config.yaml, train_log.jsonl) nor a sweep dir")
    log = atomic.read_jsonl(run / "train_log.jsonl")  # a torn last line (a killed run) is skipped with a warning
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    summary = json.loads((run / "train_summary.json").read_text()) if (run / "train_summary.json").is_file() else {}
    sections = []
    notes = [f"model {cfg.get('model')}, data {cfg.get('data')}, method {cfg.get('method')}, lr {cfg.get('lr')}, "
             f"batch {cfg.get('batch_size')}x{cfg.get('grad_accum')}, steps {summary.get('steps', len(log))}, "
             f"EMA β {cfg.get('ema_beta')}"]
    if "monitor_stopped_at" in summary:
        notes.append(f"the monitor stopped training at step {summary['monitor_stopped_at']} and kept the step-"
                     f"{summary['monitor_kept_step']} weights")
    pngs = {"training": training_png(log, f"{run.name}: training")}
    probed = [r for r in log if "probe_harmful_live" in r]
    if probed:
        rows = [[r["step"], f"{r['probe_harmful_live']:.1%}", f"{r['probe_harmful_ema']:.1%}" if "probe_harmful_ema" in r else "",
                 f"{r['dist_live']:.4g}", f"{r['dist_ema']:.4g}" if "dist_ema" in r else ""] for r in probed]
        sections.append(("Safety monitor", table_html(["step", "live harmful", "EMA harmful", "‖θ−θ0‖", "‖θ̄−θ0‖"], rows)))
    if (run / "eval" / "eval.json").is_file():
        ev = json.loads((run / "eval" / "eval.json").read_text())
        rows, systems = [], {}  # a system's bench (toxicity, dialogue, kg) has no harmful rate: its own table
        for label, entry in ev["models"].items():
            util = entry.get("utility", {})
            for bench, b in entry["benchmarks"].items():
                if b.get("kind", "harmful") not in ("harmful", "over-refusal"):
                    systems.setdefault(b["kind"], []).append([label, bench, b.get("n", ""), *headline(b)])
                    continue
                rows.append([label, bench, b["n"], pct(b["harmful_rate"]), pct_range(b["ci_low"], b["ci_high"]),
                             f"{util['heldout_loss']:.4f}" if "heldout_loss" in util else ""])
        if rows:
            sections.append(("Evaluation", table_html(["model", "bench", "n", "harmful rate", "95% CI", "held-out loss"], rows)))
        for kind, kind_rows in systems.items():
            sections.append((f"Evaluation: {kind} benches", table_html(["model", "bench", "n", *headline_columns(kind)],
                                                                        kind_rows)))
    if (run / "basin.png").is_file():
        pngs["safety basin"] = (run / "basin.png").read_bytes()
    for name, png in pngs.items():
        sections.append((name, img_html(name, png)))
    write_png(run / "training.png", pngs["training"])
    atomic.write_text(run / "report.html", html_page(f"safebasin run report: {run.name}", sections, notes=notes))
    return run / "report.html"
