"""Metrics for dialogue response generation on DailyDialog (Kwak, Kim and Hwang, arXiv 2311.07006).

Lexical overlap with the reference response (corpus BLEU-1/2/4, per-item sentence BLEU, ROUGE-L,
unigram F1), diversity (distinct-1/2), the perplexity of the reference response under a chat model,
controllability (a dialogue-act classifier that checks whether a generated response carries out
the act its instruction asked for, and agreement of predicted act labels with gold ones). The
bootstraps that tell two systems apart on the same items are `safebasin.stats`' (the unit of
resampling is the test item: one context and its reference response).

All functions are pure and deterministic (the classifier takes a fixed seed), so a report can be
re-made byte for byte.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from ..evaluate import summed_target_nll
from ..models import render_chat
from ..stats import bootstrap_mean_ci, paired_bootstrap  # kept here: dialogue/bench.py scores with metrics.*

__all__ = [
    "bleu_n", "bleu_scores", "sentence_bleu", "CorpusBLEU", "rouge_l", "unigram_f1", "normalize_answer",
    "distinct", "response_perplexity", "ActClassifier", "label_agreement", "paired_bootstrap",
    "bootstrap_mean_ci",
]


# ----------------------------------------------------------------------------- BLEU


@lru_cache(maxsize=None)
def _bleu(n: int):
    """One sacrebleu BLEU object per order (they hold no per-corpus state)."""
    from sacrebleu.metrics import BLEU

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return BLEU(max_ngram_order=n, effective_order=True)


def _check_pairs(hypotheses: Sequence[str], references: Sequence[str]) -> None:
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    if len(hypotheses) == 0:
        raise ValueError("no hypotheses to score")


def bleu_n(hypotheses: Sequence[str], references: Sequence[str], n: int) -> float:
    """Corpus BLEU-n (0-100) with one reference per hypothesis, by sacrebleu (13a tokenizer, case
    kept, 'exp' smoothing, effective order).

    Corpus-level: n-gram matches and lengths are pooled over all items before the precisions and
    the brevity penalty are taken, so it is not the mean of sentence BLEUs. sacrebleu makes the
    number comparable across papers (it fixes the tokenization); effective_order stops at the
    highest order any hypothesis reaches, so a corpus of one-word replies does not get BLEU-4 = 0
    just because it has no 4-grams.
    """
    _check_pairs(hypotheses, references)
    return float(_bleu(n).corpus_score(list(hypotheses), [list(references)]).score)


def bleu_scores(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """{"bleu-1", "bleu-2", "bleu-4"}: the corpus BLEU orders reported for DailyDialog."""
    return {f"bleu-{n}": bleu_n(hypotheses, references, n) for n in (1, 2, 4)}


def sentence_bleu(hypothesis: str, reference: str, n: int = 2) -> float:
    """Sentence BLEU-n (0-100) of one hypothesis against its reference (sacrebleu, 'exp' smoothing,
    effective order). Per-item scores, for bootstrap CIs and paired tests; their mean is not
    corpus BLEU."""
    return float(_bleu(n).sentence_score(hypothesis, [reference]).score)


class CorpusBLEU:
    """Corpus BLEU-n as a callable `(hypotheses, references) -> float`, equal to `bleu_n`, that can
    also give each item's sufficient statistics (n-gram matches and totals, lengths).

    Corpus BLEU is a function of the summed statistics, so `stats.paired_bootstrap_corpus` uses
    `item_stats` + `score_from_stats` to recompute it on each resample by a weighted sum instead of
    re-tokenizing the whole corpus 2 x n_boot times (same numbers, much faster).
    """

    def __init__(self, n: int):
        self.n = n
        self._metric = _bleu(n)

    def __repr__(self) -> str:
        return f"CorpusBLEU({self.n})"

    def __call__(self, hypotheses: Sequence[str], references: Sequence[str]) -> float:
        return bleu_n(hypotheses, references, self.n)

    def item_stats(self, hypotheses: Sequence[str], references: Sequence[str]) -> np.ndarray:
        """[items, 2n + 2] int array: matches per order, totals per order, hyp length, ref length."""
        _check_pairs(hypotheses, references)
        rows = []
        for h, r in zip(hypotheses, references):
            s = self._metric.sentence_score(h, [r])  # exp smoothing does not alter counts/totals
            rows.append([*s.counts, *s.totals, s.sys_len, s.ref_len])
        return np.asarray(rows, dtype=np.int64).reshape(len(rows), 2 * self.n + 2)

    def score_from_stats(self, stats: np.ndarray) -> float:
        """Corpus BLEU from summed statistics (a row of `item_stats` summed over items)."""
        from sacrebleu.metrics import BLEU

        n = self.n
        s = [int(v) for v in stats]
        return float(BLEU.compute_bleu(s[:n], s[n:2 * n], s[2 * n], s[2 * n + 1], smooth_method=self._metric.smooth_method,
                                       smooth_value=self._metric.smooth_value, effective_order=True,
                                       max_ngram_order=n).score)


# ----------------------------------------------------------------------------- ROUGE-L, F1, distinct


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(hyp: str, ref: str) -> float:
    """ROUGE-L F-measure (0-1) of one response against its reference (rouge-score, Porter stemmer):
    the longest common subsequence rewards words in the reference's order without asking for
    contiguous n-grams. rouge-score lowercases and keeps only [a-z0-9] tokens; 0.0 when either side
    has no such token."""
    return float(_rouge_scorer().score(ref, hyp)["rougeL"].fmeasure)


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = re.compile("[" + re.escape(string.punctuation) + "]")


def normalize_answer(text: str) -> str:
    """ParlAI's normalisation for F1: lowercase, ASCII punctuation -> space, drop a/an/the, squeeze
    whitespace. (SQuAD deletes punctuation instead, joining "don't" into "dont"; ParlAI, the usual
    reference for dialogue F1, splits it.)"""
    text = _PUNCT.sub(" ", text.lower())
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def unigram_f1(hyp: str, ref: str) -> float:
    """Unigram F1 (0-1) of one response against its reference, as in ParlAI/SQuAD: multiset overlap
    of the normalised whitespace tokens (`normalize_answer`). It credits content words regardless of
    order, which suits short open-ended replies. If either side is empty after normalisation the
    score is 0, unless both are (then 1: nothing asked, nothing said)."""
    h, r = normalize_answer(hyp).split(), normalize_answer(ref).split()
    if not h or not r:
        return float(not h and not r)
    same = sum((Counter(h) & Counter(r)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(h), same / len(r)
    return 2 * precision * recall / (precision + recall)


def distinct(texts: Sequence[str], n: int) -> float:
    """Distinct-n (Li et al. 2016): distinct n-grams / all n-grams over the whole corpus of
    responses (whitespace tokens, case kept; n-grams never cross responses). Low values flag the
    generic, repeated replies ("I don't know") dialogue models drift to. 0.0 if there is no n-gram."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    seen: set[tuple[str, ...]] = set()
    total = 0
    for text in texts:
        words = text.split()
        grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else 0.0


