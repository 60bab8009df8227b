"""A driver-side Ray Tune callback that logs each trial as an MLflow child run of the sweep.

Logs only what users query: the trial's sampled values as params (and numeric ones as metrics,
so they can be filtered), the per-epoch curves (train_*, test_*, val_*, lr, images/s) with
step = epoch, the final test/val metrics, the candidate's T.stddev.
Ray's own MLflowLoggerCallback logs every auto-filled field and does not nest runs.

Resuming a sweep calls on_trial_start again for restored trials: the existing run (found by its
trial-id tag) is reused and epochs already logged are skipped, so nothing is logged twice.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Mapping, Optional

from ray.tune import Callback

from augtune.search.results import schedule
from augtune.search.results.trials import PHASE_KEY
from augtune.search.results.tracking import (CANDIDATE_TAG, DIVERGED_TAG, PAIR_TAG, PHASE_TAG, SCHEDULE_TAG, TRIAL_TAG,
                                     Tracker)
from augtune.trainables.tune_trainables import EARLIER_EPOCHS

CURVE_PREFIXES = ("train_", "test_", "val_", "stage", "schedule.")
CURVE_KEYS = ("images_per_second", "lr", "epoch_seconds", "epoch_cpu_seconds")


class TrialLogger(Callback):
    def __init__(self, tracking_uri: str, experiment: str, parent_run_id: str, pair: str,
                 proxy_scores: Mapping[str, float], phase: str = "search"):
        self.tracking_uri, self.experiment = tracking_uri, experiment
        self.parent_run_id, self.pair = parent_run_id, pair
        self.proxy_scores = dict(proxy_scores)
        self.phase = phase  # "search", "audit" or "baseline"; a trial's config may say otherwise (PHASE_KEY)
        self._tracker: Optional[Tracker] = None
        self.run_ids: dict[str, str] = {}
        self.logged_steps: dict[str, int] = {}

    def __getstate__(self):  # Ray pickles callbacks with the experiment state; clients do not pickle
        state = dict(self.__dict__)
        state["_tracker"] = None
        return state

    @property
    def tracker(self) -> Tracker:
        if self._tracker is None:
            self._tracker = Tracker(self.tracking_uri, self.experiment)
        return self._tracker

    def _existing_run(self, trial_id: str):
        found = self.tracker.runs(f"tags.`{TRIAL_TAG}` = '{trial_id}' and "
                                  f"tags.`mlflow.parentRunId` = '{self.parent_run_id}'")
        return found[0] if found else None

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        trial_id = trial.trial_id
        if trial_id in self.run_ids:
            return
        config = dict(trial.config)
        candidate = config.get("augmentation", "")
        numeric = {f"param.{k}": v for k, v in config.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if candidate in self.proxy_scores:
            numeric["t_stddev"] = self.proxy_scores[candidate]
        existing = self._existing_run(trial_id)
        if existing is not None:
            run_id = existing.info.run_id
            if not existing.data.params:  # a driver killed between creating the run and logging its values
                self.tracker.log(run_id, metrics=numeric, params=config)
            steps = self.tracker.client.get_metric_history(run_id, "test_loss")
            self.logged_steps[trial_id] = max((m.step for m in steps), default=0)
            self.tracker.client.update_run(run_id, status="RUNNING")
        else:
            run_id = self.tracker.start_run(f"trial:{candidate}:{trial_id}", "trial", self.parent_run_id,
                                            {CANDIDATE_TAG: candidate, TRIAL_TAG: trial_id, PAIR_TAG: self.pair,
                                             PHASE_TAG: config.get(PHASE_KEY, self.phase)})
            self.tracker.log(run_id, metrics=numeric, params=config)
            self.logged_steps[trial_id] = 0
        self.run_ids[trial_id] = run_id

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        run_id = self.run_ids.get(trial.trial_id)
        if run_id is not None and result.get(EARLIER_EPOCHS):
            filled = self._fill_from_lineage(run_id, json.loads(result[EARLIER_EPOCHS]))
            self.logged_steps[trial.trial_id] = max([self.logged_steps.get(trial.trial_id, 0), *filled])
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        if run_id is None or step <= self.logged_steps.get(trial.trial_id, 0):
            return
        curves = {k: v for k, v in result.items() if k in CURVE_KEYS or k.startswith(CURVE_PREFIXES)}
        self.tracker.log(run_id, metrics=curves, step=step,
                         tags={DIVERGED_TAG: "true"} if result.get("diverged") else None)
        self.logged_steps[trial.trial_id] = step

    def _finish(self, trial, status: str) -> None:
        run_id = self.run_ids.get(trial.trial_id)
        if run_id is None:
            return
        last = trial.last_result or {}
        final = {f"final_{k}": v for k, v in last.items() if k.startswith(("test_", "val_"))}
        final["epochs_trained"] = last.get("epoch", 0)
        final["trial_seconds"] = last.get("time_total_s", 0.0)
        self.tracker.log(run_id, metrics=final, step=int(final["epochs_trained"]))
        if last.get("lineage_curves"):
            self._fill_from_lineage(run_id, json.loads(last["lineage_curves"]))
        if last.get("schedule_log"):
            self._log_schedule(run_id, trial, json.loads(last["schedule_log"]))
        self.tracker.end_run(run_id, status)

    def _fill_from_lineage(self, run_id: str, curves: list) -> list[int]:
        """Epochs the run lacks, logged from the runner's curves: a PBT member that took a donor's
        later checkpoint never reported the epochs between (its lineage has the donor's metrics of
        those epochs, which made the network it ended with); a data-parallel trial resumed from a
        checkpoint its killed driver never logged the epoch of. So the run has every epoch once;
        epochs it logged stay as logged. Returns the epochs it logged."""
        logged = {m.step for m in self.tracker.client.get_metric_history(run_id, "lr")}
        filled = []
        for row in curves:
            epoch = int(row["epoch"])
            if epoch not in logged:
                self.tracker.log(run_id, metrics={k: v for k, v in row.items() if k != "epoch"}, step=epoch)
                filled.append(epoch)
        return filled

    def _log_schedule(self, run_id: str, trial, rows: list) -> None:
        """A PBT member's schedule (its lineage's values per epoch) as a table, a plot and the
        config it ended with; its candidate tag becomes the augmentation it ended with (the
        params logged at its start are its first values, kept as they were)."""
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            self.tracker.log_file(run_id, schedule.write_csv(rows, folder / "schedule.csv"))
            self.tracker.log_file(run_id, schedule.plot(rows, folder / "schedule.png",
                                                        f"trial {trial.trial_id}: schedule"))
        self.tracker.log_json(run_id, "schedule.json", rows)
        self.tracker.log_json(run_id, "final_config.json", dict(trial.config))
        self.tracker.log(run_id, tags={CANDIDATE_TAG: str(trial.config.get("augmentation", "")),
                                       SCHEDULE_TAG: "pbt"})

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        # a diverged trial (NaN/inf loss) ended early: FAILED, so best/report leave it out
        self._finish(trial, "FAILED" if (trial.last_result or {}).get("diverged") else "FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._finish(trial, "FAILED")
