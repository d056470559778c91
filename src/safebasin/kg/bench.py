"""Scoring `--bench opendialkg` inside `safebasin eval`: a reply to each held-out turn that has a gold path.

The knowledge a row gets follows its model: a SURGE run retrieves its own subgraph; a `kg-prompt` run
uses its knowledge source (none / all / random / BM25 / gold); any other model gets none. The
counterfactual test swaps the tail entity of every fact shown with another entity that the same relation
reaches elsewhere in the KG, generates again, and counts replies that name a swapped entity (they follow
the facts they were given) against replies that still name an original one.

Every number is on a KG built from the annotated paths only: it has fewer distractors than the real
OpenDialKG graph, so retrieval here is easier than in the paper.
"""

import random

import torch
from pydantic import BaseModel, ConfigDict
from transformers import GenerationConfig

from ..generate import HFBackend
from ..ui import progress
from . import data as kg_data
from . import knowledge, metrics
from .methods import KGPrompt, Surge, SurgeModel, fit_context

DEFAULT_MAX_NEW_TOKENS = 40
PROMPT_BUDGET = 320  # tokens of prompt (knowledge + trimmed history) at evaluation
KG_NOTE = "KG = the union of the annotated path triples: far fewer distractors than the real OpenDialKG graph"


def knowledge_source(method) -> str:
    if isinstance(method, Surge):
        return "surge"
    if isinstance(method, KGPrompt) and method.cfg is not None:
        return method.settings(method.cfg).knowledge
    return "none"


def trimmed_rows(tok, rows: list[dict]) -> list[dict]:
    """Each turn with its history cut to the prompt budget, as every row's reply and retrieval see it."""
    return [r | {"context": fit_context(tok, r["context"], "", "", PROMPT_BUDGET) or r["context"][-1:]} for r in rows]


def reciprocal_ranks(rankings: list[list], rows: list[dict]) -> list[float]:
    return [metrics.reciprocal_rank([i for i, _ in rk], r["candidates"], r["gold"]) for rk, r in zip(rankings, rows)]


def choose(rows: list[dict], source: str, model, seed: int) -> tuple[list[list], list[list] | None]:
    """(triples per turn, candidate ranking per turn or None) for a knowledge source."""
    if source == "surge":
        got = model.retrieve(rows)
        return [g["triples"] for g in got], [g["ranking"] for g in got]
    triples = [knowledge.pick(r, source, seed) for r in rows]
    if source == "bm25":
        return triples, [knowledge.bm25_ranking(r) for r in rows]
    if source == "random":
        return triples, [[(i, 0.0) for i in knowledge.random_ranking(r, seed)] for r in rows]
    return triples, None


def swapped(triples: list, kg, rng: random.Random) -> list[list] | None:
    """Each fact's far end replaced by another entity the same relation (same direction) reaches in the KG (else
    any other entity). None when the KG has no entity besides the ones shown (a KG of one fact): the turn has no
    counterfactual and is left out of it, counted as `counterfactual_skipped`."""
    shown = {e for t in triples for e in (t[0], t[2])}
    out = []
    for a, r, t in triples:
        h_, rel, t_ = kg_data.canonical((a, r, t))
        pool = [e for e in (kg.by_relation.get(rel, []) if not r.startswith("~") else kg.heads_by_relation.get(rel, []))
                if e not in shown]
        pool = sorted(set(pool)) or [e for e in kg.entities if e not in shown]
        if not pool:
            return None
        out.append([a, r, rng.choice(pool)])
    return out


def generate(model, tok, rows: list[dict], triples: list[list], source: str, max_new_tokens: int, batch_size: int,
             desc: str, show_progress: bool) -> list[str]:
    """Greedy replies; SURGE's through inputs_embeds (its FiLM-perturbed entity tokens), the rest as text."""
    if source != "surge":
        chats = [knowledge.messages(r["context"], knowledge.facts_text(t)) for r, t in zip(rows, triples)]
        return HFBackend(model, tok, batch_size=batch_size, show_progress=show_progress).generate(chats, max_new_tokens, desc)
    lm = model.lm
    gen = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                           eos_token_id=lm.generation_config.eos_token_id or tok.eos_token_id)
    out: list[str] = []
    bar = progress(transient=True) if show_progress else None
    if bar:
        bar.start()
        task = bar.add_task(desc, total=len(rows), info="")
    try:
        for s in range(0, len(rows), batch_size):
            with torch.no_grad():
                embeds, mask, _, _ = model.inputs(tok, rows[s: s + batch_size],
                                                  [kg_data_facts(t) for t in triples[s: s + batch_size]], None)
                ids = lm.generate(inputs_embeds=embeds, attention_mask=mask, generation_config=gen)
            out += [t.strip() for t in tok.batch_decode(ids, skip_special_tokens=True)]
            if bar:
                bar.update(task, advance=len(rows[s: s + batch_size]))
    finally:
        if bar:
            bar.stop()
    return out


