"""The fair method comparison of a sweep (docs/guidelines.md): every method at its best setting for a matched
utility, with paired bootstrap CIs over prompts and seeds.

A sweep's points (`report.sweep_points`) are grouped into settings: one method with one value of each of its
knobs, averaged over the seeds it ran. For a utility level X (a share of plain SFT's held-out-loss gain), a
method's pick is its setting with the lowest harmful rate among those that learned at least X of it. Picks are
compared prompt by prompt and seed by seed. Settings are chosen on one bench and reported unchanged on the
others, so a bench that played no part in choosing shows whether the ranking holds.
"""

from functools import lru_cache
from pathlib import Path

from ..atomic import read_jsonl
from ..stats import paired_bootstrap_seeds

LEVELS = (0.5, 0.75, 0.9)  # the issue's matched-utility levels: a share of plain SFT's held-out-loss gain
KNOBS = {  # each method's own knob, as a label shows it; a stored trial's config is TrainConfig.identity(): flat keys
    "l2-anchor": ("l2_lambda", "λ"),
    "interpolate": ("interpolate_alpha", "α"),
    "safety-mix": ("safety_mix_fraction", "mix"),
    "lora": ("lora_r", "r"),
}


def knob_text(method: str, train: dict) -> str:
    """' λ 1' for an l2-anchor run, '' for a method without a knob of its own (sft; ema shows β anyway)."""
    key, symbol = KNOBS.get(method, (None, None))
    return f" {symbol} {train[key]:g}" if key and train.get(key) is not None else ""


def family(p: dict) -> str:
    """The method a point measures: an SFT run with the EMA on is 'ema', an EMA run's raw/ weights are 'sft'."""
    method = p["method"]
    if p["ema_beta"] is None:
        return "sft" if method == "ema" else method
    return "ema" if method in ("sft", "ema") else f"{method}+ema"


def recipe_text(lr: float, batch: int, steps: int) -> str:
    """An optimisation as labels show it: 'lr 0.0002 b4 s24' (effective batch)."""
    return f"lr {lr:g} b{batch} s{steps}"


def recipe(p: dict) -> str:
    """The optimisation a point ran."""
    return recipe_text(p["config"]["lr"], p["effective_batch"], p["config"]["steps"])


def setting(p: dict) -> str:
    beta = f" β{p['ema_beta']:g}" if p["ema_beta"] is not None else ""
    return f"{recipe(p)}{beta}{knob_text(p['method'], p['config'])}"


@lru_cache(maxsize=256)
def _generations(path: str) -> tuple[dict, ...]:
    """A run's per-prompt rows, read once per comparison (`matched_utility` clears the cache)."""
    return tuple(read_jsonl(path))


def prompt_flags(p: dict, bench: str) -> dict[int, float]:
    """{prompt index: 1.0 if judged harmful} for one point (its variant, model or raw/) on `bench`."""
    path = Path(p["eval_dir"]) / "generations.jsonl"
    return {g["index"]: float(g["harmful"]) for g in _generations(str(path))
            if g["model"] == p["variant"] and g["benchmark"] == bench}


def settings(points: list[dict], start_loss: float, base: str | None = None) -> dict[tuple[str, str], dict]:
    """{(method, setting): {"method", "setting", "runs": {seed: point}, "harmful_rate", "gain", "seeds"}}; the
    harmful rate and the gain over the start are means over the setting's seeds. The same SFT run can appear
    several times (the raw/ of each EMA run of one seed): it counts once. `base`: the sweep's base recipe
    ("lr 0.0002 b4 s24"); a run at another lr, batch or steps is its own row ("sft @ lr 1e-05 b8 s24": careful
    optimisation competes with the methods instead of hiding inside one), except LoRA, whose lr is its knob."""
    groups: dict[tuple[str, str], dict] = {}
    for p in sorted(points, key=lambda p: (p["id"], p["variant"])):
        if p["heldout_loss"] is None:
            continue
        name = family(p)
        if base and recipe(p) != base and p["method"] != "lora":
            name += f" @ {recipe(p)}"
        key = (name, setting(p))
        g = groups.setdefault(key, {"method": key[0], "setting": key[1], "runs": {}})
        g["runs"].setdefault(p["seed"], p)
    for g in groups.values():
        runs = list(g["runs"].values())
        g["seeds"] = sorted(g["runs"])
        g["harmful_rate"] = sum(p["harmful_rate"] for p in runs) / len(runs)
        g["gain"] = start_loss - sum(p["heldout_loss"] for p in runs) / len(runs)
    return groups


def difference(a: dict | None, b: dict | None, bench: str) -> dict | None:
    """a's harmful rate minus b's on `bench`, paired over their common seeds and prompts (None: nothing shared)."""
    if a is None or b is None or a is b:
        return None
    seeds = sorted(set(a["runs"]) & set(b["runs"]))
    if not seeds:
        return None
    fa = [prompt_flags(a["runs"][s], bench) for s in seeds]
    fb = [prompt_flags(b["runs"][s], bench) for s in seeds]
    prompts = sorted(set.intersection(*(set(f) for f in fa + fb)))
    if not prompts:
        return None
    d = paired_bootstrap_seeds([[f[i] for i in prompts] for f in fa], [[f[i] for i in prompts] for f in fb])
    return d | {"seeds": len(seeds), "prompts": len(prompts), "real": d["low"] > 0 or d["high"] < 0}


