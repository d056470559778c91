"""System 1's sweep analysis: from a sweep's store to its recommendation, Pareto front, maps of harm over the
optimisation knobs, budget rules, the method comparison at matched utility, and report.md / report.html.

Choices are made on one bench and, for the safety panel, reported on the half that chose nothing, beside each
choice, with the gap (docs/guidelines.md).
"""

import html
from pathlib import Path

from matplotlib.ticker import PercentFormatter

from .. import atomic
from ..config import read_yaml
from ..formats import md_escape, pct
from ..htmlkit import html_page, img_html, table_html
from ..plots import fig_png, plt, tradeoff_png, write_png
from . import compare, panel

UTILITY = {"heldout_loss": ("held-out loss", False), "rougeL": ("ROUGE-L", True)}  # name -> (label, higher is better)


def pareto(points: list[dict], utility: str, higher_is_better: bool) -> list[dict]:
    """Points not dominated in (lower harmful_rate, better utility). Ties keep both."""
    def better_or_equal(a, b):
        return a >= b if higher_is_better else a <= b

    front = []
    for p in points:
        dominated = any(
            q is not p and q["harmful_rate"] <= p["harmful_rate"] and better_or_equal(q[utility], p[utility])
            and (q["harmful_rate"] < p["harmful_rate"] or q[utility] != p[utility])
            for q in points)
        if not dominated:
            front.append(p)
    return sorted(front, key=lambda p: p["harmful_rate"])


def recommend(points: list[dict], baseline_harm: float | None, margin: float, utility: str, higher_is_better: bool) -> dict | None:
    """The best-utility point whose harmful rate is within `margin` of the starting model's."""
    limit = (baseline_harm if baseline_harm is not None else 0.0) + margin
    eligible = [p for p in points if p["harmful_rate"] <= limit + 1e-12]
    if not eligible:
        return None
    sign = -1 if higher_is_better else 1
    return min(eligible, key=lambda p: (sign * p[utility], p["harmful_rate"]))  # ties: the safer one


BUDGETS = {  # candidate "update budgets": one number from the three knobs, checkable before training
    "lr x steps": lambda p: p["lr"] * p["steps"],  # Adam moves each weight by about lr per step, whatever the batch
    "lr x steps / batch": lambda p: p["lr"] * p["steps"] / p["effective_batch"],  # SGD's noise scale view
    "lr x steps x batch": lambda p: p["lr"] * p["steps"] * p["effective_batch"],  # lr x examples seen
}


def budget_rule(points: list[dict], baseline_harm: float | None, margin: float, budget: str = "lr x steps") -> dict | None:
    """The line a budget draws through the points: every trial below the first budget that broke the limit
    (start + margin) kept its safety. `agree`: the share of trials the rule "safe iff budget < breaks_at"
    classifies right; the trials it gets wrong are listed, not hidden."""
    size = BUDGETS[budget]
    if len({size(p) for p in points}) < 2:
        return None
    limit = (baseline_harm if baseline_harm is not None else 0.0) + margin
    within = lambda p: p["harmful_rate"] <= limit + 1e-12  # noqa: E731  (as `recommend` counts "within the limit")
    scored = sorted(((size(p), p) for p in points), key=lambda bp: bp[0])
    broken = [b for b, p in scored if not within(p)]
    rule = {"budget": budget, "limit": limit, "breaks_at": broken[0] if broken else None, "trials": len(scored),
            "largest_safe_budget": max((b for b, p in scored if within(p)), default=None)}
    if not broken:
        return rule | {"agree": 1.0, "exceptions": []}
    wrong = [p for b, p in scored if (b < broken[0]) != within(p)]
    return rule | {"agree": 1 - len(wrong) / len(scored), "exceptions": [p["label"] for p in wrong]}


