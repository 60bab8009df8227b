"""Which trials count: one definition shared by the sweep's best pick, `augtune best` and
`augtune report`.

A trial row is a mapping with `epochs`, the final metrics (`val_loss`, `test_loss`, ...) and, from
Ray, `error` / `diverged`. Usable: no error, not diverged, the metric a finite number. Comparable:
usable and trained as long as the longest usable trial, since a trial stopped early by ASHA is
cut short and its loss is not comparable with a full-length one.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Optional

from augtune.search.tracking import CANDIDATE_TAG, PARENT_TAG, STAGE_TAG, Tracker

FINAL_METRICS = ("val_loss", "val_acc", "test_loss", "test_acc")


def usable(row: Mapping[str, Any], metric: str) -> bool:
    value = row.get(metric)
    return (not row.get("error") and not row.get("diverged") and isinstance(value, (int, float))
            and math.isfinite(value))


def completed_trials(rows: Iterable[Mapping[str, Any]], metric: str) -> list:
    """The usable rows trained to the full length (the longest among the usable ones)."""
    pool = [r for r in rows if usable(r, metric)]
    if not pool:
        return []
    full = max(r.get("epochs") or 0 for r in pool)
    return [r for r in pool if (r.get("epochs") or 0) == full]


def trial_rows(tracker: Tracker, parent_run_id: Optional[str] = None) -> list[dict[str, Any]]:
    """FINISHED trial runs of an experiment (or of one sweep) as rows: diverged trials are FAILED
    runs, so they are not among them."""
    query = f"tags.`{STAGE_TAG}` = 'trial' and attributes.status = 'FINISHED'"
    if parent_run_id:
        query += f" and tags.`{PARENT_TAG}` = '{parent_run_id}'"
    rows = []
    for run in tracker.runs(query):
        metrics = run.data.metrics
        rows.append({"run_id": run.info.run_id, "run_name": run.info.run_name,
                     "augmentation": run.data.tags.get(CANDIDATE_TAG, "?"), "parent": run.data.tags.get(PARENT_TAG),
                     "epochs": metrics.get("epochs_trained") or 0, "t_stddev": metrics.get("t_stddev"),
                     **{k: metrics.get(f"final_{k}") for k in FINAL_METRICS}})
    return rows
