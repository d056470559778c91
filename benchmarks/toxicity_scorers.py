"""Both offline toxicity scorers against the stored Perspective scores, on the RTP validation rows (30%,
never seen by the minilm-rtp fit), plus their speed and why minilm-rtp's head is a soft-label logistic
regression (grouped CV on the fit rows only). Fits once if the scorer cache is empty.

    .venv/bin/python benchmarks/toxicity_scorers.py [--data-dir DIR]
"""

import argparse
import datetime
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from safebasin import atomic, report
from safebasin.detox import scorers

HERE = Path(__file__).resolve().parent


def seconds_per_1000(scorer, texts: list[str], repeats: int) -> dict:
    scorer.score(texts[:8])  # loads the model: not counted
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        scorer.score(texts)
        runs.append((time.perf_counter() - t0) / len(texts) * 1000)
    return {"median": statistics.median(runs), "min": min(runs), "max": max(runs), "repeats": repeats}


def head_families(scorer: scorers.MiniLMScorer) -> dict:
    """Grouped 5-fold CV on the fit rows for three heads, each at its best setting: the evidence for the choice."""
    from scipy.stats import spearmanr
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold

    fit_rows, _ = scorers.split_rows(scorers.rtp_rows(scorer.paths), scorer.seed)
    texts, y = scorers._flat(fit_rows)
    y = np.asarray(y)
    groups = np.array([i for i, pairs in enumerate(fit_rows) for _ in pairs])
    X = scorer.embed(texts)
    heads = {
        "soft-label logistic regression (C)": lambda c: lambda a: scorer._soft_logreg(X[a], y[a], c).decision_function,
        "logistic regression on toxicity>=0.5, balanced class weights (C)":
            lambda c: lambda a: LogisticRegression(C=c, class_weight="balanced", max_iter=5000).fit(X[a], y[a] >= 0.5).decision_function,
        "ridge on the toxicity score (alpha)": lambda c: lambda a: Ridge(alpha=c).fit(X[a], y[a]).predict,
    }
    grids = {0: [0.3, 1.0, 3.0, 10.0, 30.0], 1: [0.3, 1.0, 3.0, 10.0, 30.0], 2: [0.1, 0.3, 1.0, 3.0, 10.0]}
    out = {}
    for k, (name, make) in enumerate(heads.items()):
        table = {}
        for c in grids[k]:
            rho, auc = [], []
            for a, b in GroupKFold(5).split(X, y, groups):
                s = make(c)(a)(X[b])
                rho.append(float(spearmanr(s, y[b]).statistic))
                auc.append(float(roc_auc_score(y[b] >= 0.5, s)))
            table[str(c)] = {"spearman": float(np.mean(rho)), "auroc": float(np.mean(auc))}
        best = max(table, key=lambda c: table[c]["auroc"])
        out[name] = {"best": best, **table[best], "grid": table}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(2)

    t0 = time.perf_counter()
    fits_before = scorers.fit_count
    minilm = scorers.MiniLMScorer(args.data_dir)
    construct = time.perf_counter() - t0
    result = {"benchmark": "toxicity_scorers", "date": datetime.date.today().isoformat(), "cpu": report.cpu_name(),
              "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
              "note": "2 shared CPU cores: other jobs ran at the same time, so the speeds are rough",
              "split": {"seed": scorers.SEED, "fit_fraction": scorers.FIT_FRACTION, "toxic_at": scorers.TOXIC_AT},
              "scorers": {}}
    texts, _ = scorers.validation_texts(args.data_dir)
    for scorer in (minilm, scorers.ProfanityCheckScorer()):
        numbers = scorers.validate(scorer, args.data_dir)
        numbers["seconds_per_1000_texts"] = seconds_per_1000(scorer, texts, args.repeats)
        result["scorers"][scorer.name] = numbers
    result["scorers"]["minilm-rtp"]["fit"] = {
        **{k: minilm.fit_info[k] for k in ("head", "C", "cv", "n_fit_rows", "n_fit_texts", "data_sha256")},
        "fitted_now": scorers.fit_count > fits_before, "construct_seconds": construct}
    result["head_families_cv_on_fit_rows"] = head_families(minilm)
    best = max(result["scorers"], key=lambda k: result["scorers"][k]["auroc"])
    result["default_by_auroc"] = best
    result["default_in_code"] = scorers.DEFAULT_SCORER
    if best != scorers.DEFAULT_SCORER:
        print(f"NOTE: {best} has the better validation AUROC but DEFAULT_SCORER is {scorers.DEFAULT_SCORER}")
    atomic.write_json(HERE / "results" / "toxicity_scorers.json", result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