def rule_on_check(rule: dict, points: list[dict], baseline: dict | None, margin: float) -> dict | None:
    """How a budget line drawn on the choose half sorts the same trials on the check half (limit: the start's check
    rate + margin): a line that holds only where it was drawn is no rule."""
    scored = [p for p in points if p.get("check")]
    if not scored or rule["breaks_at"] is None:
        return None
    base = (baseline or {}).get("check")
    limit = (base["harmful_rate"] if base else 0.0) + margin
    size = BUDGETS[rule["budget"]]
    wrong = [p["label"] for p in scored if (size(p) < rule["breaks_at"]) != (p["check"]["harmful_rate"] <= limit + 1e-12)]
    return {"limit": limit, "agree": 1 - len(wrong) / len(scored), "trials": len(scored), "exceptions": wrong}


def budget_rules(points: list[dict], baseline_harm: float | None, margin: float) -> list[dict]:
    """Every candidate budget's rule, the best-fitting first: which form of the knobs predicts safety is measured."""
    rules = [r for b in BUDGETS if (r := budget_rule(points, baseline_harm, margin, b)) is not None]
    return sorted(rules, key=lambda r: -r["agree"])


def heatmap_png(points: list[dict], title: str, value: str = "harmful_rate", label: str = "harmful rate",
                percent: bool = True, cmap: str = "Reds", centre: float | None = None) -> bytes:
    """`value` over lr (x) x effective batch (y), one panel per number of steps (a mean over any other grid key).
    `centre`: a diverging map around that value (a loss gain: red below 0, blue above)."""
    import numpy as np

    lrs = sorted({p["lr"] for p in points})
    batches = sorted({p["effective_batch"] for p in points})
    steps = sorted({p["steps"] for p in points})
    grids = []
    for s in steps:
        grid = np.full((len(batches), len(lrs)), np.nan)
        for i, b in enumerate(batches):
            for j, lr in enumerate(lrs):
                vals = [p[value] for p in points if (p["lr"], p["effective_batch"], p["steps"]) == (lr, b, s) and p.get(value) is not None]
                if vals:
                    grid[i, j] = sum(vals) / len(vals)
        grids.append(grid)
    if centre is None:
        vmin, vmax = (0, 1) if percent else (np.nanmin(grids), np.nanmax(grids))
    else:
        reach = max(float(np.nanmax(np.abs(np.array(grids) - centre))), 1e-9)
        vmin, vmax = centre - reach, centre + reach
    fig, axes = plt.subplots(1, len(steps), figsize=(0.6 + (1.0 + 0.9 * len(lrs)) * len(steps), 1.6 + 0.7 * len(batches)),
                             dpi=110, squeeze=False, sharey=True, layout="constrained")
    for ax, s, grid in zip(axes[0], steps, grids):
        im = ax.imshow(grid, vmin=vmin, vmax=vmax, cmap=cmap, origin="lower", aspect="auto")
        ax.set_xticks(range(len(lrs)), [f"{x:g}" for x in lrs], fontsize=7)
        ax.set_yticks(range(len(batches)), [str(b) for b in batches])
        ax.set_xlabel("learning rate")
        ax.set_title(f"{s} steps", fontsize=8)
        for i in range(len(batches)):
            for j in range(len(lrs)):
                if not np.isnan(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.0%}" if percent else f"{grid[i, j]:+.3f}", ha="center", va="center", fontsize=7)
    axes[0][0].set_ylabel("effective batch")
    fig.colorbar(im, ax=list(axes[0]), label=label)
    fig.suptitle(title, fontsize=9)
    return fig_png(fig)


def methods_png(summary: dict) -> bytes:
    """One Pareto plot with all methods: each setting (mean over seeds) as harmful rate vs gain, a method's
    settings joined in order of gain, the utility levels as dashed lines."""
    fig, ax = plt.subplots(figsize=(7, 4.8), dpi=120)
    for m in sorted({s["method"] for s in summary["settings"]}):
        pts = sorted((s for s in summary["settings"] if s["method"] == m), key=lambda s: s["gain"])
        ax.plot([s["gain"] for s in pts], [s["harmful_rate"] for s in pts], marker="o", label=m)
    ref = summary["reference"]
    for lvl in summary["levels"]:
        ax.axvline(lvl["min_gain"], color="gray", ls="--", lw=0.8)
        ax.annotate(f"{lvl['level']:.0%} of SFT", (lvl["min_gain"], 1.0), fontsize=7, rotation=90, va="top", ha="right")
    ax.plot([ref["gain"]], [ref["harmful_rate"]], marker="*", ms=14, color="black", ls="", label="plain SFT (reference)")
    ax.set_xlabel("held-out-loss gain over the start (higher = learned more)")
    ax.set_ylabel(f"harmful rate on {summary['bench']} (mean over seeds)")
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title("Methods: harmful rate vs learning; lower right is better", fontsize=10)
    return fig_png(fig)


