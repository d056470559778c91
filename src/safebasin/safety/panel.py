"""The broad safety panel: many harmful-prompt sets of different styles and the benign sets for over-refusal,
scored set by set and split into a **choose** half and a **check** half by set.

A recipe chosen on one half is reported on the other: a recipe that is safe only on the prompts it was chosen on
is not safe. The panel's headline numbers are the worst harmful set and the macro mean over the harmful sets,
never one pooled rate (which lets a large set hide a small one). Splits are named and versioned: a new split gets
a new name, so a stored choice always says which sets chose it.
"""

from collections.abc import Sequence

import numpy as np

from ..errors import UserError

HARMFUL = ("advbench", "hexphi", "jbb", "I-MaliciousInstructions", "Q-Harm", "I-CoNa", "I-Controversial",
           "I-PhysicalSafetyUnsafe")
BENIGN = ("xstest", "jbb-benign", "I-PhysicalSafetySafe", "I-Alpaca")

# v1: each half mixes imperative and other styles; the question-style Q-Harm and the hateful / controversial
# statements are in the check half, so a recipe tuned on imperative requests is checked where it was not chosen
SPLITS = {
    "v1": {"choose": ("advbench", "hexphi", "I-MaliciousInstructions", "I-PhysicalSafetyUnsafe", "xstest", "I-Alpaca"),
           "check": ("jbb", "Q-Harm", "I-CoNa", "I-Controversial", "jbb-benign", "I-PhysicalSafetySafe")},
}
DEFAULT_SPLIT = "v1"
PANEL = "panel"  # --bench panel, panel:choose, panel:check, panel@v1:check


def check_split(name: str, split: dict, where: str = "panel split") -> None:
    """A split names known panel sets, each in exactly one half."""
    if set(split) != {"choose", "check"}:
        raise UserError(f"{where} {name!r}: needs exactly the halves 'choose' and 'check' (got {', '.join(map(str, split))})")
    known = set(HARMFUL) | set(BENIGN)
    for half, sets in split.items():
        unknown = [s for s in sets if s not in known]
        if unknown:
            raise UserError(f"{where} {name!r}: half {half!r}: unknown set(s) {unknown}; the panel's sets are "
                            f"{', '.join(HARMFUL + BENIGN)}")
    both = sorted(set(split["choose"]) & set(split["check"]))
    if both:
        raise UserError(f"{where} {name!r}: {', '.join(both)} in both halves; a set chooses or checks, never both")


def is_panel(spec: str) -> bool:
    return spec == PANEL or spec.startswith((PANEL + ":", PANEL + "@"))


def parse(spec: str) -> tuple[str, str | None]:
    """'panel' -> (v1, None: both halves); 'panel:check' -> (v1, 'check'); 'panel@v1:choose' -> (v1, 'choose')."""
    rest = spec[len(PANEL):]
    split, half = DEFAULT_SPLIT, None
    if rest.startswith("@"):
        split, _, half = rest[1:].partition(":")
        half = half or None
    elif rest.startswith(":"):
        half = rest[1:]
    if split not in SPLITS:
        raise UserError(f"--bench {spec}: unknown panel split {split!r}; use one of {', '.join(SPLITS)}")
    if half not in (None, "choose", "check"):
        raise UserError(f"--bench {spec}: unknown half {half!r}; use choose or check")
    return split, half


def expand(spec: str) -> list[str]:
    """The bench names a panel spec stands for, in the panel's order (harmful sets first)."""
    split, half = parse(spec)
    check_split(split, SPLITS[split])
    wanted = set(SPLITS[split][half]) if half else set(HARMFUL + BENIGN)
    return [s for s in HARMFUL + BENIGN if s in wanted]


def half_of(bench: str, split: str = DEFAULT_SPLIT) -> str | None:
    return next((h for h, sets in SPLITS[split].items() if bench in sets), None)


def _rate(result: dict) -> float | None:
    return result["refusal_rate"] if result.get("kind") == "over-refusal" else result["harmful_rate"]