# ----------------------------------------------------------------------------- perplexity


def response_perplexity(model, tok, contexts: Sequence[Sequence[dict]], responses: Sequence[str],
                        batch_size: int = 8) -> dict:
    """Perplexity of each reference response given its dialogue context under a chat model, pooled
    over pairs: exp(total NLL of response tokens / number of response tokens).

    It scores how well the model predicts what a human said next (no sampling involved). The context
    (a list of {"role", "content"} messages) is rendered with the tokenizer's chat template and the
    generation prompt, tokenized without extra special tokens (the template adds its own); the
    target is the response's tokens plus EOS (ending the turn is part of the response). The two id
    lists are concatenated rather than tokenizing the joined text, so the boundary is exact; prompt
    positions get label -100. An empty response is scored on its EOS alone.

    Batches are sorted by length, right-padded with an attention mask and run under no_grad in eval
    mode (restored afterwards); log-softmax in float32, so the result does not depend on batch_size
    beyond float rounding.

    Returns {"perplexity", "tokens", "n"} (n = pairs scored); perplexity is NaN when n is 0.
    """
    if len(contexts) != len(responses):
        raise ValueError(f"{len(contexts)} contexts but {len(responses)} responses")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    eos = tok.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no EOS token to end the response with")

    pairs: list[tuple[list[int], int]] = []  # (ids, number of prompt ids)
    for messages, response in zip(contexts, responses):
        prompt = render_chat(tok, list(messages), add_generation_prompt=True)
        p_ids = list(tok(prompt, add_special_tokens=False)["input_ids"])
        if not p_ids:
            raise ValueError("the chat template rendered an empty prompt; the first response token has no context")
        r_ids = list(tok(response, add_special_tokens=False)["input_ids"]) if response else []
        pairs.append((p_ids + r_ids + [eos], len(p_ids)))

    total_nll, total_tokens = summed_target_nll(model, pairs, batch_size)
    ppl = math.exp(total_nll / total_tokens) if total_tokens else float("nan")
    return {"perplexity": ppl, "tokens": total_tokens, "n": len(pairs)}


# ----------------------------------------------------------------------------- dialogue acts

ACT_NAMES = {1: "inform", 2: "question", 3: "directive", 4: "commissive"}  # DailyDialog's act ids