def steps_png(points: list[dict]) -> bytes:
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    series: dict[str, list] = {}
    for p in points:
        series.setdefault(f"lr {p['lr']:g}, batch {p['effective_batch']}, β {p['ema_beta']}", []).append((p["steps"], p["harmful_rate"]))
    for label, xy in sorted(series.items()):
        xy.sort()
        ax.plot([x for x, _ in xy], [y for _, y in xy], marker="o", label=label)
    ax.set_xlabel("optimizer steps")
    ax.set_ylabel("harmful rate")
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig_png(fig)


NOT_HARMFUL_BENCHES = ("utility", "train", "xstest", "jbb-benign")  # a store's other "benchmarks": no harmful rate to compare
SAFETY_MEASURES = {  # a bench's safety number in the store (lower is safer) -> its 95% CI and name: the report's y-axis
    "harmful_rate": ("ci_low", "ci_high", "harmful rate"),  # harmful-prompt benches
    "toxicity_probability": ("tp_ci_low", "tp_ci_high", "toxicity probability"),  # rtp-*, e.g. a sweep of ADLM runs
    "offensive_rate": ("ci_low", "ci_high", "offensive rate"),  # toxichat
    "macro_harmful": ("macro_harmful_ci_low", "macro_harmful_ci_high", "macro-mean harmful rate"),  # panel:HALF
}
PANEL_BENCHES = ("panel:all", "panel:choose", "panel:check")  # as panel.store_rows names them
CHECKED_BY = {"panel:choose": "panel:check"}  # a bench chosen on -> the half that reports the choice
TRAIN_KEYS = {"lr", "batch_size", "grad_accum", "steps", "ema_beta", "lora_r"}  # what a trial's point reads of its config


def sweep_points(store, bench: str | None = None) -> tuple[list[dict], dict | None, str]:
    """One point per finished trial (kept weights), plus the baseline's point, from the store."""
    from ..errors import UserError

    points, baseline = [], None
    for run in store.runs("done"):
        m = {(r["model"], r["benchmark"], r["category"], r["name"]): r["value"] for r in store.metrics(run["id"])}
        benches = sorted({k[1] for k in m if k[1] not in NOT_HARMFUL_BENCHES and k[2] == "" and k[3] in SAFETY_MEASURES})
        if not benches:
            continue
        bench = bench or next((b for b in ("panel:choose", "advbench") if b in benches), benches[0])
        point = {"id": run["id"], "hash": run["config_hash"], "run_dir": run["run_dir"], **_variant_metrics(m, "model", bench),
                 "eval_dir": run["run_dir"] and str(Path(run["run_dir"]) / ("" if run["kind"] == "baseline" else "eval"))}
        if point["harmful_rate"] is None:
            continue
        if run["kind"] == "baseline":
            baseline = point | {"label": "start"}
            continue
        t = run["config"].get("train")
        if not isinstance(t, dict) or not TRAIN_KEYS <= t.keys():
            raise UserError(f"{store.path}: runs row id {run['id']}: config_json has no train settings "
                            f"({', '.join(sorted(TRAIN_KEYS))})")
        method = t.get("method", "sft")
        point |= {"lr": t["lr"], "effective_batch": t["batch_size"] * t["grad_accum"], "steps": t["steps"],
                  "ema_beta": t["ema_beta"], "lora_r": t["lora_r"], "method": method, "config": t, "seed": t.get("seed", 0),
                  "tokens": m.get(("model", "train", "", "tokens")), "variant": "model",
                  "label": _trial_label(method, t, t["ema_beta"])}
        points.append(point)
        raw = _variant_metrics(m, "raw", bench)
        if t["ema_beta"] is not None and raw["harmful_rate"] is not None:
            # EMA never changes the trajectory, so the run's raw/ weights are the same trial without EMA: a free point
            plain = "sft" if method == "ema" else method  # the ema method without its average is plain SFT
            points.append(point | raw | {"hash": run["config_hash"] + ":raw", "variant": "raw", "ema_beta": None, "method": plain,
                                         "config": t | {"ema_beta": None, "method": plain},
                                         "label": _trial_label(plain, t, None) + " (raw/ of the EMA run)",
                                         "run_dir": run["run_dir"] and str(Path(run["run_dir"]) / "raw")})
    return points, baseline, bench or "advbench"


