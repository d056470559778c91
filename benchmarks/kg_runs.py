"""Reading finished `safebasin demo kg` runs for the KG benchmarks that compare them (kg_ablations.py,
kg_retriever_lr.py, kg_goal.py); one reader, so each reports a row the same way."""

import json
from pathlib import Path


def read_run(run: Path, bench: str = "opendialkg-validation") -> tuple[dict, list[dict]]:
    """A finished demo run's summary and per-turn generations; it must be scored on `bench`."""
    if not (run / "summary.json").is_file():
        raise SystemExit(f"{run}: no summary.json; run the demo named in this benchmark's docstring first")
    s = json.loads((run / "summary.json").read_text())
    if s["benchmark"] != bench:
        raise SystemExit(f"{run}: scored on {s['benchmark']}, not on {bench}")
    return s, [json.loads(line) for line in (run / "generations.jsonl").read_text().splitlines()]


def row_numbers(r: dict, compute: dict) -> dict:
    """One row of a run's summary, rounded as the results JSON keeps it."""
    ret, cf = r.get("retrieval") or {}, r.get("counterfactual") or {}
    return {"knowledge_f1": round(r["knowledge_f1"], 4), "knowledge_f1_ci": [round(x, 4) for x in r["knowledge_f1_ci"]],
            "entity_f1": round(r["entity_f1"], 4), "unigram_f1": round(r["unigram_f1"], 4),
            "mrr": round(ret["mrr"], 4) if ret else None,
            "mrr_ci": [round(x, 4) for x in ret["mrr_ci"]] if ret else None,
            "hits@1": ret.get("hits@1"), "hits@3": ret.get("hits@3"),
            "follows_swapped": cf.get("follows_swapped"), "train_seconds": compute["seconds"]}
