"""Ray's OptunaSearch, tolerant of trials it never suggested.

A restored experiment can hold a trial that was created after the searcher's last saved state
(the driver was stopped between the two saves). Ray's OptunaSearch then raises KeyError on that
trial's first result and the whole resume fails. Here such a trial simply does not inform TPE.
"""
from __future__ import annotations

from typing import Optional

from ray.tune.search.optuna import OptunaSearch


class TolerantOptunaSearch(OptunaSearch):
    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._ot_trials:
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        if trial_id in self._ot_trials:
            super().on_trial_complete(trial_id, result, error)
