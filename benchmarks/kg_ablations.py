"""SURGE's ablations at 60 steps on the validation split (issue #17): which part of SURGE helps.

Reads the demo runs of configs/kg/ablations-60-steps/*.yaml (one part off, or one added, each scored on the 400
validation turns with a gold path) and the full SURGE of configs/kg/choose-retriever-lr/scale-0.01.yaml (the default,
same turns, same seed, same training rows), pairs them turn by turn (stats.paired_differences: SURGE − ablation,
paired bootstrap, 95%) and writes benchmarks/results/kg_ablations.json; generates nothing itself.

    for a in no-contrastive no-invariant no-retriever plus-facts-as-text; do .venv/bin/safebasin demo kg \\
        --config configs/kg/ablations-60-steps/$a.yaml --output-dir runs/kg-ablations-60-steps/$a; done
    .venv/bin/python benchmarks/kg_ablations.py [--runs runs/kg-ablations-60-steps]
        [--reference runs/kg-choose-retriever-lr/scale-0.01]
"""

import argparse
import datetime
import json
from pathlib import Path

from kg_runs import read_run, row_numbers  # benchmarks/kg_runs.py, beside this file
from safebasin import atomic, report
from safebasin.stats import paired_differences

RESULTS = Path(__file__).parent / "results" / "kg_ablations.json"
KEYS = ("knowledge_f1", "entity_f1", "unigram_f1", "reciprocal_rank")
# besides SURGE − each row: FiLM on the text facts against the same text without it (+ facts as text − that row)
EXTRA_PAIRS = (("SURGE + facts as text", "facts_as_text_minus_this"),)
PAIRED_SETTINGS = ("seed", "turns", "steps", "batch_size", "train_rows", "k_subgraphs", "lr")  # must match the reference's


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", default="runs/kg-ablations-60-steps")
    ap.add_argument("--reference", default="runs/kg-choose-retriever-lr/scale-0.01")
    a = ap.parse_args()
    ref_summary, ref_gens = read_run(Path(a.reference))
    rows = {"SURGE": row_numbers(ref_summary["rows"]["SURGE"], ref_summary["compute"]["SURGE"]) | {"run": a.reference}}
    generations = [g for g in ref_gens if g["model"] == "SURGE"]
    for run in sorted(p for p in Path(a.runs).iterdir() if p.is_dir()):
        if not (run / "summary.json").is_file():
            continue
        s, gens = read_run(run)
        differ = [k for k in PAIRED_SETTINGS if s["settings"][k] != ref_summary["settings"][k]]
        if differ:
            raise SystemExit(f"{run}: {', '.join(differ)} differ from {a.reference}'s; the pairing would be meaningless")
        for name, r in s["rows"].items():
            rows[name] = row_numbers(r, s["compute"][name]) | {"run": str(run)}
        generations += gens
    if len(rows) == 1:
        raise SystemExit(f"{a.runs}: no finished demo run (see this file's docstring)")
    for reference, key in (("SURGE", "surge_minus_this"), *EXTRA_PAIRS):
        if reference not in rows:
            continue
        for name, d in paired_differences(generations, reference, KEYS, seed=0).items():
            rows[name][key] = {k: {m: round(v, 4) for m, v in x.items()} for k, x in d.items()}
    result = {"benchmark": "opendialkg-validation (60 steps, k=2, 400 turns with a gold path; the KG is the union "
                           "of the annotated paths, with far fewer distractors than the real one)",
              "rows": rows, "cpu": report.cpu_name(), "date": datetime.date.today().isoformat()}
    atomic.write_json(RESULTS, result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
