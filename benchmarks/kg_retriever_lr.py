"""Choosing SURGE's `module_lr_scale` on the validation split (issue #17): reads the demo runs of
configs/kg/choose-retriever-lr/scale-*.yaml (SURGE at 60 steps, scored on the 400 validation turns with a gold
path) and writes benchmarks/results/kg_retriever_lr.json; generates nothing itself, so it takes seconds.

    for v in 20 0.01; do .venv/bin/safebasin demo kg --config configs/kg/choose-retriever-lr/scale-$v.yaml \\
        --output-dir runs/kg-choose-retriever-lr/scale-$v; done
    .venv/bin/python benchmarks/kg_retriever_lr.py [--runs runs/kg-choose-retriever-lr]

The rule, fixed in the configs before any run: the scale with the highest validation knowledge F1 wins;
retrieval MRR breaks a tie within 0.005. Beside it: every scale against the old default (20) and against BM25's
ranking of the same turns (BM25 needs no training to rank, so its reciprocal ranks are computed here), paired
over the turns (stats.paired_bootstrap, 95%).
"""

import argparse
import datetime
import json
from pathlib import Path

from kg_runs import read_run, row_numbers  # benchmarks/kg_runs.py, beside this file
from safebasin import atomic, report
from safebasin.evaluate import load_bench
from safebasin.kg.bench import choose, reciprocal_ranks, trimmed_rows
from safebasin.models import load_tokenizer
from safebasin.stats import paired_bootstrap

RESULTS = Path(__file__).parent / "results" / "kg_retriever_lr.json"
OLD_DEFAULT, TIE = 20.0, 0.005


def bm25_reciprocal_ranks(bench, tokenizer_dir: Path) -> list[float]:
    """BM25's reciprocal rank of the gold facts per turn, on the history as the bench trims it."""
    rows = trimmed_rows(load_tokenizer(str(tokenizer_dir)), bench.rows)
    return reciprocal_ranks(choose(rows, "bm25", None, 0)[1], rows)


def _diff(a: list[float], b: list[float]) -> dict:
    return {k: round(v, 4) for k, v in paired_bootstrap(a, b, seed=0).items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", default="runs/kg-choose-retriever-lr")
    a = ap.parse_args()
    per, rows = {}, {}
    for run in sorted(Path(a.runs).glob("scale-*")):
        if not (run / "summary.json").is_file():
            continue
        s, gens = read_run(run)
        scale = float(s["settings"]["surge"].get("module_lr_scale", OLD_DEFAULT))
        gens = sorted((g for g in gens if g["model"] == "SURGE"), key=lambda g: g["index"])
        per[scale] = {k: [g[k] for g in gens] for k in ("knowledge_f1", "reciprocal_rank")}
        rows[scale] = {"run": str(run)} | row_numbers(s["rows"]["SURGE"], s["compute"]["SURGE"])
    if not rows:
        raise SystemExit(f"{a.runs}: no finished scale-* demo run (see this file's docstring)")
    any_run = Path(next(iter(rows.values()))["run"])
    bench = load_bench("opendialkg-validation", None, limit=len(next(iter(per.values()))["reciprocal_rank"]))
    bm25 = bm25_reciprocal_ranks(bench, any_run / "surge" / "model")
    for scale, r in rows.items():
        r["vs_bm25_reciprocal_rank"] = _diff(per[scale]["reciprocal_rank"], bm25)
        if scale != OLD_DEFAULT and OLD_DEFAULT in per:
            r["vs_old_default"] = {k: _diff(per[scale][k], per[OLD_DEFAULT][k]) for k in ("knowledge_f1", "reciprocal_rank")}
    best_f1 = max(r["knowledge_f1"] for r in rows.values())
    tied = [s for s, r in rows.items() if r["knowledge_f1"] >= best_f1 - TIE]
    chosen = max(tied, key=lambda s: rows[s]["mrr"])
    result = {"benchmark": "opendialkg-validation (SURGE at 60 steps, k=2, 400 turns with a gold path)",
              "rule": f"highest validation knowledge F1; MRR breaks a tie within {TIE}",
              "bm25_mrr": round(sum(bm25) / len(bm25), 4), "scales": {str(s): rows[s] for s in sorted(rows)},
              "chosen_module_lr_scale": chosen, "cpu": report.cpu_name(),
              "date": datetime.date.today().isoformat()}
    atomic.write_json(RESULTS, result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