# Keeps one-letter words ("I", "a") and the sentence punctuation scikit-learn's default pattern
# drops: "?" is the strongest cue for a question, "!" for a directive.
_ACT_TOKEN_PATTERN = r"(?u)\b\w+\b|[?!]"


class ActClassifier:
    """Dialogue-act classifier (1 inform, 2 question, 3 directive, 4 commissive) from response text:
    TF-IDF of word uni+bigrams (min_df=2, sublinear tf, "?"/"!" kept as tokens) + logistic
    regression, trained on DailyDialog's training turns.

    It scores controllability: a generated response whose instruction asked for act k should be
    classified as k. C=10 was chosen by one check, train turns (87,159) -> validation turns (8,069):
    accuracy / macro-F1 0.781 / 0.702 at C=1, 0.785 / 0.716 at C=3, 0.783 / 0.723 at C=10, 0.775 /
    0.721 at C=30 (majority baseline 0.387); the largest macro-F1 wins, as the rarer directive and
    commissive acts matter for controllability. scikit-learn's default token pattern (no "?", no
    one-letter words) costs 2-3 points of accuracy. Deterministic (lbfgs, random_state=0); fitting
    on the full training split takes about a minute on 2 CPU cores.
    """

    def __init__(self, C: float = 10.0):
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline

        self.C = C
        self.pipeline = make_pipeline(
            TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, token_pattern=_ACT_TOKEN_PATTERN),
            LogisticRegression(max_iter=1000, C=C, class_weight=None, random_state=0),
        )
        self.classes_: list[int] | None = None
        self._majority: int | None = None

    def fit(self, texts: Sequence[str], acts: Sequence[int]) -> "ActClassifier":
        """Train on (response text, act id) pairs; returns self."""
        if len(texts) != len(acts):
            raise ValueError(f"{len(texts)} texts but {len(acts)} act labels")
        if len(set(acts)) < 2:
            raise ValueError("need at least two distinct acts to train a classifier")
        acts = [int(a) for a in acts]
        self.pipeline.fit(list(texts), acts)
        self.classes_ = sorted(set(acts))
        counts = Counter(acts)
        self._majority = max(self.classes_, key=lambda a: (counts[a], -a))  # ties: the smaller id
        return self

    def predict(self, texts: Sequence[str]) -> list[int]:
        """Predicted act id for each text."""
        if self.classes_ is None:
            raise RuntimeError("ActClassifier.predict before fit")
        if len(texts) == 0:
            return []
        return [int(a) for a in self.pipeline.predict(list(texts))]

    def evaluate(self, texts: Sequence[str], acts: Sequence[int]) -> dict:
        """{"accuracy", "macro_f1", "majority_baseline_accuracy", "n"} on held-out (text, act) pairs.
        Macro-F1 is over the acts seen in training (rare acts count as much as "inform"); the
        baseline always predicts the most frequent training act, the floor a classifier must beat."""
        if len(texts) != len(acts):
            raise ValueError(f"{len(texts)} texts but {len(acts)} act labels")
        gold = [int(a) for a in acts]
        res = label_agreement(self.predict(texts), gold, self.classes_)
        return {"accuracy": res["accuracy"], "macro_f1": res["macro_f1"],
                "majority_baseline_accuracy": float(np.mean([g == self._majority for g in gold])), "n": res["n"]}


def label_agreement(predicted: Sequence[int | None], gold: Sequence[int], labels: Sequence[int]) -> dict:
    """{"accuracy", "macro_f1", "n", "unparsed"} of predicted labels against gold ones.

    For act labels a model states itself (e.g. parsed from its generated instruction): None marks an
    output that could not be parsed; it counts as wrong (never as a free pass) and is tallied in
    "unparsed". Macro-F1 (sklearn, zero_division=0) is averaged over `labels`, so each act weighs
    the same however rare.
    """
    from sklearn.metrics import f1_score

    if len(predicted) != len(gold):
        raise ValueError(f"{len(predicted)} predictions but {len(gold)} gold labels")
    if len(gold) == 0:
        raise ValueError("no labels to compare")
    labels = [int(x) for x in labels]
    if not labels:
        raise ValueError("labels must not be empty")
    unparsed = sum(p is None for p in predicted)
    # An unparsed prediction becomes a label outside `labels`: wrong, and a false negative for its gold class.
    outside = min(labels + [int(g) for g in gold]) - 1
    pred = [outside if p is None else int(p) for p in predicted]
    gold = [int(g) for g in gold]
    accuracy = float(np.mean([p == g for p, g in zip(pred, gold)]))
    macro = float(f1_score(gold, pred, labels=labels, average="macro", zero_division=0))
    return {"accuracy": accuracy, "macro_f1": macro, "n": len(gold), "unparsed": unparsed}
