"""The RealToxicityPrompts metrics against hand-computed numbers."""

import math

import numpy as np
import pytest

from safebasin.judges import wilson
import torch

from safebasin import models
from safebasin.detox.metrics import (continuation_perplexity, distinct_n, distinct_n_per_prompt, diversity,
                                     expected_max_toxicity, summarize, toxicity_probability)
from safebasin.stats import bootstrap_ci, paired_bootstrap_diff

SCORES = [[0.1, 0.6], [0.2, 0.3]]


def test_emt_and_tp_by_hand():
    assert expected_max_toxicity(SCORES) == pytest.approx(0.45)  # (0.6 + 0.3) / 2
    assert toxicity_probability(SCORES) == pytest.approx(0.5)
    assert toxicity_probability(SCORES, threshold=0.3) == pytest.approx(1.0)  # >= is inclusive
    assert toxicity_probability(SCORES, threshold=0.61) == 0.0
    assert expected_max_toxicity([[0.9], [0.1, 0.2, 0.4]]) == pytest.approx(0.65)  # ragged k
    assert expected_max_toxicity(np.array(SCORES)) == pytest.approx(0.45)


@pytest.mark.parametrize("bad", [[], [[0.1], []], [[0.1, float("nan")]], [[1.5]], [[-0.1]]])
def test_bad_scores_are_loud(bad):
    with pytest.raises(ValueError):
        expected_max_toxicity(bad)


def test_bootstrap_ci_contains_estimate_and_is_seeded():
    rng = np.random.default_rng(1)
    scores = rng.uniform(size=(60, 5)).tolist()
    est = expected_max_toxicity(scores)
    lo, hi = bootstrap_ci(scores, expected_max_toxicity, n_boot=300, seed=3)
    assert lo < est < hi
    assert (lo, hi) == bootstrap_ci(scores, expected_max_toxicity, n_boot=300, seed=3)
    assert (lo, hi) != bootstrap_ci(scores, expected_max_toxicity, n_boot=300, seed=4)
    lo90, hi90 = bootstrap_ci(scores, expected_max_toxicity, n_boot=300, seed=3, alpha=0.1)
    assert lo <= lo90 <= hi90 <= hi


def test_bootstrap_ci_degenerates_when_all_prompts_equal():
    scores = [[0.1, 0.7, 0.3]] * 20
    lo, hi = bootstrap_ci(scores, expected_max_toxicity, n_boot=200)
    assert lo == pytest.approx(0.7, abs=1e-12) and hi == pytest.approx(0.7, abs=1e-12)
    assert bootstrap_ci(scores, toxicity_probability, n_boot=200) == (1.0, 1.0)


def test_paired_diff():
    rng = np.random.default_rng(2)
    a = rng.uniform(size=(40, 4)).tolist()
    same = paired_bootstrap_diff(a, [list(s) for s in a], expected_max_toxicity, n_boot=200)
    assert same == {"diff": 0.0, "low": 0.0, "high": 0.0, "p_value_two_sided": 1.0}
    b = [[x * 0.5 for x in s] for s in a]  # b's max is half of a's on every prompt
    res = paired_bootstrap_diff(a, b, expected_max_toxicity, n_boot=200, seed=5)
    assert res["diff"] == pytest.approx(expected_max_toxicity(a) / 2)
    assert 0 < res["low"] <= res["diff"] <= res["high"]
    assert res["p_value_two_sided"] == pytest.approx(1 / 201)  # never 0 with finite replicates
    assert res == paired_bootstrap_diff(a, b, expected_max_toxicity, n_boot=200, seed=5)
    with pytest.raises(ValueError):
        paired_bootstrap_diff(a, b[:-1], expected_max_toxicity)


def test_distinct_n_by_hand():
    texts = ["the cat sat", "the cat ran"]
    # unigrams: the cat sat the cat ran -> 4 distinct of 6
    assert distinct_n(texts, 1) == pytest.approx(4 / 6)
    # bigrams: (the cat) (cat sat) (the cat) (cat ran) -> 3 distinct of 4; none across the two texts
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)
    # trigrams: (the cat sat) (the cat ran) -> 2 of 2
    assert distinct_n(texts, 3) == 1.0
    assert distinct_n(["a  b\tc\n"], 1) == 1.0  # whitespace tokenization
    assert distinct_n(["one two", ""], 3) == 0.0 and distinct_n([], 1) == 0.0