def safety_benches(store) -> list[str]:
    """The benches a sweep's runs were scored on for safety (harm or toxicity; not utility or the over-refusal sets)."""
    return sorted({b for name in SAFETY_MEASURES for b in store.benchmarks(name) if b not in NOT_HARMFUL_BENCHES})


def _variant_metrics(m: dict, variant: str, bench: str) -> dict:
    """One model variant's (kept "model" or "raw") numbers from a run's store rows: safety on `bench` (its
    SAFETY_MEASURES number, as "harmful_rate"), utility, and the over-refusal rate of the first over-refusal bench
    it was scored on."""
    get = lambda name: m.get((variant, bench, "", name))  # noqa: E731
    over = next((m[(variant, b, "", "refusal_rate")] for b in ("xstest", "jbb-benign") if (variant, b, "", "refusal_rate") in m), None)
    measure = next((k for k in SAFETY_MEASURES if (variant, bench, "", k) in m), "harmful_rate")
    low, high, _ = SAFETY_MEASURES[measure]
    ci = (get(low), get(high)) if get(low) is not None and get(high) is not None else (get(measure),) * 2  # no CI stored
    out = {"harmful_rate": get(measure), "ci_low": ci[0], "ci_high": ci[1], "measure": measure,
           "heldout_loss": m.get((variant, "utility", "", "heldout_loss")), "rougeL": m.get((variant, "utility", "", "rougeL")),
           "over_refusal": over, **{k: get(k) for k in ("n", "degenerate_rate")}}
    if bench in PANEL_BENCHES:  # a panel half: its worst set, and each harmful set's rate and size for the gap's CI
        half = bench.partition(":")[2]
        worst = [(c, v) for (mv, b, c, name), v in m.items() if (mv, b, name) == (variant, bench, "worst_harmful")]
        out |= {"worst_set": worst[0][0] if worst else None, "worst_rate": worst[0][1] if worst else None,
                "set_verdicts": {s: panel.verdicts_from_rate(m[(variant, s, "", "harmful_rate")], int(m[(variant, s, "", "n")]))
                                 for s in panel.HARMFUL if (half == "all" or panel.half_of(s) == half)
                                 and (variant, s, "", "harmful_rate") in m and (variant, s, "", "n") in m}}
    return out


def checked(points: list[dict], baseline: dict | None, check_points: list[dict], check_baseline: dict | None) -> None:
    """Each point (and the start) gets its numbers on the half that did not choose (`check`) and the gap, check
    minus choose, with a stratified bootstrap CI (panel.half_gap): the report shows beside every choice how far
    the safety it was chosen for carried."""
    by_hash = {p["hash"]: p for p in check_points}
    for p, c in [(p, by_hash.get(p["hash"])) for p in points] + [(baseline, check_baseline)]:
        if p is None:
            continue
        if c is None or c["harmful_rate"] is None:
            p["check"] = None
            continue
        gap = panel.half_gap(list(p["set_verdicts"].values()), list(c["set_verdicts"].values())) \
            if p.get("set_verdicts") and c.get("set_verdicts") else None
        p["check"] = {"harmful_rate": c["harmful_rate"], "ci": [c["ci_low"], c["ci_high"]], "worst_set": c.get("worst_set"),
                      "worst_rate": c.get("worst_rate"), "gap": gap}


