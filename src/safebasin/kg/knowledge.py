"""What knowledge a turn gets, and how it is put before the dialogue history.

Every row of the KG benchmark uses the same prompt: the last context messages, with "(Facts you can use:
...)" put before the message the reply answers. The rows differ only in which triples fill it: none; all candidates (linearised
and cut to a character budget); 3 random candidates; BM25's top 3 (`rank_bm25`, the context as the
query); the gold path (an oracle); or SURGE's retriever (`surge.py`), whose invariant encoding writes
only the sorted, unique entities and carries the relations in a FiLM perturbation instead.
"""

import random
import re

from .data import canonical, linearise

SOURCES = ("none", "all", "random", "bm25", "gold")
N_TRIPLES = 3  # facts per turn for random, BM25 and SURGE (the paper's n)
ALL_FACTS_CHARS = 600  # the all-candidates row's budget (~150 tokens): the rest is cut, as a real prompt would be


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def bm25_ranking(example: dict) -> list[tuple[int, float]]:
    """(candidate index, BM25 score) best first, the whole context as the query; ties keep candidate order."""
    from rank_bm25 import BM25Okapi

    cands = example["candidates"]
    if not cands:
        return []
    docs = [_words(linearise(t)) or ["_"] for t in cands]
    query = _words(" ".join(m["content"] for m in example["context"]))
    scores = BM25Okapi(docs).get_scores(query) if query else [0.0] * len(docs)
    return sorted(((i, float(s)) for i, s in enumerate(scores)), key=lambda x: (-x[1], x[0]))


def random_ranking(example: dict, seed: int) -> list[int]:
    order = list(range(len(example["candidates"])))
    random.Random(f"{seed}:{example['dialogue']}:{example['turn']}").shuffle(order)
    return order


def pick(example: dict, source: str, seed: int = 0) -> list[list[str]]:
    """The triples a non-SURGE row puts in the prompt."""
    cands = example["candidates"]
    if source == "none":
        return []
    if source == "gold":
        return [list(t) for t in example["gold"] or ()]
    if source == "all":
        return [list(t) for t in cands]
    if source == "random":
        return [cands[i] for i in random_ranking(example, seed)[:N_TRIPLES]]
    if source == "bm25":
        return [cands[i] for i, _ in bm25_ranking(example)[:N_TRIPLES]]
    raise ValueError(f"unknown knowledge source {source!r}: use one of {', '.join(SOURCES)}")


def facts_text(triples: list) -> str:
    """Linearised facts, unique, in the order given, cut at ALL_FACTS_CHARS at a fact boundary."""
    out, seen, size = [], set(), 0
    for t in triples:
        line = linearise(t)
        if line in seen:
            continue
        if size + len(line) > ALL_FACTS_CHARS and out:
            break
        seen.add(line)
        out.append(line)
        size += len(line) + 2
    return "; ".join(out)


def entities_of(triples: list) -> list[str]:
    """The subgraph's sorted, unique entities: the same list whatever the triples' order or direction."""
    return sorted({e for t in triples for e in (canonical(t)[0], canonical(t)[2])})


PREFIX = "(Facts you can use: "


def messages(context: list[dict], knowledge: str) -> list[dict]:
    """The generator's prompt: the context, the knowledge (if any) put before the message the reply answers.

    Not a system message: zero-shot on 48 held-out turns given the gold path, SmolLM2-135M-Instruct named a
    gold tail entity in 31% of replies with "(Facts you can use: ...)" before the last message, 23% with
    "Knowledge: ..." there, and 6% with "Knowledge: ..." as a system message (docs/kg.md)."""
    out = [dict(m) for m in context]
    if knowledge and out:
        out[-1]["content"] = f"{PREFIX}{knowledge})\n{out[-1]['content']}"
    return out
