"""The shared bootstraps (safebasin.stats): the demos' paired differences, and one computation behind every CI."""

import numpy as np
import pytest

from safebasin.stats import bootstrap_ci, bootstrap_mean_ci, paired_bootstrap, paired_differences


def test_the_mean_ci_is_the_general_ci_of_the_mean():
    x = np.random.default_rng(0).random(40)
    assert bootstrap_mean_ci(x, n_boot=200, seed=2) == bootstrap_ci(x, np.mean, n_boot=200, seed=2)
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_mean_ci([0.1, float("nan")])


def _rows(name, scores, **extra):
    return [{"model": name, "index": i, "f1": s, **{k: v[i] for k, v in extra.items()}} for i, s in enumerate(scores)]


def test_paired_differences_pairs_on_our_items_and_skips_a_metric_a_row_lacks():
    ours, other, third = [0.9, 0.8, 0.7, 0.6], [0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.5, 0.5]
    generations = _rows("ours", ours, rr=[1.0, 0.5, 1.0, 1.0]) + _rows("other", other, rr=[0.5] * 4) + _rows("third", third)
    diffs = paired_differences(generations, "ours", ("f1", "rr"), seed=3)
    assert set(diffs) == {"other", "third"}
    assert diffs["other"]["f1"] == paired_bootstrap(ours, other, seed=3)
    assert set(diffs["third"]) == {"f1"}  # no reciprocal rank on that row: not compared
    assert diffs["other"]["rr"]["diff"] == pytest.approx(0.375)
    assert paired_differences(generations, "absent", ("f1",)) == {}