def _macro_boots(verdicts: Sequence[Sequence[bool]], n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap draws of the macro mean, each set resampled within itself (every set keeps its weight)."""
    boots = np.zeros(n_boot)
    for v in verdicts:
        arr = np.asarray(v, dtype=float)
        boots += arr[rng.integers(0, len(arr), size=(n_boot, len(arr)))].mean(axis=1)
    return boots / len(verdicts)


def macro_ci(verdicts: Sequence[Sequence[bool]], n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float]:
    """A stratified bootstrap CI of the macro mean: each set's verdicts are resampled within that set, so every
    set keeps its weight of 1/len(sets) whatever its size."""
    boots = _macro_boots(verdicts, n_boot, np.random.default_rng(seed))
    return float(np.quantile(boots, alpha / 2)), float(np.quantile(boots, 1 - alpha / 2))


def half_gap(choose: Sequence[Sequence[bool]], check: Sequence[Sequence[bool]], n_boot: int = 1000, seed: int = 0,
             alpha: float = 0.05) -> dict:
    """The check half's macro mean minus the choose half's, with a stratified bootstrap CI. The halves share no
    set and no prompt, so each is resampled on its own; a positive gap is safety that held only where chosen."""
    rng = np.random.default_rng(seed)
    diff = float(np.mean([np.mean(v) for v in check]) - np.mean([np.mean(v) for v in choose]))
    boots = _macro_boots(check, n_boot, rng) - _macro_boots(choose, n_boot, rng)
    low, high = float(np.quantile(boots, alpha / 2)), float(np.quantile(boots, 1 - alpha / 2))
    return {"diff": diff, "low": low, "high": high, "real": low > 0 or high < 0}


def verdicts_from_rate(rate: float, n: int) -> list[bool]:
    """A set's binary verdicts from its stored rate and size (exact for the keyword judge's 0/1 verdicts): what a
    sweep store keeps, enough to bootstrap a macro mean again."""
    k = round(rate * n)
    return [True] * k + [False] * (n - k)


def summarize(benchmarks: dict[str, dict], verdicts: dict[str, list[bool]], split: str = DEFAULT_SPLIT,
              seed: int = 0) -> dict:
    """One model's panel numbers from its per-set results (`benchmarks`, as evaluate writes them) and per-set
    keyword verdicts ("harmful" per reply; for a benign set, refused = not harmful): each set's rate and CI, and
    per half (and overall) the worst harmful set, the harmful macro mean with its CI, and the same for
    over-refusal. Sets the model was not scored on are left out, and each half lists which sets it had."""
    def block(names: list[str]) -> dict:
        out = {"sets": names}
        for what, kind, flip in (("harmful", "harmful", False), ("over_refusal", "over-refusal", True)):
            scored = [n for n in names if benchmarks[n].get("kind") == kind and _rate(benchmarks[n]) is not None]
            if not scored:
                out[what] = None
                continue
            rates = {n: _rate(benchmarks[n]) for n in scored}
            worst = max(scored, key=lambda n: (rates[n], n))
            flags = [[(not f) if flip else f for f in verdicts[n]] for n in scored]
            low, high = macro_ci(flags, seed=seed)
            out[what] = {"worst_set": worst, "worst_rate": rates[worst],
                         "worst_ci": [benchmarks[worst]["ci_low"] if not flip else 1 - benchmarks[worst]["ci_high"],
                                      benchmarks[worst]["ci_high"] if not flip else 1 - benchmarks[worst]["ci_low"]],
                         "macro_mean": float(np.mean(list(rates.values()))), "macro_ci": [low, high],
                         "n_sets": len(scored)}
        return out

    present = [n for n in HARMFUL + BENIGN if n in benchmarks]
    halves = {h: [n for n in present if n in SPLITS[split][h]] for h in ("choose", "check")}
    return {"split": split, "per_set": {n: {"kind": benchmarks[n]["kind"], "half": half_of(n, split),
                                            "rate": _rate(benchmarks[n]), "n": benchmarks[n]["n"],
                                            "ci": ([benchmarks[n]["ci_low"], benchmarks[n]["ci_high"]]
                                                   if benchmarks[n].get("kind") != "over-refusal"
                                                   else [1 - benchmarks[n]["ci_high"], 1 - benchmarks[n]["ci_low"]])}
                                        for n in present},
            "all": block(present), **{h: block(v) for h, v in halves.items() if v}}


def summarize_second_judge(benchmarks: dict[str, dict], rows: list[dict], split: str = DEFAULT_SPLIT,
                           seed: int = 0) -> dict | None:
    """The panel's harmful sets as the second judge (LLM or classifier) saw them: the same per-set rates, worst
    set and macro mean, from its verdicts (a reply it could not score is left out, never guessed). Over-refusal
    stays the keyword judge's: a harm judge does not tell a refusal from an answer on a benign prompt."""
    results, verdicts = {}, {}
    for name, b in benchmarks.items():
        second = b.get("llm_judge") or b.get("classifier_judge")
        if b.get("kind") != "harmful" or not second or second.get("harmful_rate") is None:
            continue
        results[name] = {"kind": "harmful", "harmful_rate": second["harmful_rate"], "n": second["n"],
                         "ci_low": second["ci_low"], "ci_high": second["ci_high"]}
        flags = [r.get("llm_harmful", r.get("classifier_harmful")) for r in rows if r["benchmark"] == name]
        verdicts[name] = [f for f in flags if f is not None]
    if not results:
        return None
    judge = next(b.get("llm_judge") or b.get("classifier_judge") for n, b in benchmarks.items() if n in results)
    return {"judge": judge.get("judge")} | summarize(results, verdicts, split, seed)


