"""Dialogue metrics (safebasin.dialogue.metrics) on hand-computed cases."""

import math

import numpy as np
import pytest
import torch

from safebasin import models
from safebasin.dialogue.metrics import (ActClassifier, CorpusBLEU, bleu_n, bleu_scores, distinct, label_agreement,
                                        normalize_answer, response_perplexity, rouge_l, sentence_bleu, unigram_f1)
from safebasin.stats import bootstrap_mean_ci, paired_bootstrap, paired_bootstrap_corpus

# ---------------------------------------------------------------- BLEU

CORPUS = ["the cat sat on the mat", "how are you today ?", "I would like a cup of tea ."]


def test_bleu_identical_and_disjoint():
    assert bleu_n(CORPUS, CORPUS, 1) == pytest.approx(100.0)
    assert bleu_scores(CORPUS, CORPUS) == pytest.approx({"bleu-1": 100.0, "bleu-2": 100.0, "bleu-4": 100.0})
    disjoint = ["dogs bark loudly", "xyz uvw", "red green blue"]
    assert bleu_n(disjoint, CORPUS, 1) == 0.0
    assert bleu_scores(disjoint, CORPUS) == {"bleu-1": 0.0, "bleu-2": 0.0, "bleu-4": 0.0}
    assert sentence_bleu(CORPUS[0], CORPUS[0], 2) == pytest.approx(100.0)
    assert sentence_bleu("dogs bark", CORPUS[0], 2) == 0.0


def test_bleu1_by_hand():
    # hyp "the cat" vs ref "the cat sat": P1 = 2/2, brevity penalty exp(1 - 3/2)
    assert bleu_n(["the cat"], ["the cat sat"], 1) == pytest.approx(100 * math.exp(1 - 1.5))
    # corpus-level pooling: matches 2 + 0 of 2 + 2 unigrams, lengths 4 vs 4 -> 50, not mean(100, 0)
    assert bleu_n(["a b", "c d"], ["a b", "e f"], 1) == pytest.approx(50.0)
    # effective order: one-word replies still get a BLEU-4 (only orders the hypotheses reach count)
    assert bleu_n(["yes", "no"], ["yes", "no"], 4) == pytest.approx(100.0)


def test_bleu_rejects_mismatched_lengths():
    with pytest.raises(ValueError):
        bleu_n(["a"], ["a", "b"], 1)
    with pytest.raises(ValueError):
        bleu_n([], [], 1)


def test_corpus_bleu_stats_equal_sacrebleu():
    hyps = ["the cat sat on a mat", "how are you ?", "tea please", "", "I would like some coffee ."]
    refs = ["the cat sat on the mat", "how are you today ?", "I would like a cup of tea .", "ok", "coffee ."]
    for n in (1, 2, 4):
        m = CorpusBLEU(n)
        assert m(hyps, refs) == bleu_n(hyps, refs, n)
        assert m.score_from_stats(m.item_stats(hyps, refs).sum(axis=0)) == pytest.approx(bleu_n(hyps, refs, n), abs=1e-9)


# ---------------------------------------------------------------- ROUGE-L, F1, distinct


