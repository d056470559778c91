"""KG-grounded dialogue metrics: is the reply about the right facts, and did the retriever find them?

Text overlap (BLEU, ROUGE-L, unigram F1) is the dialogue system's (`dialogue/metrics.py`) and the bootstraps
are `safebasin.stats`', so both systems score replies the same way. Added here:
- knowledge F1: unigram F1 between the reply and the gold path's tail entities (the words a grounded
  reply should contain);
- entity F1: set F1 between the KG entities string-matched in the reply and those tail entities;
- retrieval MRR and Hits@k of a candidate ranking against the gold triples (compared as facts, so a
  triple written in either direction counts).
"""

import re

from ..dialogue.metrics import bleu_scores, rouge_l, unigram_f1  # noqa: F401
from ..stats import bootstrap_mean_ci
from .data import canonical


def knowledge_f1(response: str, tails: list[str]) -> float:
    return unigram_f1(response, " ".join(tails)) if tails else 0.0


def entity_f1(response_entities: set[str], tails: list[str]) -> float:
    """Set F1 of the reply's entities against the gold tails; 0 when the reply names none."""
    gold = set(tails)
    hit = len(response_entities & gold)
    if not hit:
        return 0.0
    p, r = hit / len(response_entities), hit / len(gold)
    return 2 * p * r / (p + r)


def _words(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9']+", text.lower()))


def mentions(text: str, names) -> bool:
    """Does `text` name any of `names` (case-insensitive, as whole words)?"""
    padded = f" {_words(text)} "
    return any(f" {_words(n)} " in padded for n in names if _words(n))


def reciprocal_rank(ranking: list[int], candidates: list, gold: list) -> float:
    """1/rank of the first gold fact in a ranking of candidate indexes (0 when no gold fact is ranked)."""
    facts = {canonical(t) for t in gold}
    for rank, i in enumerate(ranking, 1):
        if canonical(candidates[i]) in facts:
            return 1.0 / rank
    return 0.0


def retrieval_summary(rrs: list[float], seed: int = 0) -> dict:
    """MRR (with a bootstrap CI) and Hits@1/3 over turns; a turn whose gold is not among its candidates counts 0."""
    n = len(rrs)
    return {"mrr": sum(rrs) / n, "mrr_ci": list(bootstrap_mean_ci(rrs, seed=seed)), "hits@1": sum(r >= 1.0 for r in rrs) / n,
            "hits@3": sum(r >= 1 / 3 for r in rrs) / n, "n": n}
