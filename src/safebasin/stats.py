"""Bootstrap statistics shared by the scenarios (detox, dialogue, kg): percentile CIs and paired differences.

One module, so that a "95% CI" or a "paired difference" means the same computation in every report. Every
bootstrap draws its indices from `np.random.default_rng(seed)`, so the same call gives the same numbers and a
report can be re-made byte for byte. The unit of resampling is whatever one entry of the input is (a prompt
with its k samples, a dialogue turn): resample the unit the scores are correlated within, never finer.
Paired functions apply one set of indices to both systems, which removes the item-difficulty variance they
share. This is a core module: it imports nothing from the scenario packages.
"""

from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["bootstrap_ci", "bootstrap_mean_ci", "paired_bootstrap", "paired_bootstrap_diff", "paired_bootstrap_corpus",
           "paired_differences", "paired_bootstrap_seeds"]


def _check_boot_args(n: int, n_boot: int, alpha: float) -> None:
    if n == 0:
        raise ValueError("no items to bootstrap")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def _as_finite(values: Sequence[float], name: str) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} holds NaN or infinite values")
    return a


def _check_paired(n: int, m: int) -> None:
    if n != m:
        raise ValueError(f"paired bootstrap needs the same items for both systems: {n} vs {m}")


def _resample(values, idx: np.ndarray):
    """The entries at `idx`, in the container type the statistic was given (array or list)."""
    if isinstance(values, np.ndarray):
        return values[idx]
    return [values[i] for i in idx]


def _boot_stats(values, stat: Callable, n_boot: int, rng: np.random.Generator, n: int) -> np.ndarray:
    return np.array([stat(_resample(values, rng.integers(0, n, size=n))) for _ in range(n_boot)], dtype=np.float64)


def _summarize_boots(diff: float, boots: np.ndarray, alpha: float) -> dict:
    """Percentile CI, and the p-value of "no difference" from the bootstrap distribution shifted to
    the null: p = (1 + #{|d* - d| >= |d|}) / (n_boot + 1); the +1 keeps a finite number of
    replicates from ever claiming p = 0."""
    low, high = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    extreme = int(np.sum(np.abs(boots - diff) >= abs(diff)))
    p = min(1.0, (1 + extreme) / (len(boots) + 1))
    return {"diff": diff, "low": float(low), "high": float(high), "p_value_two_sided": p}