def test_distinct_n_per_prompt_averages_over_prompts():
    samples = [["the cat sat", "the cat ran"], ["a a a a"]]
    # prompt 0 bigrams 3/4; prompt 1 bigrams (a a) x3 -> 1/3
    assert distinct_n_per_prompt(samples, 2) == pytest.approx((3 / 4 + 1 / 3) / 2)
    # the same text under two prompts is not a repeat: distinctness is within a prompt
    assert distinct_n_per_prompt([["x y"], ["x y"]], 1) == 1.0
    d = diversity(samples)
    assert d == {"dist-1": pytest.approx((4 / 6 + 1 / 4) / 2), "dist-2": pytest.approx((3 / 4 + 1 / 3) / 2),
                 "dist-3": pytest.approx((1.0 + 1 / 2) / 2)}


def test_summarize():
    out = summarize(SCORES, [["the cat sat", "the cat ran"], ["a a a a", "b"]], n_boot=100)
    assert out["expected_max_toxicity"] == pytest.approx(0.45)
    assert out["toxicity_probability"] == pytest.approx(0.5)
    assert out["n_prompts"] == 2 and out["k"] == 2 and out["n_samples"] == 4
    assert out["emt_ci"][0] <= 0.45 <= out["emt_ci"][1]
    assert out["dist-2"] == pytest.approx((3 / 4 + 1 / 3) / 2)
    # bootstrapping the per-prompt max is the same as bootstrapping the full score lists
    rng = np.random.default_rng(0)
    scores = rng.uniform(size=(30, 3)).tolist()
    s = summarize(scores, n_boot=150, seed=7)
    assert s["emt_ci"] == pytest.approx(list(bootstrap_ci(scores, expected_max_toxicity, n_boot=150, seed=7)))
    hits = sum(max(x) >= 0.5 for x in scores)
    assert s["tp_ci"] == pytest.approx(list(wilson(hits, 30)))  # a share of prompts: Wilson, as every rate
    everyone = summarize([[0.9], [0.8], [0.7]])
    assert everyone["toxicity_probability"] == 1.0 and everyone["tp_ci"][0] < 0.5 and everyone["tp_ci"][1] == 1.0
    assert s["dist-1"] is None
    assert summarize([[0.1], [0.2, 0.3]])["k"] is None
    with pytest.raises(ValueError):
        summarize(SCORES, [["x"]])


@pytest.fixture(scope="module")
def lm():
    return models.tiny_llama(seed=1, init_std=0.2).eval(), models.tiny_tokenizer()


def test_perplexity_matches_hand_computation(lm):
    model, tok = lm
    prompt, cont = "The quick brown fox", " jumps over the lazy dog."
    p_ids = tok(prompt)["input_ids"]
    c_ids = tok(cont, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p_ids + c_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
    nll = -sum(float(logp[len(p_ids) + j - 1, t]) for j, t in enumerate(c_ids))
    want = math.exp(nll / len(c_ids))
    got = continuation_perplexity(model, tok, [prompt], [cont])
    assert got["perplexity"] == pytest.approx(want, rel=1e-5)
    assert got == {"perplexity": got["perplexity"], "n_scored": 1, "n_empty": 0, "tokens": len(c_ids)}


def test_perplexity_is_independent_of_batch_size(lm):
    model, tok = lm
    prompts = ["The quick brown fox", "Sure, here is", "I", "Answer the question.", "first", "", "As an AI"]
    conts = [" jumps over the lazy dog.", " how to do it: first, second, third.", "'m sorry", "",
             " second", " hello there", " I must refuse to help with that, sorry."]
    model.train()  # eval mode must be forced inside (no dropout here, but the mode is restored)
    b1 = continuation_perplexity(model, tok, prompts, conts, batch_size=1)
    assert model.training
    model.eval()
    b4 = continuation_perplexity(model, tok, prompts, conts, batch_size=4)
    assert b1["n_scored"] == b4["n_scored"] == 6 and b1["n_empty"] == b4["n_empty"] == 1
    assert b1["tokens"] == b4["tokens"] > 0
    assert b4["perplexity"] == pytest.approx(b1["perplexity"], rel=1e-5)
    # pooled over tokens: exp(total NLL / total tokens), not the mean of per-pair perplexities
    per = [continuation_perplexity(model, tok, [p], [c]) for p, c in zip(prompts, conts) if c]
    pooled = math.exp(sum(math.log(r["perplexity"]) * r["tokens"] for r in per) / sum(r["tokens"] for r in per))
    assert b4["perplexity"] == pytest.approx(pooled, rel=1e-5)
    none = continuation_perplexity(model, tok, ["x"], [""])
    assert math.isnan(none["perplexity"]) and none["n_empty"] == 1 and none["tokens"] == 0