def kg_data_facts(triples: list) -> list[tuple]:
    return sorted({kg_data.canonical(t) for t in triples})


class KGSettings(BaseModel):
    """`eval` settings of the opendialkg benches (`--bench-arg counterfactual=false`): whether to run the
    counterfactual test (the facts shown swapped; costs a second generation pass)."""
    model_config = ConfigDict(extra="forbid")
    counterfactual: bool = True


KG_HEADLINE = (("knowledge F1", "knowledge_f1", "{:.3f}"), ("entity F1", "entity_f1", "{:.3f}"),
               ("MRR", "retrieval.mrr", "{:.3f}"), ("unigram F1", "unigram_f1", "{:.3f}"), ("ROUGE-L", "rougeL", "{:.3f}"),
               ("BLEU-4", "bleu-4", "{:.1f}"))


def evaluate_kg(model, tok, bench, *, label: str, batch_size: int = 16, max_new_tokens=None, method=None, seed: int = 0,
                show_progress: bool = True, counterfactual: bool = True, **_) -> tuple[dict, list[dict]]:
    kg, _parts = kg_data.load(bench.source)
    source = knowledge_source(method)
    if source == "surge" and not isinstance(model, SurgeModel):
        source = "none"
    rows = trimmed_rows(tok, bench.rows)
    triples, rankings = choose(rows, source, model, seed)
    max_new = max_new_tokens or DEFAULT_MAX_NEW_TOKENS
    responses = generate(model, tok, rows, triples, source, max_new, batch_size, f"{label}: {bench.name}", show_progress)
    refs = [r["response"] for r in rows]
    tails = [kg_data.gold_tails(r) for r in rows]
    per = {"knowledge_f1": [metrics.knowledge_f1(h, t) for h, t in zip(responses, tails)],
           "entity_f1": [metrics.entity_f1(kg.mentions(h), t) for h, t in zip(responses, tails)],
           "unigram_f1": [metrics.unigram_f1(h, r) for h, r in zip(responses, refs)],
           "rougeL": [metrics.rouge_l(h, r) for h, r in zip(responses, refs)]}
    result = {"kind": "kg", "source": bench.source, "n": len(rows), "knowledge": source, "note": KG_NOTE,
              **metrics.bleu_scores(responses, refs)}
    for name, values in per.items():
        result[name] = sum(values) / len(values)
        result[f"{name}_ci"] = list(metrics.bootstrap_mean_ci(values, seed=seed))
    rrs = None
    if rankings is not None:
        rrs = reciprocal_ranks(rankings, rows)
        result["retrieval"] = metrics.retrieval_summary(rrs, seed=seed)
    result["gold_in_candidates"] = sum(metrics.reciprocal_rank(list(range(len(r["candidates"]))), r["candidates"], r["gold"]) > 0
                                       for r in rows) / len(rows)
    cf_responses, cf_triples = None, None
    if counterfactual and source != "none":
        rng = random.Random(seed)
        cf_triples = [swapped(t, kg, rng) if t else [] for t in triples]
        no_swap = sum(t is None for t in cf_triples)
        cf_triples = [[] if t is None else t for t in cf_triples]
        cf_responses = generate(model, tok, rows, cf_triples, source, max_new, batch_size,
                                f"{label}: {bench.name} (swapped facts)", show_progress)
        shown = [i for i, t in enumerate(cf_triples) if t]
        if no_swap:
            result["counterfactual_skipped"] = no_swap
        follows = [float(metrics.mentions(cf_responses[i], [t[2] for t in cf_triples[i]])) for i in shown]
        keeps = [float(metrics.mentions(cf_responses[i], [t[2] for t in triples[i]])) for i in shown]
        factual = [float(metrics.mentions(responses[i], [t[2] for t in triples[i]])) for i in shown]
        if shown:
            result["counterfactual"] = {
                "n": len(shown), "names_a_shown_fact": sum(factual) / len(shown),
                "follows_swapped": sum(follows) / len(shown), "follows_swapped_ci": list(metrics.bootstrap_mean_ci(follows, seed=seed)),
                "keeps_original": sum(keeps) / len(shown)}
    out_rows = []
    for i, r in enumerate(rows):
        row = {"benchmark": bench.name, "index": i, "context": r["context"], "reference": r["response"], "gold": r["gold"],
               "knowledge": triples[i], "response": responses[i], **{k: v[i] for k, v in per.items()}}
        if rankings is not None:
            score = dict(rankings[i])
            row["knowledge_scores"] = [round(score.get(r["candidates"].index(t), 0.0), 4) if t in r["candidates"] else None
                                       for t in triples[i]]
            row["reciprocal_rank"] = rrs[i]
        if cf_responses is not None:
            row["swapped_knowledge"], row["swapped_response"] = cf_triples[i], cf_responses[i]
        out_rows.append(row)
    return result, out_rows