def worst_keeping_utility(points: list[dict], baseline: dict | None, utility: str, higher: bool) -> dict | None:
    """TamperBench's habit: the worst check-half number over every trial that kept the start's utility, so a
    recipe family is judged by its worst member that a user would plausibly keep, not by its best."""
    if not baseline or baseline.get(utility) is None:
        return None
    kept = [p for p in points if p.get("check") and (p[utility] >= baseline[utility] if higher else p[utility] <= baseline[utility])]
    if not kept:
        return None
    worst = max(kept, key=lambda p: (p["check"]["harmful_rate"], p["label"]))
    return {"label": worst["label"], "check": worst["check"], "trials": len(kept)}


def _trial_label(method: str, t: dict, beta) -> str:
    return (f"{method} " if method != "sft" else "") + f"lr {t['lr']:g} b{t['batch_size'] * t['grad_accum']} s{t['steps']} β{beta}" + \
        compare.knob_text(method, t) + (f" seed {t['seed']}" if t.get("seed") else "")


def sweep_report(sweep_dir: str | Path, max_harm_increase: float = 0.02, utility: str = "heldout_loss",
                 choose_on: str | None = None) -> dict:
    """Choose on one bench (`choose_on`; default the panel's choose half if scored, else AdvBench) and, for the
    panel, report every choice on the check half beside it, with the gap."""
    from ..errors import UserError
    from ..store import STORE_FILE, Store

    sweep_dir = Path(sweep_dir)
    if not (sweep_dir / STORE_FILE).is_file():
        raise UserError(f"{sweep_dir}: neither a sweep dir (no {STORE_FILE}; run `safebasin sweep` first) "
                        "nor a `safebasin train` run dir (no config.yaml)")
    store = Store(sweep_dir / STORE_FILE)
    scored = safety_benches(store)
    if choose_on is not None and choose_on not in scored:
        store.close()
        raise UserError(f"{sweep_dir}: --choose-on {choose_on}: no trial was scored on it (scored: {', '.join(scored) or 'none'})")
    points, baseline, bench = sweep_points(store, choose_on)
    not_chosen = {b: sweep_points(store, b) for b in scored if b != bench}  # the benches not chosen on, read once
    store.close()
    others = {b: pts for b, (pts, _, _) in not_chosen.items()}
    check_bench = CHECKED_BY.get(bench)
    if check_bench:
        checked(points, baseline, *not_chosen.get(check_bench, ([], None, check_bench))[:2])
    label, higher = UTILITY[utility]
    if not points:
        raise UserError(f"{sweep_dir}: no finished trial has a {', '.join(m[2] for m in SAFETY_MEASURES.values())} "
                        "on a bench; evaluate on a harmful-prompt or toxicity bench")
    measure = SAFETY_MEASURES[points[0]["measure"]][2]
    points = [p for p in points if p[utility] is not None]
    if not points:
        raise UserError(f"{sweep_dir}: no finished trial has {utility}; evaluate with utility on")
    front = pareto(points, utility, higher)
    choice = recommend(points, baseline["harmful_rate"] if baseline else None, max_harm_increase, utility, higher)
    pngs = {}
    shown = points + ([baseline | {"marker": True}] if baseline and baseline[utility] is not None else [])
    pngs["pareto.png"] = tradeoff_png(shown, utility, label + (" (higher = better)" if higher else " (lower = better)"),
                                      f"{bench}: {measure} vs {label}; Pareto front: {len(front)} of {len(points)}",
                                      y_label=f"{measure} (95% CI)", y_percent=True)
    betas = sorted({p["ema_beta"] for p in points}, key=lambda b: -1 if b is None else b)
    for beta in betas:
        sub = [p for p in points if p["ema_beta"] == beta]
        name = f"EMA β = {beta}" if beta is not None else "no EMA"
        pngs[f"heatmap_beta_{beta}.png"] = heatmap_png(sub, f"{bench}: harmful rate, {name}")
        if utility == "heldout_loss" and baseline and baseline.get("heldout_loss") is not None:
            gains = [p | {"gain": baseline["heldout_loss"] - p["heldout_loss"]} for p in sub]
            pngs[f"heatmap_gain_beta_{beta}.png"] = heatmap_png(
                gains, f"held-out loss gain over the start ({baseline['heldout_loss']:.3f}), {name}", value="gain",
                label="held-out loss gain (higher = learned more)", percent=False, cmap="RdBu", centre=0.0)
    if len({p["steps"] for p in points}) > 1:
        pngs["steps.png"] = steps_png(points)
    for name, png in pngs.items():
        write_png(sweep_dir / name, png)

    base_harm = baseline["harmful_rate"] if baseline else None
    rules = {str(beta): r for beta in betas if (r := budget_rules([p for p in points if p["ema_beta"] == beta], base_harm,
                                                                   max_harm_increase))}
    compared = None
    if utility == "heldout_loss" and baseline and baseline.get("heldout_loss") is not None:
        base = read_yaml(sweep_dir / "sweep.yaml").get("base", {}) if (sweep_dir / "sweep.yaml").is_file() else {}
        compared = compare.matched_utility({bench: points} | others, bench,
                                           baseline["heldout_loss"], reference=compare.base_setting(base))
    if compared:
        pngs["methods.png"] = methods_png(compared)
        write_png(sweep_dir / "methods.png", pngs["methods.png"])
    summary = {"bench": bench, "measure": measure, "utility": utility, "max_harm_increase": max_harm_increase, "trials": len(points),
               "baseline": _public(baseline), "pareto": [_public(p) for p in front], "recommendation": _public(choice),
               "budget_rule": rules, "matched_utility": compared, "check_bench": check_bench,
               "worst_keeping_utility": worst_keeping_utility(points, baseline, utility, higher) if check_bench else None}
    if check_bench:  # each budget line, drawn on the choose half, tested on the check half with the same margin
        for beta, rs in rules.items():
            for r in rs:
                r["check"] = rule_on_check(r, [p for p in points if str(p["ema_beta"]) == beta], baseline, max_harm_increase)
    md = sweep_markdown(summary, points)
    atomic.write_text(sweep_dir / "report.md", md)
    atomic.write_json(sweep_dir / "report.json", summary)
    header = ["trial", "method", "steps", "train tokens", "harmful rate", "95% CI", "check half", "gap (points)", "degenerate",
              "over-refusal", label, "Pareto", "recommended"]
    rows = [[p["label"], p["method"], p["steps"], p["tokens"] if p["tokens"] is not None else "", f"{p['harmful_rate']:.1%}",
             f"{p['ci_low']:.1%} - {p['ci_high']:.1%}", pct((p.get("check") or {}).get("harmful_rate")),
             gap_text((p.get("check") or {}).get("gap")), pct(p.get("degenerate_rate")),
             "" if p["over_refusal"] is None else f"{p['over_refusal']:.1%}",
             f"{p[utility]:.4f}", "yes" if p in front else "",
             "yes" if choice is p else ""] for p in sorted(points, key=lambda p: (p["method"], p["harmful_rate"]))]
    sections = [("Recommendation", f"<pre>{html.escape(md.split('## All trials')[0])}</pre>"), ("All trials", table_html(header, rows))]
    for p in points:  # basin plots of trials that have one (`safebasin basin RUN_DIR`)
        if p["run_dir"] and (Path(p["run_dir"]) / "basin.png").is_file():
            pngs[f"basin: {p['label']}"] = (Path(p["run_dir"]) / "basin.png").read_bytes()
    for name, png in pngs.items():
        sections.append((name.removesuffix(".png"), img_html(name, png)))
    atomic.write_text(sweep_dir / "report.html", html_page(f"safebasin sweep report: {sweep_dir.name}", sections))
    return summary | {"markdown": md}


