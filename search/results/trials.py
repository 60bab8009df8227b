"""Trial rows and which trials count: one typed row and one definition shared by the sweep's best
pick, its compute summary, the audit, `augtune best` and `augtune report`.

A `TrialRow` is one trial, read from a Ray result grid (`from_result`) or from its MLflow run
(`trial_rows`). Usable: no error, not diverged, the metric a finite number. Comparable: usable and
trained as long as the longest usable trial, since a trial stopped early by ASHA is cut short and
its loss is not comparable with a full-length one.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Iterable, Literal, Optional, Sequence

from augtune.search.selection.metric import metric_sign
from augtune.search.results.tracking import (CANDIDATE_TAG, PARENT_TAG, PHASE_TAG, STAGE_TAG, SUPERSEDED_TAG, TRIAL_TAG,
                                     Tracker)

FINAL_METRICS = ("val_loss", "val_acc", "test_loss", "test_acc")
# a trial config's phase where it is not its experiment's own (the baseline's late trials of the
# search: search/sweep/baseline_in_search.py)
PHASE_KEY = "phase"
# what Ray's trial config holds besides the sampled hyperparameters
_NOT_HYPERPARAMETERS = ("augmentation", "seed", "augmentation_kind", PHASE_KEY)


@dataclass
class TrialRow:
    augmentation: str
    epochs: int = 0
    val_loss: Optional[float] = None
    val_acc: Optional[float] = None
    test_loss: Optional[float] = None
    test_acc: Optional[float] = None
    trial_id: Optional[str] = None
    seed: Optional[int] = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    diverged: bool = False
    error: Optional[str] = None
    phase: Literal["search", "audit", "baseline"] = "search"
    experiment: Optional[str] = None  # the Tune experiment that trained it (an audit phase's, to read its weights)
    run_id: Optional[str] = None  # rows read from MLflow
    run_name: Optional[str] = None
    parent: Optional[str] = None
    t_stddev: Optional[float] = None

    def metric(self, name: str) -> Optional[float]:
        if name not in FINAL_METRICS:
            raise ValueError(f"{name!r} is not a final trial metric ({', '.join(FINAL_METRICS)})")
        return getattr(self, name)

    def usable(self, metric: str) -> bool:
        value = self.metric(metric)
        return not self.error and not self.diverged and isinstance(value, (int, float)) and math.isfinite(value)

    @property
    def seconds_per_epoch(self) -> Optional[float]:
        return self.seconds / self.epochs if self.epochs and self.seconds else None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "TrialRow":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})

    @classmethod
    def from_result(cls, result, **where: Any) -> "TrialRow":
        """A Ray Tune `Result`; `where` sets phase / experiment."""
        return cls.from_trial(result.config or {}, result.metrics or {},
                              str(result.error) if result.error else None, **where)

    @classmethod
    def from_trial(cls, config: dict[str, Any], metrics: dict[str, Any], error: Optional[str] = None,
                   **where: Any) -> "TrialRow":
        """A trial's config and its last result; the phase is `where`'s, else the config's
        (PHASE_KEY), else the search's."""
        where.setdefault("phase", config.get(PHASE_KEY, "search"))
        return cls(augmentation=config.get("augmentation"), seed=config.get("seed"),
                   trial_id=metrics.get("trial_id"), epochs=int(metrics.get("epoch", 0) or 0),
                   hyperparameters=_hyperparameters(config), seconds=float(metrics.get("time_total_s", 0.0) or 0.0),
                   diverged=bool(metrics.get("diverged", False)), error=error,
                   **{k: metrics.get(k) for k in FINAL_METRICS}, **where)

    @property
    def point(self) -> tuple:
        """What trained it: augmentation, seed and hyperparameters (see `point_of`)."""
        return point_of({"augmentation": self.augmentation, "seed": self.seed, **self.hyperparameters})


def _hyperparameters(config: dict[str, Any]) -> dict[str, Any]:
    """The sampled hyperparameters of a trial config (Optuna's variant choices left out)."""
    return {k: v for k, v in config.items() if k not in _NOT_HYPERPARAMETERS and not k.endswith(".variant")}


def point_of(config: dict[str, Any]) -> tuple:
    """A trial config as a comparable key: augmentation, seed, and the hyperparameters by name."""
    return config.get("augmentation"), config.get("seed"), tuple(sorted(_hyperparameters(config).items()))


def completed_trials(rows: Iterable[TrialRow], metric: str) -> list[TrialRow]:
    """The usable rows trained to the full length (the longest among the usable ones)."""
    pool = [r for r in rows if r.usable(metric)]
    if not pool:
        return []
    full = max(r.epochs for r in pool)
    return [r for r in pool if r.epochs == full]


def pick_best(rows: Sequence[TrialRow], metric: str) -> Optional[TrialRow]:
    """The best of the comparable trials: failed, diverged and ASHA-stopped trials never count."""
    pool = completed_trials(rows, metric)
    sign = metric_sign(metric)
    return min(pool, key=lambda r: sign * r.metric(metric)) if pool else None


def trial_rows(tracker: Tracker, parent_run_id: Optional[str] = None) -> list[TrialRow]:
    """FINISHED trial runs of an experiment (or of one sweep) as rows: diverged trials are FAILED
    runs, so they are not among them."""
    query = f"tags.`{STAGE_TAG}` = 'trial' and attributes.status = 'FINISHED'"
    if parent_run_id:
        query += f" and tags.`{PARENT_TAG}` = '{parent_run_id}'"
    rows = []
    for run in tracker.runs(query):
        if run.data.tags.get(PHASE_TAG) == "baseline":  # the recipe baseline's runs compare, they are not chosen
            continue
        if SUPERSEDED_TAG in run.data.tags:  # Ray forgot it after it finished; a top-up trained it again
            continue
        metrics = run.data.metrics
        rows.append(TrialRow(augmentation=run.data.tags.get(CANDIDATE_TAG, "?"), run_id=run.info.run_id,
                             run_name=run.info.run_name, parent=run.data.tags.get(PARENT_TAG),
                             trial_id=run.data.tags.get(TRIAL_TAG),
                             epochs=int(metrics.get("epochs_trained") or 0), t_stddev=metrics.get("t_stddev"),
                             seconds=metrics.get("trial_seconds") or 0.0,
                             **{k: metrics.get(f"final_{k}") for k in FINAL_METRICS}))
    return rows