def bootstrap_ci(values, stat: Callable, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap CI (1 - alpha) of `stat` over the entries of `values`.

    `values` holds one entry per unit (a prompt's list of sample scores, or a per-item scalar in a numpy
    array); each replicate resamples entries with replacement and calls `stat` on them in the same
    container type (a numpy array stays an array, which makes e.g. `bootstrap_ci(per_prompt_max, np.mean)`
    fast on 10k prompts), so any statistic of the whole set, not only a mean, gets a CI.
    """
    n = len(values)
    _check_boot_args(n, n_boot, alpha)
    rng = np.random.default_rng(seed)
    boots = _boot_stats(values, stat, n_boot, rng, n)
    low, high = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def bootstrap_mean_ci(values: Sequence[float], n_boot: int = 1000, seed: int = 0,
                      alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap CI (1 - alpha) of the mean of per-item scores; a NaN is an error, not a silent
    NaN interval."""
    x = _as_finite(values, "values")
    return bootstrap_ci(x, np.mean, n_boot=n_boot, seed=seed, alpha=alpha)


def paired_bootstrap(a: Sequence[float], b: Sequence[float], n_boot: int = 1000, seed: int = 0,
                     alpha: float = 0.05) -> dict:
    """Paired bootstrap of mean(a) - mean(b) for two systems' per-item scores on the SAME items.

    The per-item differences are resampled (one set of indices for both systems). Returns {"diff",
    "low", "high", "p_value_two_sided"} (percentile CI at 1 - alpha; p as in `_summarize_boots`).
    """
    x, y = _as_finite(a, "a"), _as_finite(b, "b")
    _check_paired(len(x), len(y))
    _check_boot_args(len(x), n_boot, alpha)
    d = x - y
    diff = float(d.mean())
    rng = np.random.default_rng(seed)
    return _summarize_boots(diff, _boot_stats(d, np.mean, n_boot, rng, len(d)), alpha)


def paired_bootstrap_diff(a, b, stat: Callable, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict:
    """Paired bootstrap of stat(a) - stat(b) for two systems evaluated on the SAME units, in the same order,
    for a statistic that is not a mean of per-unit numbers (e.g. expected max toxicity over prompts'
    sample lists). Entries are resampled as in `bootstrap_ci`; returns the dict of `paired_bootstrap`.
    """
    n = len(a)
    _check_paired(n, len(b))
    _check_boot_args(n, n_boot, alpha)
    rng = np.random.default_rng(seed)
    diff = float(stat(a)) - float(stat(b))
    boots = np.empty(n_boot, dtype=np.float64)
    for j in range(n_boot):
        idx = rng.integers(0, n, size=n)
        boots[j] = float(stat(_resample(a, idx))) - float(stat(_resample(b, idx)))
    return _summarize_boots(diff, boots, alpha)


def paired_bootstrap_corpus(hyps_a: Sequence[str], hyps_b: Sequence[str], refs: Sequence[str],
                            metric_fn: Callable[[Sequence[str], Sequence[str]], float], n_boot: int = 1000,
                            seed: int = 0, alpha: float = 0.05) -> dict:
    """Paired bootstrap of metric_fn(hyps_a, refs) - metric_fn(hyps_b, refs) for a corpus-level
    metric (e.g. `dialogue.metrics.CorpusBLEU(4)`), which is not a mean of item scores and so must be
    recomputed on each resample of (hypothesis, reference) pairs.

    A metric with `item_stats` and `score_from_stats` (`CorpusBLEU`) is recomputed from the resample's
    summed statistics: the same numbers, without re-tokenizing the corpus 2 x n_boot times. Returns the
    dict of `paired_bootstrap`.
    """
    n = len(refs)
    if len(hyps_a) != n or len(hyps_b) != n:
        raise ValueError(f"paired bootstrap needs the same items: {len(hyps_a)} / {len(hyps_b)} hypotheses, {n} references")
    _check_boot_args(n, n_boot, alpha)
    hyps_a, hyps_b, refs = list(hyps_a), list(hyps_b), list(refs)
    diff = float(metric_fn(hyps_a, refs)) - float(metric_fn(hyps_b, refs))
    rng = np.random.default_rng(seed)
    boots = np.empty(n_boot, dtype=np.float64)
    fast = hasattr(metric_fn, "item_stats") and hasattr(metric_fn, "score_from_stats")
    if fast:
        sa, sb = metric_fn.item_stats(hyps_a, refs), metric_fn.item_stats(hyps_b, refs)
    for j in range(n_boot):
        idx = rng.integers(0, n, size=n)
        if fast:
            weights = np.bincount(idx, minlength=n)
            boots[j] = metric_fn.score_from_stats(weights @ sa) - metric_fn.score_from_stats(weights @ sb)
        else:
            r = [refs[i] for i in idx]
            boots[j] = float(metric_fn([hyps_a[i] for i in idx], r)) - float(metric_fn([hyps_b[i] for i in idx], r))
    return _summarize_boots(diff, boots, alpha)


def paired_differences(generations: list[dict], ours: str, keys: Sequence[str], seed: int = 0) -> dict:
    """{row: {key: paired_bootstrap(ours - row)}} for every other row of a demo's per-item generations.

    `generations` are evaluate's per-item rows ({"model", "index", key: score, ...}); rows are paired on
    `ours`'s items, so a report's "ours − row" column is the same computation in every scenario. A key is
    compared only where both rows carry it (a reciprocal rank exists only for rows that rank candidates);
    {} when `ours` has no generations.
    """
    per: dict = {}
    for g in generations:
        per.setdefault(g["model"], {})[g["index"]] = g
    if ours not in per:
        return {}
    idx = sorted(per[ours])
    out = {}
    for name, rows in per.items():
        if name == ours:
            continue
        present = [m for m in keys if m in rows[idx[0]] and m in per[ours][idx[0]]]
        out[name] = {m: paired_bootstrap([per[ours][i][m] for i in idx], [rows[i][m] for i in idx], seed=seed)
                     for m in present}
    return out


def paired_bootstrap_seeds(a, b, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict:
    """Paired bootstrap of mean(a) - mean(b) for two methods' per-item scores over seeds x items (two arrays of
    shape [seeds, items], the same seeds and items in the same order): each replicate resamples the seeds and,
    independently, the items, and applies both to both methods. Two-level, because a seed's runs share one
    data order and a prompt is hard or easy for every seed: resampling (seed, prompt) cells as if independent
    would understate the spread. Returns the dict of `paired_bootstrap`."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.ndim != 2 or x.shape != y.shape:
        raise ValueError(f"paired bootstrap over seeds needs two [seeds, items] arrays of one shape: {x.shape} vs {y.shape}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("a or b holds NaN or infinite values")
    seeds, items = x.shape
    _check_boot_args(seeds * items, n_boot, alpha)
    d = x - y
    rng = np.random.default_rng(seed)
    boots = np.empty(n_boot, dtype=np.float64)
    for j in range(n_boot):
        rows, cols = rng.integers(0, seeds, size=seeds), rng.integers(0, items, size=items)
        boots[j] = d[np.ix_(rows, cols)].mean()
    return _summarize_boots(float(d.mean()), boots, alpha)


def ci_sign(d: dict | None) -> int:
    """+1 / -1 when the 95% CI of a difference ({"low", "high", ...}) lies above / below 0, else 0 (or no difference)."""
    if not d:
        return 0
    return 1 if d["low"] > 0 else -1 if d["high"] < 0 else 0