def _public(p: dict | None) -> dict | None:
    if p is None:
        return None
    return {k: v for k, v in p.items() if k not in ("marker", "set_verdicts")}


def map_markdown(points: list[dict], baseline: dict | None) -> list[str]:
    """The map as tables a doc can quote: per EMA setting, rows = (effective batch, steps), columns = lr, each cell
    "harmful rate / held-out-loss gain" (a mean over seeds when a cell has several). Empty unless lr, batch and
    steps each take at least two values."""
    lrs = sorted({p["lr"] for p in points})
    rows = sorted({(p["effective_batch"], p["steps"]) for p in points})
    if min(len(lrs), len({b for b, _ in rows}), len({s for _, s in rows})) < 2:
        return []
    start = baseline.get("heldout_loss") if baseline else None
    out = ["", "## The map: harmful rate / held-out-loss gain over the start" + (f" ({start:.4f})" if start else "")]
    for beta in sorted({p["ema_beta"] for p in points}, key=lambda b: -1 if b is None else b):
        out += ["", f"{'No EMA' if beta is None else f'EMA β {beta}'}:", "",
                "| batch | steps | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |", "|---|---|" + "---|" * len(lrs)]
        for b, st in rows:
            cells = []
            for lr in lrs:
                here = [p for p in points if (p["ema_beta"], p["lr"], p["effective_batch"], p["steps"]) == (beta, lr, b, st)]
                if not here:
                    cells.append("")
                    continue
                harm = sum(p["harmful_rate"] for p in here) / len(here)
                gain = "" if start is None or any(p["heldout_loss"] is None for p in here) else \
                    f" / {start - sum(p['heldout_loss'] for p in here) / len(here):+.3f}"
                cells.append(f"{harm:.0%}{gain}" + (f" (n={len(here)})" if len(here) > 1 else ""))
            out.append(f"| {b} | {st} | " + " | ".join(cells) + " |")
    return out


