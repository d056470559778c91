"""SURGE's goal on the held-out test turns (issue #17), read from one finished demo run: the knowledge-F1 order
no knowledge < random < BM25 / all facts ≤ SURGE ≤ gold, and SURGE's retrieval MRR well above BM25's. Each step
is a paired bootstrap over the same turns (stats.paired_differences, 95%); writes benchmarks/results/kg_goal.json
and generates nothing itself.

    .venv/bin/safebasin demo kg --config configs/kg/main-rows-60-steps.yaml --output-dir runs/kg-60-steps
    .venv/bin/python benchmarks/kg_goal.py [--run runs/kg-60-steps]

A run of some of the rows (configs/kg/goal-rows-60-steps.yaml: the three the goal was missed between) reports
the steps it has. The verdict rule: "<" is met when the upper row is above with a CI that excludes 0; "≤" is
met unless the upper row is below with a CI that excludes 0 (level counts); "MRR well above" needs a CI above 0.
"""

import argparse
import datetime
import json
from pathlib import Path

from kg_runs import read_run, row_numbers  # benchmarks/kg_runs.py, beside this file
from safebasin import atomic, report
from safebasin.stats import paired_differences

RESULTS = Path(__file__).parent / "results" / "kg_goal.json"
STEPS = (("random 3", "<", "no knowledge"), ("BM25 3", "<", "random 3"), ("SURGE", "≥", "BM25 3"),
         ("SURGE", "≥", "all facts"), ("gold path", "≥", "SURGE"))  # (upper row, relation, lower row) of the goal


def paired(generations: list[dict], upper: str, lower: str, key: str) -> dict:
    pair = [g for g in generations if g["model"] in (upper, lower)]
    return {m: round(v, 4) for m, v in paired_differences(pair, upper, (key,), seed=0)[lower][key].items()}


def verdict(diff: dict, relation: str) -> bool:
    return diff["low"] > 0 if relation in ("<", "well above") else diff["high"] >= 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="runs/kg-60-steps")
    a = ap.parse_args()
    s, generations = read_run(Path(a.run), bench="opendialkg")
    rows = {name: row_numbers(r, s["compute"][name]) for name, r in s["rows"].items()}
    steps = []
    for upper, relation, lower in STEPS:
        if upper in rows and lower in rows:
            d = paired(generations, upper, lower, "knowledge_f1")
            steps.append({"step": f"{lower} {'<' if relation == '<' else '≤'} {upper}", "knowledge_f1_diff": d,
                          "met": verdict(d, relation)})
    if "SURGE" in rows and "BM25 3" in rows:
        d = paired(generations, "SURGE", "BM25 3", "reciprocal_rank")
        steps.append({"step": "SURGE's MRR well above BM25's", "reciprocal_rank_diff": d, "met": verdict(d, "well above")})
    if not steps:
        raise SystemExit(f"{a.run}: none of the goal's pairs of rows ({', '.join(sorted({r for st in STEPS for r in st[::2]}))})")
    result = {"benchmark": f"opendialkg test turns with a gold path ({s['settings']['turns']} asked, "
                           f"{s['settings']['steps']} steps, k={s['settings']['k_subgraphs']}); the KG is the union of "
                           "the annotated paths, with far fewer distractors than the real one",
              "run": a.run, "settings": s["settings"], "rows": rows, "goal": steps,
              "rule": "'<': the upper row above, CI excluding 0; '≤': not below with a CI excluding 0; "
                      "MRR well above: CI excluding 0",
              "cpu": report.cpu_name(), "date": datetime.date.today().isoformat()}
    atomic.write_json(RESULTS, result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
