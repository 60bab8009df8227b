"""How far to trust the proxy on a set of trained candidates: the statistics shared by
`augtune report` and the proxy study (benchmarks/proxy_study.py).

Input everywhere: per candidate its T.stddev and its students' final losses, one per seed.
- `separability`: can students tell the candidates apart at all? One-way ANOVA (F, p) of the
  per-seed losses by candidate, ICC(1) (the share of a single run's variance that is between
  candidates) and the reliability of the candidate means, ICC(1,k) = (MSB - MSW) / MSB.
- `noise_ceiling`: the largest correlation any predictor can reach against the noisy candidate
  means, sqrt(reliability) (the attenuation bound of Spearman, 1904).
- `seed_bootstrap`: Pearson / Spearman / Kendall intervals, resampling each candidate's seeds
  with replacement (percentile interval).
- `topk_regret`: keep the k best by proxy; regret = best mean loss among them minus the best
  mean loss overall, with the compute fraction k / n.
- `verdict`: one plain line computed from those numbers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats


@dataclass
class Separability:
    f: float
    p: float
    icc1: float  # single-run
    reliability: float  # ICC(1,k): of the candidate means over k seeds
    seeds: float  # mean seeds per candidate
    between_sd: float  # sd of the candidate means
    within_sd: float  # pooled seed-to-seed sd


def separability(groups: Sequence[Sequence[float]]) -> Separability:
    groups = [np.asarray(g, dtype=float) for g in groups if len(g) > 0]
    sizes = np.array([len(g) for g in groups])
    means = np.array([g.mean() for g in groups])
    dof_within = int((sizes - 1).sum())
    if len(groups) < 2 or dof_within == 0:
        nan = float("nan")
        return Separability(nan, nan, nan, nan, float(sizes.mean()) if len(sizes) else nan,
                            float(np.std(means, ddof=1)) if len(means) > 1 else nan, nan)
    grand = np.concatenate(groups).mean()
    msb = float((sizes * (means - grand) ** 2).sum() / (len(groups) - 1))
    msw = float(sum(((g - g.mean()) ** 2).sum() for g in groups) / dof_within)
    k = float(sizes.mean())
    result = stats.f_oneway(*groups) if msw > 0 else None
    f = float(result.statistic) if result is not None else float("inf")
    p = float(result.pvalue) if result is not None else 0.0
    icc1 = (msb - msw) / (msb + (k - 1) * msw) if msb + (k - 1) * msw > 0 else float("nan")
    reliability = (msb - msw) / msb if msb > 0 else float("nan")
    return Separability(f, p, float(icc1), float(reliability), k, float(np.std(means, ddof=1)), math.sqrt(msw))


def noise_ceiling(sep: Separability) -> float:
    """The best |correlation| reachable against these candidate means given their seed noise."""
    if math.isnan(sep.reliability):
        return float("nan")
    return math.sqrt(max(sep.reliability, 0.0))


def _correlations(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    if np.ptp(y) == 0 or np.ptp(x) == 0:
        return {"pearson": float("nan"), "spearman": float("nan"), "kendall": float("nan")}
    return {"pearson": float(stats.pearsonr(x, y).statistic), "spearman": float(stats.spearmanr(x, y).statistic),
            "kendall": float(stats.kendalltau(x, y).statistic)}


def seed_bootstrap(proxy: Sequence[float], per_seed: Sequence[Sequence[float]], resamples: int = 2000,
                   confidence: float = 0.95, seed: int = 0) -> dict[str, tuple[float, float]]:
    """Percentile intervals of the three correlations between the proxy and the candidate means,
    resampling every candidate's seeds with replacement (the proxy is held fixed)."""
    rng = np.random.default_rng(seed)
    x = np.asarray(proxy, dtype=float)
    draws: dict[str, list[float]] = {"pearson": [], "spearman": [], "kendall": []}
    groups = [np.asarray(g, dtype=float) for g in per_seed]
    if any(len(g) < 2 for g in groups):
        return {name: (float("nan"), float("nan")) for name in draws}
    for _ in range(resamples):
        means = np.array([g[rng.integers(0, len(g), len(g))].mean() for g in groups])
        for name, value in _correlations(x, means).items():
            draws[name].append(value)
    alpha = (1 - confidence) / 2
    out = {}
    for name, values in draws.items():
        values = np.asarray(values)
        values = values[~np.isnan(values)]
        out[name] = ((float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha)))
                     if len(values) else (float("nan"), float("nan")))
    return out


def topk_regret(candidates: Sequence[str], proxy: Sequence[float], means: Sequence[float],
                ks: Sequence[int] = (1, 2, 3, 4, 5)) -> list[dict]:
    """For each k: the best candidate a top-k prune keeps and its loss gap to the exhaustive winner."""
    order = np.argsort(np.asarray(proxy, dtype=float), kind="stable")
    means = np.asarray(means, dtype=float)
    winner = float(means.min())
    rows = []
    for k in ks:
        if k > len(candidates):
            break
        kept = order[:k]
        best_kept = int(kept[np.argmin(means[kept])])
        rows.append({"k": k, "kept_best": candidates[best_kept], "regret": float(means[best_kept] - winner),
                     "keeps_winner": bool(means[best_kept] == winner), "compute_fraction": k / len(candidates)})
    return rows


def verdict(sep: Separability, spearman: float, interval: tuple[float, float], regret: list[dict],
            top_k: int = 3, alpha: float = 0.05, spearman_p: float = 0.0) -> str:
    """One plain line: are the candidates distinguishable, does the proxy rank them, what does
    top-k pruning cost. Positive rho = lower T.stddev goes with lower student loss (what the
    paper predicts). The seed interval covers seed noise; `spearman_p` covers having few
    candidates: both must clear zero before the proxy is said to rank them."""
    low, high = interval
    rho = f"Spearman rho = {spearman:+.2f} [{low:+.2f}, {high:+.2f}]"
    row = next((r for r in regret if r["k"] == top_k), regret[-1] if regret else None)
    prune = ""
    if row is not None:
        prune = (f"top-{row['k']} keeps the winner" if row["keeps_winner"]
                 else f"top-{row['k']} misses the winner by {row['regret']:.4f} loss")
    if not (sep.p < alpha):
        return (f"students cannot tell these candidates apart (ANOVA p = {sep.p:.2g}, reliability of the means "
                f"{sep.reliability:.2f}): no proxy can be judged here; {rho}; {prune}")
    if low > 0 and spearman_p < alpha:
        return f"T.stddev ranks these candidates: {rho} (ceiling {noise_ceiling(sep):.2f}); {prune}"
    if high < 0 and spearman_p < alpha:
        return f"T.stddev ranks these candidates backwards: {rho}; do not prune with it here; {prune}"
    if low > 0 or high < 0:
        return (f"T.stddev points {'the right way' if low > 0 else 'backwards'} whatever the seeds ({rho}), but "
                f"across these few candidates that is not significant (p = {spearman_p:.2g}); prune only with an "
                f"audit; {prune}")
    return (f"T.stddev is not shown to rank these candidates: {rho} includes 0 although the students separate "
            f"them (ANOVA p = {sep.p:.2g}); prune only with an audit; {prune}")
