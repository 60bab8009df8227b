"""The trust statistics against independent computations and known variance components."""
import math

import numpy as np
import pytest
from scipy import stats

from augtune.search.selection.trust import noise_ceiling, seed_bootstrap, separability, topk_regret, verdict


def test_separability_matches_scipy_and_hand_formulas():
    groups = [[0.61, 0.65, 0.60], [0.55, 0.52, 0.57], [0.50, 0.49, 0.53], [0.70, 0.74, 0.69]]
    sep = separability(groups)
    ref = stats.f_oneway(*groups)
    assert sep.f == pytest.approx(ref.statistic) and sep.p == pytest.approx(ref.pvalue)
    means = np.array([np.mean(g) for g in groups])
    grand = np.mean(np.concatenate(groups))
    msb = 3 * np.sum((means - grand) ** 2) / 3
    msw = sum(np.sum((np.array(g) - np.mean(g)) ** 2) for g in groups) / 8
    assert sep.reliability == pytest.approx((msb - msw) / msb)
    assert sep.icc1 == pytest.approx((msb - msw) / (msb + 2 * msw))
    assert noise_ceiling(sep) == pytest.approx(math.sqrt((msb - msw) / msb))


def test_icc_recovers_known_variance_components():
    # between-candidate variance 1, seed variance 1, 4 seeds: ICC(1) = 0.5, reliability = 4/5
    rng = np.random.default_rng(0)
    effects = rng.normal(0, 1, 4000)
    groups = [e + rng.normal(0, 1, 4) for e in effects]
    sep = separability(groups)
    assert sep.icc1 == pytest.approx(0.5, abs=0.03)
    assert sep.reliability == pytest.approx(0.8, abs=0.02)


def test_no_separation_gives_a_low_ceiling_and_a_cautious_verdict():
    rng = np.random.default_rng(1)
    groups = [rng.normal(0.5, 0.05, 3) for _ in range(6)]  # same mean for every candidate
    sep = separability(groups)
    proxy = list(range(6))
    intervals = seed_bootstrap(proxy, groups, resamples=300)
    line = verdict(sep, stats.spearmanr(proxy, [g.mean() for g in groups]).statistic, intervals["spearman"],
                   topk_regret([str(i) for i in range(6)], proxy, [g.mean() for g in groups]))
    assert sep.p >= 0.05  # deterministic draw (seed 1) with no real differences
    assert line.startswith("students cannot tell these candidates apart")
    assert noise_ceiling(sep) < 0.5 or math.isnan(noise_ceiling(sep))


def test_seed_bootstrap_brackets_the_estimate_and_collapses_without_noise():
    proxy = [0.1, 0.2, 0.3, 0.4, 0.5]
    noisy = [[1.0, 1.2], [1.1, 1.5], [1.6, 1.4], [1.9, 1.7], [2.2, 2.0]]
    intervals = seed_bootstrap(proxy, noisy, resamples=500, seed=0)
    estimate = stats.pearsonr(proxy, [np.mean(g) for g in noisy]).statistic
    low, high = intervals["pearson"]
    assert low <= estimate <= high and high - low > 0
    exact = [[v, v] for v in (1.0, 1.3, 1.2, 1.8, 2.0)]
    same = seed_bootstrap(proxy, exact, resamples=100)
    value = stats.spearmanr(proxy, [g[0] for g in exact]).statistic
    assert same["spearman"] == pytest.approx((value, value))


def test_topk_regret_by_hand():
    names = ["a", "b", "c", "d"]
    proxy = [0.3, 0.1, 0.2, 0.4]  # proxy order: b, c, a, d
    means = [0.50, 0.70, 0.60, 0.40]  # winner: d (0.40), ranked last by the proxy
    rows = topk_regret(names, proxy, means)
    assert [r["kept_best"] for r in rows] == ["b", "c", "a", "d"]
    assert [r["regret"] for r in rows] == pytest.approx([0.30, 0.20, 0.10, 0.0])
    assert [r["keeps_winner"] for r in rows] == [False, False, False, True]
    assert [r["compute_fraction"] for r in rows] == [0.25, 0.5, 0.75, 1.0]


def test_verdict_needs_both_seed_interval_and_candidate_significance():
    groups = [[0.10, 0.11, 0.10], [0.20, 0.21, 0.19], [0.30, 0.29, 0.31], [0.40, 0.41, 0.39]]
    sep = separability(groups)
    regret = topk_regret(list("abcd"), [1, 2, 3, 4], [np.mean(g) for g in groups])
    strong = verdict(sep, 0.9, (0.5, 1.0), regret, spearman_p=0.01)
    weak = verdict(sep, 0.4, (0.2, 0.8), regret, spearman_p=0.6)
    backwards = verdict(sep, -0.9, (-1.0, -0.5), regret, spearman_p=0.01)
    unclear = verdict(sep, 0.1, (-0.3, 0.5), regret, spearman_p=0.8)
    assert strong.startswith("T.stddev ranks these candidates:")
    assert "not significant (p = 0.6)" in weak and "ranks these candidates:" not in weak
    assert backwards.startswith("T.stddev ranks these candidates backwards")
    assert unclear.startswith("T.stddev is not shown to rank")
    assert all(line.endswith("top-3 keeps the winner") for line in (strong, weak, backwards, unclear))
