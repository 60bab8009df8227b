"""Sentinel-audited pruning with synthetic students whose true quality is known.

Candidate c_i has true validation loss 0.10 + 0.01 * i (c0 best); each seed adds Gaussian noise
of sd 0.002, drawn from a generator keyed by (candidate, seed), so every call is reproducible.
"""
import math

import numpy as np
import pytest
from scipy import stats

from augtune.search.selection.prune import beats, choose_sentinels, pooled_sd, run_audit

CANDIDATES = [f"c{i}" for i in range(8)]
TRUE_LOSS = {c: 0.10 + 0.01 * i for i, c in enumerate(CANDIDATES)}
NOISE = 0.002
SEEDS = 2


class SyntheticStudents:
    def __init__(self):
        self.calls: list[list[str]] = []

    def __call__(self, candidates):
        self.calls.append(list(candidates))
        out = {}
        for c in candidates:
            draws = [np.random.default_rng([int(c[1:]), s]).normal(0, NOISE) for s in range(SEEDS)]
            out[c] = [TRUE_LOSS[c] + d for d in draws]
        return out

    @property
    def trained(self):
        return [c for call in self.calls for c in call]


def test_sentinels_are_spread_over_pruned_ranks_and_seeded():
    pruned = [f"p{i}" for i in range(9)]
    chosen = choose_sentinels(pruned, 3, seed=5)
    assert chosen == choose_sentinels(pruned, 3, seed=5)
    positions = [pruned.index(c) for c in chosen]
    assert positions[0] in (0, 1, 2) and positions[1] in (3, 4, 5) and positions[2] in (6, 7, 8)
    assert len({tuple(choose_sentinels(pruned, 3, seed=s)) for s in range(20)}) > 1
    assert choose_sentinels(pruned[:2], 5, seed=0) == pruned[:2]


def test_beyond_noise_margin_matches_welch_style_formula():
    incumbent, challenger = [0.120, 0.124], [0.110, 0.113]
    values = {"a": incumbent, "b": challenger}
    sd, dof = pooled_sd(values)
    expected_sd = math.sqrt(((0.002 ** 2) * 2 + (0.0015 ** 2) * 2) / 2)
    assert sd == pytest.approx(expected_sd) and dof == 2
    margin = stats.t.ppf(0.95, 2) * sd * math.sqrt(1 / 2 + 1 / 2)
    gain = np.mean(incumbent) - np.mean(challenger)
    assert beats(challenger, incumbent, sd, dof, lower_is_better=True) == (gain > margin)
    assert not beats(incumbent, challenger, sd, dof, lower_is_better=True)
    # accuracy: higher is better, the same numbers read the other way
    assert beats(incumbent, challenger, sd, dof, lower_is_better=False) == (gain > margin)
    assert not beats(challenger, incumbent, float("nan"), 0, lower_is_better=True)  # no noise estimate


def test_agreeing_proxy_is_not_expanded():
    students = SyntheticStudents()
    ranked = CANDIDATES  # the proxy ranks by true quality
    outcome = run_audit(ranked, ranked[:3], 2, students, metric="val_loss", seed=0, expand=True, max_extra=4)
    assert not outcome.disagrees and outcome.expanded == []
    assert len(students.calls) == 1 and set(students.trained) == set(ranked[:3]) | set(outcome.sentinels)
    assert outcome.kept_best == "c0" and outcome.survivors == ["c0", "c1", "c2"]
    assert outcome.rank_kendall > 0.9
    assert "stands" in outcome.verdict()


def _seed_drawing_first_pruned(pruned):
    return next(s for s in range(100) if choose_sentinels(pruned, 1, s) == [pruned[0]])


def test_inverted_proxy_reports_disagreement_and_expand_trains_the_true_winner():
    ranked = CANDIDATES[::-1]  # scores negated: the worst candidates rank first
    kept, pruned = ranked[:3], ranked[3:]
    seed = _seed_drawing_first_pruned(pruned)  # a sentinel that is not itself the winner
    students = SyntheticStudents()
    outcome = run_audit(ranked, kept, 1, students, metric="val_loss", seed=seed, expand=True, max_extra=5)
    assert outcome.sentinels == ["c4"]
    assert outcome.disagrees and "c4" in outcome.beaten_by
    assert "c0" in outcome.expanded and "c0" not in outcome.sentinels  # trained by the expansion
    assert outcome.best == "c0" and outcome.survivors[0] == "c0"
    assert outcome.rank_kendall < -0.9  # proxy rank and loss run opposite ways
    assert "contradicted" in outcome.verdict()
    # expansion follows proxy order, at most `batch` per round
    assert students.calls[1:] == [["c3", "c2"], ["c1", "c0"]]


def test_expansion_respects_max_extra_and_report_mode_trains_nothing_more():
    ranked = CANDIDATES[::-1]
    seed = _seed_drawing_first_pruned(ranked[3:])
    limited = run_audit(ranked, ranked[:3], 1, SyntheticStudents(), metric="val_loss", seed=seed, expand=True,
                        max_extra=1)
    assert limited.expanded == ["c3"]
    students = SyntheticStudents()
    report_only = run_audit(ranked, ranked[:3], 1, students, metric="val_loss", seed=seed, expand=False)
    assert report_only.disagrees and report_only.expanded == [] and len(students.calls) == 1


def test_verdict_matches_the_numbers():
    ranked = CANDIDATES[::-1]
    outcome = run_audit(ranked, ranked[:3], 2, SyntheticStudents(), metric="val_loss", seed=3)
    sd, dof = pooled_sd(outcome.values)
    assert outcome.noise_sd == pytest.approx(sd)
    kept_best = min(outcome.kept, key=outcome.mean)
    assert outcome.kept_best == kept_best
    recomputed = [c for c in outcome.sentinels if beats(outcome.values[c], outcome.values[kept_best], sd, dof, True)]
    assert outcome.beaten_by == recomputed
    tau = stats.kendalltau([outcome.proxy_rank[c] for c in outcome.values],
                           [outcome.mean(c) for c in outcome.values]).statistic
    assert outcome.rank_kendall == pytest.approx(tau)
    record = outcome.as_dict()
    assert record["disagrees"] == bool(recomputed) and record["verdict"] == outcome.verdict()
