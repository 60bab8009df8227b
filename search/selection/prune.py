"""Every decision about which candidates go on: the proxy's cut (`proxy_cut`), the sentinel
audit that checks it and may replace the survivors (`run_audit`), and the audit's expansion.

Sentinel-audited pruning: check the proxy's pruning decision with a few students.

Besides the candidates the proxy keeps, train N *sentinels* drawn from the pruned ones (one per
stratum of the pruned proxy ranks, seeded), every one with the same budget: the config's own
hyperparameters, full length, `seeds` seeds each. Then ask whether a sentinel beat the best kept
candidate by more than seed noise. Seed noise is the pooled within-candidate standard deviation
of every audited candidate; "beyond noise" is a one-sided Welch-style margin
    mean(best kept) - mean(sentinel) > t_{0.95, df} * sd * sqrt(1/n_a + 1/n_b)
(for a loss; the sign flips for accuracy). On disagreement, `expand` trains further pruned
candidates in proxy order, a batch at a time, until a batch brings no candidate that beats the
best so far beyond noise, or `max_extra` is spent.

The logic is pure (`Audit` names the batches to train and takes their values), so it is tested
with synthetic students as well as run on Ray by the sweep driver.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from augtune.search.selection.metric import lower_is_better as lower_is_better_for

TrainFn = Callable[[list[str]], dict[str, list[float]]]


@dataclass
class AuditOutcome:
    kept: list[str]
    sentinels: list[str]
    expanded: list[str]
    values: dict[str, list[float]]  # selection metric per seed, every audited candidate
    proxy_rank: dict[str, int]
    metric: str
    noise_sd: float
    kept_best: str
    best: str  # the best audited candidate by mean
    beaten_by: list[str]  # sentinels or expansions that beat the best kept candidate beyond noise
    rank_kendall: float  # proxy rank vs mean metric among audited candidates
    rank_kendall_p: float
    survivors: list[str] = field(default_factory=list)  # what goes on to the search, best first

    @property
    def disagrees(self) -> bool:
        return bool(self.beaten_by)

    def mean(self, candidate: str) -> float:
        return float(np.mean(self.values[candidate]))

    def verdict(self) -> str:
        """One plain line computed from the numbers above."""
        n = len(self.values)
        agreement = (f"rank agreement among the {n} trained: Kendall tau = {self.rank_kendall:+.2f} "
                     f"(p = {self.rank_kendall_p:.2g})")
        noise = f"seed noise sd = {self.noise_sd:.4f}"
        if not self.disagrees:
            return (f"audit: the proxy's pruning stands: no sentinel ({', '.join(self.sentinels) or 'none'}) beat "
                    f"the best kept candidate {self.kept_best} ({self.metric} {self.mean(self.kept_best):.4f}) "
                    f"beyond seed noise; {noise}; {agreement}")
        line = (f"audit: the proxy's pruning is contradicted: {', '.join(self.beaten_by)} beat the best kept "
                f"candidate {self.kept_best} ({self.metric} {self.mean(self.kept_best):.4f}) beyond seed noise; "
                f"{noise}; {agreement}")
        if self.expanded:
            line += f"; expanded with {', '.join(self.expanded)}; best audited now {self.best}"
        return line

    def as_dict(self) -> dict:
        out = asdict(self)
        out.update(disagrees=self.disagrees, verdict=self.verdict(),
                   means={c: self.mean(c) for c in self.values})
        return out


def proxy_cut(scores: Sequence, mode: str, top_k: int, by: str = "t_stddev") -> list[str]:
    """Candidates that go on to student trials, best proxy score first. `scores` are ProxyScores
    ranked by the proxy `by`; a candidate without a score (NaN) never goes on."""
    ranked = [s for s in scores if not math.isnan(s.value(by))]
    if mode == "none":
        return [s.candidate for s in ranked]
    if mode == "top_k":
        return [s.candidate for s in ranked[:top_k]]
    # overlap (T.stddev only): every candidate whose interval reaches down into the best one's
    best = ranked[0]
    bound = best.high if not math.isnan(best.high) else best.t_stddev
    return [s.candidate for s in ranked if (s.low if not math.isnan(s.low) else s.t_stddev) <= bound]


def choose_sentinels(pruned: Sequence[str], count: int, seed: int) -> list[str]:
    """`count` pruned candidates spread over the proxy ranks: split the pruned list (proxy order)
    into `count` contiguous strata and draw one from each, seeded."""
    count = min(count, len(pruned))
    if count == 0:
        return []
    rng = np.random.default_rng(seed)
    strata = np.array_split(np.arange(len(pruned)), count)
    return [pruned[int(rng.choice(stratum))] for stratum in strata]


def pooled_sd(values: dict[str, list[float]]) -> tuple[float, int]:
    """Pooled within-candidate standard deviation and its degrees of freedom."""
    squares, dof = 0.0, 0
    for v in values.values():
        if len(v) > 1:
            squares += float(np.sum((np.asarray(v) - np.mean(v)) ** 2))
            dof += len(v) - 1
    return (math.sqrt(squares / dof) if dof else float("nan")), dof


def beats(challenger: Sequence[float], incumbent: Sequence[float], sd: float, dof: int,
          lower_is_better: bool) -> bool:
    """Is the challenger better than the incumbent by more than seed noise (one-sided 95%)?"""
    from scipy.stats import t as student_t  # 1.4 s of import: the table replays import proxy_cut from here

    if dof == 0 or math.isnan(sd):
        return False  # no noise estimate: nothing can be called beyond noise
    gain = np.mean(incumbent) - np.mean(challenger)
    if not lower_is_better:
        gain = -gain
    margin = student_t.ppf(0.95, dof) * sd * math.sqrt(1 / len(challenger) + 1 / len(incumbent))
    return bool(gain > margin)


def _best(candidates: Sequence[str], values: dict[str, list[float]], lower_is_better: bool) -> str:
    sign = 1 if lower_is_better else -1
    return min(candidates, key=lambda c: (sign * float(np.mean(values[c])), c))


class Audit:
    """The audit as steps the caller drives, with no training inside: `next_batch()` names the
    candidates to train next (None once decided), `add(values)` takes their values per seed,
    `outcome()` gives the verdict. The sweep's driver trains each batch as a Tune phase; tests and
    replays train them with synthetic students (`run_audit`)."""

    def __init__(self, ranked: Sequence[str], kept: Sequence[str], sentinels: int, *, metric: str, seed: int = 0,
                 expand: bool = False, max_extra: int = 0, batch: int = 2, keep: Optional[int] = None):
        self.ranked, self.kept, self.metric = list(ranked), list(kept), metric
        self.expand, self.max_extra, self.batch, self.keep = expand, max_extra, batch, keep
        self.lower_is_better = lower_is_better_for(metric)
        self.pruned = [c for c in self.ranked if c not in self.kept]
        self.sentinels = choose_sentinels(self.pruned, sentinels, seed)
        self.values: dict[str, list[float]] = {}
        self.expanded: list[str] = []
        self._asked: Optional[list[str]] = None
        self._decided = False

    def next_batch(self) -> Optional[list[str]]:
        """The candidates to train next: first the kept ones with the sentinels; then, while the
        sentinels beat the best kept one and expansion goes on, the next pruned ones in proxy order."""
        if self._asked is not None:
            return self._asked  # asked again before `add`: the same batch
        if not self.values:
            self._asked = self.kept + self.sentinels
        elif not self._decided and len(self.expanded) < self.max_extra:
            remaining = [c for c in self.pruned if c not in self.values]
            self._asked = remaining[:min(self.batch, self.max_extra - len(self.expanded))] or None
        return self._asked

    def add(self, values: dict[str, list[float]]) -> None:
        """The values of the batch `next_batch` named; decides whether expansion goes on."""
        batch, self._asked = self._asked or [], None
        incumbent = _best(list(self.values), self.values, self.lower_is_better) if self.values else None
        self.values.update(values)
        sd, dof = pooled_sd(self.values)
        if incumbent is None:  # the first batch: expand only when a sentinel beat the best kept one
            best_kept = self.values[_best(self.kept, self.values, self.lower_is_better)]
            self._decided = not (self.expand and any(
                beats(self.values[c], best_kept, sd, dof, self.lower_is_better) for c in self.sentinels))
        else:
            self.expanded += batch
            # the best so far stands against the next candidates in proxy order: stop
            self._decided = not any(beats(self.values[c], self.values[incumbent], sd, dof, self.lower_is_better)
                                    for c in batch)

    def outcome(self) -> AuditOutcome:
        from scipy.stats import kendalltau  # as above: only an audit's outcome needs scipy

        values, lower_is_better = self.values, self.lower_is_better
        sd, dof = pooled_sd(values)  # the verdict uses the final noise estimate, over every audited candidate
        kept_best = _best(self.kept, values, lower_is_better)
        beaten_by = [c for c in self.sentinels + self.expanded
                     if beats(values[c], values[kept_best], sd, dof, lower_is_better)]
        proxy_rank = {c: i + 1 for i, c in enumerate(self.ranked)}
        audited = list(values)
        means = [float(np.mean(values[c])) for c in audited]
        if len(audited) >= 3:
            # a good proxy ranks low-loss candidates first: positive tau for a loss, negated for accuracy
            tau, p = kendalltau([proxy_rank[c] for c in audited], means if lower_is_better else [-m for m in means])
            tau, p = float(tau), float(p)
        else:
            tau, p = float("nan"), float("nan")
        sign = 1 if lower_is_better else -1
        order = sorted(audited, key=lambda c: (sign * float(np.mean(values[c])), proxy_rank[c]))
        return AuditOutcome(kept=list(self.kept), sentinels=self.sentinels, expanded=self.expanded, values=values,
                            proxy_rank={c: proxy_rank[c] for c in audited}, metric=self.metric, noise_sd=sd,
                            kept_best=kept_best, best=order[0], beaten_by=beaten_by, rank_kendall=tau,
                            rank_kendall_p=p, survivors=order[:self.keep or len(self.kept)])


def run_audit(ranked: Sequence[str], kept: Sequence[str], sentinels: int, train: TrainFn, *, metric: str,
              seed: int = 0, expand: bool = False, max_extra: int = 0, batch: int = 2,
              keep: Optional[int] = None) -> AuditOutcome:
    """Audit a pruning decision with `train(candidates) -> {candidate: [value per seed]}` doing
    the work. `ranked` is every scored candidate in proxy order (best first), `kept` the
    survivors. Returns the outcome, with the survivors for the search: the `keep` (default
    len(kept)) best audited candidates by mean metric."""
    audit = Audit(ranked, kept, sentinels, metric=metric, seed=seed, expand=expand, max_extra=max_extra,
                  batch=batch, keep=keep)
    while (candidates := audit.next_batch()) is not None:
        audit.add(dict(train(candidates)))
    return audit.outcome()