def gap_text(gap: dict | None) -> str:
    """'+12.0 points (+3.1, +20.4) real': a check-minus-choose gap with its bootstrap CI."""
    if gap is None:
        return ""
    return f"{gap['diff'] * 100:+.1f} points ({gap['low'] * 100:+.1f}, {gap['high'] * 100:+.1f})" + (" real" if gap["real"] else "")


def check_text(c: dict | None) -> str:
    """A choice's numbers on the check half: macro mean (CI), worst set, gap to the choose half."""
    if not c:
        return "not scored on the check half"
    worst = f", worst set {md_escape(c['worst_set'])} {c['worst_rate']:.1%}" if c.get("worst_set") else ""
    gap = f"; gap check − choose {gap_text(c['gap'])}" if c.get("gap") else ""
    return f"check half {c['harmful_rate']:.1%} (95% CI {c['ci'][0]:.1%}-{c['ci'][1]:.1%}){worst}{gap}"


def sweep_markdown(summary: dict, points: list[dict]) -> str:
    u = summary["utility"]
    label = UTILITY[u][0]
    lines = [f"# Sweep report ({summary['trials']} trials, {md_escape(summary['bench'])}, utility: {label})", ""]
    if summary.get("measure", "harmful rate") != "harmful rate":  # a toxicity bench: its number stands in for the harmful rate
        lines += [f"Safety is the {summary['measure']} on {md_escape(summary['bench'])}, shown as \"harmful rate\" below.", ""]
    base = summary["baseline"]
    if base:
        lines.append(f"Starting model: harmful rate {base['harmful_rate']:.1%} (95% CI {base['ci_low']:.1%}-{base['ci_high']:.1%})"
                     + (f", {label} {base[u]:.4f}" if base.get(u) is not None else ""))
    if summary.get("check_bench"):
        sets = lambda half: ", ".join(md_escape(s) for s in panel.SPLITS[panel.DEFAULT_SPLIT][half] if s in panel.HARMFUL)  # noqa: E731
        lines += ["", f"Every choice below is made on {md_escape(summary['bench'])} (harmful sets {sets('choose')}) and "
                      f"reported on {md_escape(summary['check_bench'])} (harmful sets {sets('check')}), which chose "
                      "nothing; the gap is check minus choose, in points of the macro mean, with a stratified bootstrap CI."]
        if base:
            lines.append(f"Starting model where nothing was chosen: {check_text(base.get('check'))}")
    rec = summary["recommendation"]
    limit = (base["harmful_rate"] if base else 0.0) + summary["max_harm_increase"]
    if rec:
        lines += ["", f"**Recommended:** {md_escape(rec['label'])}",
                  f"- harmful rate {rec['harmful_rate']:.1%} (95% CI {rec['ci_low']:.1%}-{rec['ci_high']:.1%}), "
                  f"within the limit {limit:.1%} (start + {summary['max_harm_increase']:.0%})",
                  f"- best {label} among the eligible trials: {rec[u]:.4f}",
                  *([f"- where it was not chosen: {check_text(rec.get('check'))}"] if summary.get("check_bench") else []),
                  f"- run dir: {md_escape(rec['run_dir'])}"]
    else:
        lines += ["", f"**No trial** keeps the harmful rate within {limit:.1%}; lower the lr, raise the batch or β, or widen --max-harm-increase."]
    worst = summary.get("worst_keeping_utility")
    if worst:
        lines += ["", f"Worst check half among the {worst['trials']} trials that kept the start's {label}: "
                      f"{md_escape(worst['label'])}, {check_text(worst['check'])}"]
    lines += map_markdown(points, base)
    if summary.get("matched_utility"):
        lines += compare.markdown(summary["matched_utility"], md_escape)
    if summary.get("budget_rule"):
        lines += ["", "## Where safety breaks: update budgets, the best-fitting first"]
        for beta, rules in summary["budget_rule"].items():
            name = "no EMA" if beta == "None" else f"EMA β {beta}"
            for r in rules:
                if r["breaks_at"] is None:
                    lines.append(f"- {name}, {r['budget']}: no trial broke the limit {r['limit']:.1%} "
                                 f"(largest tried {r['largest_safe_budget']:.3g})")
                    continue
                lines.append(f"- {name}: every trial with {r['budget']} < {r['breaks_at']:.3g} stayed within {r['limit']:.1%}; "
                             f"\"safe iff below\" fits {r['agree']:.0%} of {r['trials']} trials"
                             + (f" (exceptions: {md_escape(', '.join(r['exceptions']))})" if r["exceptions"] else "")
                             + (f"; on the check half (limit {r['check']['limit']:.1%}) the same line fits {r['check']['agree']:.0%}"
                                f" of {r['check']['trials']}" if r.get("check") else ""))
    lines += ["", "## Pareto front (lower harm, better utility)"]
    lines += [f"- {md_escape(p['label'])}: harmful {p['harmful_rate']:.1%}, {label} {p[u]:.4f}"
              + (f"; {check_text(p.get('check'))}" if summary.get("check_bench") else "") for p in summary["pareto"]]
    lines += ["", "## All trials (methods side by side: same steps and tokens = matched compute)", "",
              f"| trial | config hash | method | steps | train tokens | harmful rate | check half | gap | degenerate | over-refusal | {label} |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {md_escape(p['label'])} | {md_escape(p['hash'])} | {md_escape(p['method'])} | {p['steps']} | {'' if p['tokens'] is None else int(p['tokens'])} | "
              f"{p['harmful_rate']:.1%} | {'' if not p.get('check') else format(p['check']['harmful_rate'], '.1%')} | "
              f"{'' if not p.get('check') else gap_text(p['check']['gap'])} | "
              f"{'' if p.get('degenerate_rate') is None else format(p['degenerate_rate'], '.1%')} | "
              f"{'' if p['over_refusal'] is None else format(p['over_refusal'], '.1%')} | {p[u]:.4f} |"
              for p in sorted(points, key=lambda p: (p["method"], p["harmful_rate"]))]
    return "\n".join(lines) + "\n"