def test_rouge_l():
    assert rouge_l("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(1.0)
    assert rouge_l("dogs bark", "the cat sat") == 0.0
    # LCS "cat sat" (stemmed, lowercased): P = 2/3, R = 2/2 -> F = 0.8
    assert rouge_l("A cat sitting", "cat sits") == pytest.approx(0.8)


def test_unigram_f1_by_hand():
    # articles removed: {cat, sat} vs {cat, sat, down}: P = 1, R = 2/3 -> F1 = 0.8
    assert unigram_f1("the cat sat", "a cat sat down") == pytest.approx(0.8)
    assert unigram_f1("The CAT, sat!", "cat sat") == pytest.approx(1.0)  # case and punctuation ignored
    # multiset overlap: hyp "yes yes yes" vs ref "yes no": overlap 1, P = 1/3, R = 1/2 -> 0.4
    assert unigram_f1("yes yes yes", "yes no") == pytest.approx(0.4)
    assert unigram_f1("dogs bark", "cat sat") == 0.0
    assert unigram_f1("", "cat") == 0.0 and unigram_f1("cat", "") == 0.0
    assert unigram_f1("", "") == 1.0
    assert unigram_f1("the .", "a !") == 1.0  # both empty after normalisation
    assert normalize_answer("Don't   go to THE shop.") == "don t go to shop"


def test_distinct_by_hand():
    texts = ["a b a", "b c"]
    # unigrams: a b a b c -> 3 distinct / 5; bigrams: (a b)(b a)(b c) -> 3 / 3
    assert distinct(texts, 1) == pytest.approx(3 / 5)
    assert distinct(texts, 2) == pytest.approx(1.0)
    texts = ["i do not know", "i do not know", "sure"]
    # unigrams: 9 total, {i, do, not, know, sure} 5 distinct; bigrams: 6 total, 3 distinct
    assert distinct(texts, 1) == pytest.approx(5 / 9)
    assert distinct(texts, 2) == pytest.approx(3 / 6)
    assert distinct(["x", "y"], 2) == 0.0  # no bigram at all (n-grams never cross responses)
    with pytest.raises(ValueError):
        distinct(texts, 0)


# ---------------------------------------------------------------- perplexity

CONTEXTS = [
    [{"role": "user", "content": "The quick brown fox"}],
    [{"role": "user", "content": "Can you help?"}, {"role": "assistant", "content": "Sure."},
     {"role": "user", "content": "Answer the question."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "first"}],
    [{"role": "user", "content": "As an AI"}],
    [{"role": "user", "content": "hello"}],
]
RESPONSES = ["jumps over the lazy dog.", "Sure, here is how to do it: first, second, third.", "second", "",
             "I'm sorry, but I cannot help with that."]


@pytest.fixture(scope="module")
def lm():
    return models.tiny_llama(seed=1, init_std=0.2), models.tiny_tokenizer()


def test_response_perplexity_by_hand(lm):
    model, tok = lm
    model.eval()
    messages, response = CONTEXTS[1], RESPONSES[1]
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt.endswith("<|im_start|>assistant\n")
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    r_ids = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = torch.tensor([p_ids + r_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    nll = -sum(float(logp[len(p_ids) - 1 + i, t]) for i, t in enumerate(r_ids))
    want = math.exp(nll / len(r_ids))
    got = response_perplexity(model, tok, [messages], [response])
    assert got["perplexity"] == pytest.approx(want, rel=1e-5)
    assert got["tokens"] == len(r_ids) and got["n"] == 1
    assert 1.0 < want < 10 * tok.vocab_size  # a real, non-degenerate number with init_std=0.2


def test_response_perplexity_is_independent_of_batch_size(lm):
    model, tok = lm
    model.train()  # eval mode is forced inside and the mode restored
    b1 = response_perplexity(model, tok, CONTEXTS, RESPONSES, batch_size=1)
    assert model.training
    model.eval()
    b3 = response_perplexity(model, tok, CONTEXTS, RESPONSES, batch_size=3)
    assert b1["n"] == b3["n"] == 5 and b1["tokens"] == b3["tokens"]
    assert b3["perplexity"] == pytest.approx(b1["perplexity"], rel=1e-5)
    # pooled over tokens (exp of total NLL / total tokens), the empty response scored on its EOS
    per = [response_perplexity(model, tok, [c], [r]) for c, r in zip(CONTEXTS, RESPONSES)]
    assert per[3]["tokens"] == 1
    pooled = math.exp(sum(math.log(r["perplexity"]) * r["tokens"] for r in per) / sum(r["tokens"] for r in per))
    assert b3["perplexity"] == pytest.approx(pooled, rel=1e-5)
    with pytest.raises(ValueError):
        response_perplexity(model, tok, CONTEXTS, RESPONSES[:2])


# ---------------------------------------------------------------- acts


def _synthetic(seed: int, k: int):
    rng = np.random.default_rng(seed)
    wh = ["what", "where", "why", "when", "how"]
    subjects = ["you", "your sister", "the manager", "they", "your friends", "the train", "the shop", "he"]
    verbs = ["go", "buy", "eat", "work", "stay", "leave", "study", "arrive"]
    objects = ["the tickets", "dinner", "the office", "a new car", "the report", "some coffee", "the hotel", "lunch"]
    texts, acts = [], []
    for _ in range(k):
        s, v, o = (x[rng.integers(len(x))] for x in (subjects, verbs, objects))
        texts.append(f"{wh[rng.integers(len(wh))]} did {s} {v} {o} ?")
        acts.append(2)
        texts.append(f"{s} will {v} {o} tomorrow .")
        acts.append(1)
    return texts, acts


def test_act_classifier_separates_questions_from_informs():
    train_t, train_a = _synthetic(0, 40)
    test_t, test_a = _synthetic(1, 15)
    clf = ActClassifier().fit(train_t, train_a)
    assert clf.predict(["where did you buy the tickets ?", "the manager will leave the office tomorrow ."]) == [2, 1]
    res = clf.evaluate(test_t, test_a)
    assert res == {"accuracy": 1.0, "macro_f1": 1.0, "majority_baseline_accuracy": 0.5, "n": 30}
    again = ActClassifier().fit(train_t, train_a)  # deterministic
    np.testing.assert_array_equal(again.pipeline.predict_proba(test_t), clf.pipeline.predict_proba(test_t))
    with pytest.raises(RuntimeError):
        ActClassifier().predict(["x"])


def test_label_agreement_by_hand():
    gold = [1, 1, 2, 2]
    res = label_agreement([1, None, 2, 1], gold, labels=[1, 2])
    # class 1: tp 1 (item 0), fp 1 (item 3), fn 1 (item 1 unparsed) -> F1 = 2/4 = 0.5
    # class 2: tp 1 (item 2), fp 0, fn 1 (item 3) -> P = 1, R = 1/2, F1 = 2/3
    assert res == {"accuracy": 0.5, "macro_f1": pytest.approx((0.5 + 2 / 3) / 2), "n": 4, "unparsed": 1}
    # a label never predicted nor gold still counts in the macro average (F1 0)
    four = label_agreement([1, 1, 2, 2], gold, labels=[1, 2, 3, 4])
    assert four["accuracy"] == 1.0 and four["macro_f1"] == pytest.approx(0.5) and four["unparsed"] == 0
    assert label_agreement([None, None], [1, 2], labels=[1, 2]) == {"accuracy": 0.0, "macro_f1": 0.0, "n": 2,
                                                                    "unparsed": 2}
    with pytest.raises(ValueError):
        label_agreement([1], [1, 2], labels=[1, 2])


# ---------------------------------------------------------------- bootstraps


def test_paired_bootstrap_identical_lists():
    a = [0.1, 0.5, 0.9, 0.3]
    res = paired_bootstrap(a, list(a), n_boot=200)
    assert res["diff"] == 0.0 and (res["low"], res["high"]) == (0.0, 0.0)
    assert res["p_value_two_sided"] == 1.0


def test_paired_bootstrap_detects_a_shift_and_is_seeded():
    rng = np.random.default_rng(0)
    b = rng.uniform(size=80)
    a = b + 0.1 + rng.normal(0, 0.02, size=80)
    res = paired_bootstrap(a, b, n_boot=500, seed=3)
    assert res["diff"] == pytest.approx(float(np.mean(a - b)))
    assert 0.0 < res["low"] < res["diff"] < res["high"]
    assert res["p_value_two_sided"] == pytest.approx(1 / 501)  # no replicate reaches |d* - d| >= |d|
    assert res == paired_bootstrap(a, b, n_boot=500, seed=3)
    assert res != paired_bootstrap(a, b, n_boot=500, seed=4)
    with pytest.raises(ValueError):
        paired_bootstrap(a, b[:-1])
    with pytest.raises(ValueError):
        paired_bootstrap([], [])


def test_bootstrap_mean_ci():
    assert bootstrap_mean_ci([0.4, 0.4, 0.4], n_boot=100) == pytest.approx((0.4, 0.4))
    x = np.random.default_rng(2).normal(size=100)
    lo, hi = bootstrap_mean_ci(x, n_boot=300, seed=1)
    assert lo < x.mean() < hi
    assert (lo, hi) == bootstrap_mean_ci(x, n_boot=300, seed=1)


def test_paired_bootstrap_corpus_fast_path_matches_recomputation():
    refs = ["the cat sat on the mat", "how are you today ?", "I would like a cup of tea .", "see you tomorrow",
            "it is raining again", "where is the station ?"] * 3
    good = ["the cat sat on a mat", "how are you ?", "I would like tea .", "see you", "it is raining",
            "where is the station ?"] * 3
    bad = ["a dog", "fine", "coffee", "bye", "sunny", "no idea"] * 3
    fast = paired_bootstrap_corpus(good, bad, refs, CorpusBLEU(2), n_boot=100, seed=5)
    slow = paired_bootstrap_corpus(good, bad, refs, lambda h, r: bleu_n(h, r, 2), n_boot=100, seed=5)
    assert fast["diff"] == pytest.approx(bleu_n(good, refs, 2) - bleu_n(bad, refs, 2))
    assert fast == pytest.approx(slow, abs=1e-9)
    assert fast["low"] > 0 and fast["p_value_two_sided"] < 0.05
    same = paired_bootstrap_corpus(good, good, refs, CorpusBLEU(4), n_boot=50)
    assert same["diff"] == 0.0 and (same["low"], same["high"]) == (0.0, 0.0)