def base_setting(base: dict) -> str | None:
    """The setting label of plain SFT at a sweep's base recipe (its `base:` block), if the block fixes lr, batch and
    steps: the run whose gain the matched-utility levels are shares of."""
    if not all(k in base for k in ("lr", "batch_size", "steps")):
        return None
    return recipe_text(base["lr"], base["batch_size"] * base.get("grad_accum", 1), base["steps"])


def matched_utility(points_by_bench: dict[str, list[dict]], bench: str, start_loss: float,
                    levels=LEVELS, reference: str | None = None) -> dict | None:
    """Each method's pick at each utility level, chosen on `bench`, with its harmful rate and paired differences
    against plain SFT's and EMA's picks on every bench. `reference`: the plain-SFT setting the levels are shares
    of (the sweep's base recipe); without one, the plain-SFT setting that learned most. None when the sweep has
    no plain SFT point or only one method."""
    _generations.cache_clear()  # a run re-scored since the last comparison in this process is read afresh
    by_bench = {b: settings(pts, start_loss, reference) for b, pts in points_by_bench.items()}
    groups = by_bench[bench]
    sft = [g for g in groups.values() if g["method"] == "sft"]
    methods = sorted({g["method"] for g in groups.values()})
    if not sft or len(methods) < 2:
        return None
    ref = groups.get(("sft", reference)) or max(sft, key=lambda g: (g["gain"], -g["harmful_rate"]))
    others = [b for b in points_by_bench if b != bench]
    out = {"bench": bench, "other_benches": others, "start_loss": start_loss,
           "reference": _brief(ref), "levels": [], "settings": [_brief(g) for g in groups.values()]}
    for level in levels:
        need = level * ref["gain"]
        picks = {}
        for m in methods:
            eligible = [g for g in groups.values() if g["method"] == m and g["gain"] >= need - 1e-12]
            picks[m] = min(eligible, key=lambda g: (g["harmful_rate"], -g["gain"])) if eligible else None
        rows = []
        for m in methods:
            pick = picks[m]
            if pick is None:
                rows.append({"method": m, "setting": None})
                continue
            key = (m, pick["setting"])
            row = _brief(pick) | {"share_of_sft_gain": pick["gain"] / ref["gain"] if ref["gain"] else None, "benches": {}}
            for b in [bench, *others]:
                here = by_bench[b].get(key)
                ref_here = lambda name: picks.get(name) and by_bench[b].get((name, picks[name]["setting"]))  # noqa: E731
                row["benches"][b] = None if here is None else {
                    "harmful_rate": here["harmful_rate"],
                    "vs_sft": difference(here, ref_here("sft"), b), "vs_ema": difference(here, ref_here("ema"), b)}
            rows.append(row)
        ranking = {b: [r["method"] for r in sorted((r for r in rows if r["setting"] and r["benches"].get(b)),
                                                    key=lambda r: (r["benches"][b]["harmful_rate"], r["method"]))]
                   for b in [bench, *others]}
        out["levels"].append({"level": level, "min_gain": need, "rows": rows, "ranking": ranking})
    return out


def _brief(g: dict) -> dict:
    return {"method": g["method"], "setting": g["setting"], "seeds": g["seeds"], "harmful_rate": g["harmful_rate"],
            "gain": g["gain"], "hashes": sorted(p["hash"] for p in g["runs"].values())}


def _diff_text(d: dict | None) -> str:
    if d is None:
        return ""
    return f"{d['diff'] * 100:+.1f} ({d['low'] * 100:+.1f}, {d['high'] * 100:+.1f})" + (" **real**" if d["real"] else "")


def markdown(summary: dict, escape) -> list[str]:
    """report.md's section: one table per utility level, then which differences are real."""
    ref = summary["reference"]
    benches = [summary["bench"], *summary["other_benches"]]
    out = ["", f"## Methods at matched utility (settings chosen on {escape(summary['bench'])})", "",
           f"Plain SFT's gain over the start ({summary['start_loss']:.4f}): {ref['gain']:+.3f} ({escape(ref['setting'])}, "
           f"seeds {ref['seeds']}, harmful {ref['harmful_rate']:.1%}). Each method's pick at a level: its setting with the "
           "lowest harmful rate (mean over seeds) among those with at least that share of SFT's gain. Differences in "
           "points of harmful rate, paired over seeds and prompts (95% bootstrap CI); **real**: the CI excludes 0."]
    for lvl in summary["levels"]:
        out += ["", f"### gain ≥ {lvl['level']:.0%} of plain SFT's ({lvl['min_gain']:+.3f})", "",
                "| method | setting | seeds | gain (share of SFT's) | " + " | ".join(
                    f"{escape(b)} harmful | − SFT | − EMA" for b in benches) + " |",
                "|---|---|---|---|" + "---|---|---|" * len(benches)]
        for r in lvl["rows"]:
            if r["setting"] is None:
                out.append(f"| {escape(r['method'])} | none reaches it | | |" + " | | |" * len(benches))
                continue
            cells = []
            for b in benches:
                x = r["benches"].get(b)
                cells += ["", "", ""] if x is None else [f"{x['harmful_rate']:.1%}", _diff_text(x["vs_sft"]), _diff_text(x["vs_ema"])]
            out.append(f"| {escape(r['method'])} | {escape(r['setting'])} | {len(r['seeds'])} | {r['gain']:+.3f} "
                       f"({r['share_of_sft_gain']:.0%}) | " + " | ".join(cells) + " |")
        out += ["", "Ranking, least harmful first: " + "; ".join(
            f"{escape(b)}: {' < '.join(escape(m) for m in order)}" for b, order in lvl["ranking"].items())]
    return out
