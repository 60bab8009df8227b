"""The recipe baseline of every sweep: is the chosen augmentation better than the recipe one would
use anyway?

After the search, the baseline recipe (`search.baseline`, default CutMixPick keep 0.5) is trained at
the chosen trial's hyperparameters and seed, and at `baseline_seeds - 1` further seeds; the chosen
augmentation is trained again at those further seeds. Both then have `baseline_seeds` runs at the
same values, so the seed noise is measured on this very data (pooled within-arm standard deviation),
and the difference of the means is given in units of it; "not separable" when a pooled two-sample
t test at 95% cannot tell them apart.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
from scipy import stats

from augtune.search.selection.metric import metric_sign
from augtune.search.results.trials import TrialRow

BASELINE_PHASE = "baseline"


@dataclass
class BaselineComparison:
    chosen: str
    baseline: str
    metric: str  # the selection metric (a val_* metric unless select_on_test)
    chosen_values: list[float] = field(default_factory=list)  # per seed, the chosen trial's seed first
    baseline_values: list[float] = field(default_factory=list)
    chosen_test: list[float] = field(default_factory=list)  # test loss per seed
    baseline_test: list[float] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)

    @property
    def same(self) -> bool:
        return self.chosen == self.baseline

    def noise(self) -> tuple[float, int]:
        """Pooled within-arm seed standard deviation of the metric and its degrees of freedom."""
        squares, dof = 0.0, 0
        for values in (self.chosen_values, self.baseline_values):
            if len(values) > 1:
                squares += float(((np.asarray(values) - np.mean(values)) ** 2).sum())
                dof += len(values) - 1
        return (math.sqrt(squares / dof) if dof else float("nan")), dof

    def difference(self) -> float:
        """How much better the chosen mean is than the baseline's, in the metric's own units (> 0: better)."""
        return metric_sign(self.metric) * (float(np.mean(self.baseline_values)) - float(np.mean(self.chosen_values)))

    def in_noise_units(self) -> float:
        sd, _ = self.noise()
        return self.difference() / sd if sd > 0 else float("nan")

    def separable(self) -> Optional[bool]:
        """Whether the difference exceeds the 95% band of a pooled two-sample t test; None without noise."""
        sd, dof = self.noise()
        if not dof or not sd > 0:
            return None
        band = stats.t.ppf(0.975, dof) * sd * math.sqrt(1 / len(self.chosen_values) + 1 / len(self.baseline_values))
        return bool(abs(self.difference()) > band)

    def line(self) -> str:
        if self.same:
            return f"baseline: the chosen augmentation is the baseline recipe {self.baseline}"
        sd, dof = self.noise()
        n_c, n_b = len(self.chosen_values), len(self.baseline_values)
        head = (f"baseline {self.baseline}: {self.metric} {np.mean(self.baseline_values):.4f}, test_loss "
                f"{np.mean(self.baseline_test):.4f} ({n_b} seeds) | chosen: {self.metric} "
                f"{np.mean(self.chosen_values):.4f}, test_loss {np.mean(self.chosen_test):.4f} ({n_c} seeds)")
        verdict = self.separable()
        if verdict is None:
            return head + " | seed noise unknown (1 seed each): not separable"
        better = "better" if self.difference() > 0 else "worse"
        judged = (f"chosen {better} by {abs(self.in_noise_units()):.1f} seed sd" if verdict
                  else "not separable")
        return head + f" | {judged} (seed sd {sd:.4f}, {dof} dof)"

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        sd, dof = self.noise()
        out.update(noise_sd=sd, noise_dof=dof, difference=self.difference(), in_noise_units=self.in_noise_units(),
                   separable=self.separable(), line=self.line())
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "BaselineComparison":
        known = {"chosen", "baseline", "metric", "chosen_values", "baseline_values", "chosen_test",
                 "baseline_test", "seeds"}
        return cls(**{k: v for k, v in raw.items() if k in known})


def baseline_points(best: TrialRow, baseline: str, seeds: int, first: int) -> list[dict[str, Any]]:
    """The trials to run: the baseline at the chosen trial's seed `first` and the next `seeds - 1`,
    the chosen augmentation at those next seeds; all at the chosen trial's hyperparameters."""
    points = [{"augmentation": baseline, "seed": first + i, **best.hyperparameters} for i in range(seeds)]
    points += [{"augmentation": best.augmentation, "seed": first + i, **best.hyperparameters}
               for i in range(1, seeds)]
    return points


def compare(best: TrialRow, baseline: str, rows: Sequence[TrialRow], metric: str, seeds: int,
            first: int) -> BaselineComparison:
    """The comparison from the chosen trial (trained at seed `first`) and the baseline phase's
    rows (usable rows only)."""
    wanted = [first + i for i in range(seeds)]
    by_point = {(r.augmentation, r.seed): r for r in rows if r.usable(metric)}
    chosen = [best] + [by_point[(best.augmentation, s)] for s in wanted[1:] if (best.augmentation, s) in by_point]
    recipe = [by_point[(baseline, s)] for s in wanted if (baseline, s) in by_point]
    if best.augmentation == baseline:  # nothing was trained: the comparison is the chosen trial with itself
        recipe = chosen
    return BaselineComparison(best.augmentation, baseline, metric,
                              [float(r.metric(metric)) for r in chosen], [float(r.metric(metric)) for r in recipe],
                              [float(r.test_loss) for r in chosen if r.test_loss is not None],
                              [float(r.test_loss) for r in recipe if r.test_loss is not None], wanted)