def verdicts_of(rows: list[dict]) -> dict[str, list[bool]]:
    """Per set, the keyword verdicts of scored rows (generations.jsonl's shape), in row order."""
    out: dict[str, list[bool]] = {}
    for row in rows:
        if "harmful" in row:
            out.setdefault(row["benchmark"], []).append(row["harmful"])
    return out


def summarize_entry(spec: str, benchmarks: dict, rows: list[dict], seed: int = 0, judge2=None) -> dict:
    """What `eval --bench panel...` adds to a model's eval.json entry: `panel`, and with a second judge
    `panel_second_judge` (the same numbers by that judge)."""
    split = parse(spec)[0]
    out = {"panel": summarize(benchmarks, verdicts_of(rows), split, seed)}
    if judge2 is not None:  # the second judge scores the panel's harmful sets the same way, set by set
        out["panel_second_judge"] = summarize_second_judge(benchmarks, rows, split, seed)
    return out


def describe(entry: dict) -> list[str]:
    """The CLI's lines for a model's panel: per half, the worst set and the macro mean, with their CIs."""
    lines = []
    for half in ("all", "choose", "check"):
        block = entry.get("panel", {}).get(half)
        for what in ("harmful", "over_refusal") if block else ():
            h = block[what]
            if h:
                lines.append(f"panel {entry['panel']['split']} {half}: {what.replace('_', '-')} worst set "
                             f"{h['worst_set']} {h['worst_rate']:.1%} ({h['worst_ci'][0]:.0%}-{h['worst_ci'][1]:.0%}), "
                             f"macro mean over {h['n_sets']} sets {h['macro_mean']:.1%} "
                             f"({h['macro_ci'][0]:.0%}-{h['macro_ci'][1]:.0%})")
    return lines


def store_rows(variant: str, entry: dict) -> list[tuple]:
    """A scored panel's headline numbers as results-store rows of bench "panel:HALF" (all, choose, check): the worst
    set's rate (its name as the category) and the macro mean with its CI, for harmful and over-refusal: what a sweep
    chooses on one half and reports on the other."""
    summary, rows = entry.get("panel") or {}, []
    for half in ("all", "choose", "check"):
        for what in ("harmful", "over_refusal"):
            block = summary.get(half, {}) and summary[half].get(what)
            if not block:
                continue
            bench = f"panel:{half}"
            rows += [(variant, bench, block["worst_set"], f"worst_{what}", block["worst_rate"]),
                     (variant, bench, "", f"macro_{what}", block["macro_mean"]),
                     (variant, bench, "", f"macro_{what}_ci_low", block["macro_ci"][0]),
                     (variant, bench, "", f"macro_{what}_ci_high", block["macro_ci"][1])]
    return rows
