"""The recipe baseline as late trials of the search's own Tune experiment.

The baseline (search/results/baseline.py) trains at the chosen trial's values, so it cannot start
before the search's last trial has ended. Run as a Tune experiment of its own, it started fresh
actors (a Ray worker that held a trial actor exits with it; Tune's actors carry a runtime env, so
none lands in a worker Ray started ahead) and left a slot idle while ASHA's last trial ran alone.

Here the search's searcher goes on after its own trials (`SearchThenBaseline`), on the actors the
search has warmed:
- once it has drawn all its trials, a free slot trains the baseline points of the best full-length
  trial so far: a guess, since a trial still running may beat it;
- once every search trial has ended, the points the chosen trial lacks follow, then it is done.
A guess that lost trains points the comparison does not use: they stay logged as baseline runs
and count in the compute spent. ASHA (`SearchOnlyASHA`) leaves the baseline's trials out of its
rungs: they train to the end, like the baseline's own phase.

The driver checks the chosen trial's points against what ran (search/sweep/driver.stage_baseline)
and trains any missing in a baseline phase of their own: after a resume (the searcher's record of
running trials is not saved, so it may take a restored trial's end for the search's end) or when
the chosen trial is a top-up round's, or with random search.
"""
from __future__ import annotations

import copy
from typing import Any, Optional, Sequence

from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search import Searcher
from ray.tune.search.util import _set_search_properties_backwards_compatible

from augtune.search.results.baseline import BASELINE_PHASE, baseline_points
from augtune.search.results.trials import PHASE_KEY, TrialRow, pick_best, point_of
from augtune.search.sweep_config import SweepConfig


def is_baseline(config: Optional[dict]) -> bool:
    return (config or {}).get(PHASE_KEY) == BASELINE_PHASE


def merges_baseline(cfg: SweepConfig) -> bool:
    """Whether the search's experiment trains the baseline too: a recipe baseline is wanted and the
    search is Optuna's (a searcher to go on from) over ASHA or FIFO (PBT members follow schedules:
    no baseline; random search's generator is not a searcher to wrap)."""
    return cfg.baseline is not None and cfg.search.algorithm == "optuna" and cfg.search.scheduler.kind != "pbt"


class SearchThenBaseline(Searcher):
    """`search`'s `search_trials` suggestions, then the recipe baseline's points (see the module).
    At most `max_concurrent` trials of either kind run at once. `earlier`: full-length trials the
    chosen one may be among that this experiment does not train (the sentinel audit's)."""

    def __init__(self, search: Searcher, search_trials: int, max_concurrent: int, metric: str, mode: str,
                 recipe: str, seeds: int, default_seed: int, full_epochs: int, earlier: Sequence[TrialRow] = ()):
        super().__init__(metric=metric, mode=mode)
        # `searcher`, as Ray's own wrappers name it: Tune looks through that attribute for a
        # ConcurrencyLimiter and then lets that many trials wait for actors at once (else one)
        self.searcher, self.search_trials, self.max_concurrent = search, search_trials, max_concurrent
        self.recipe, self.seeds, self.default_seed, self.full_epochs = recipe, seeds, default_seed, full_epochs
        self.earlier = list(earlier)
        self.search_drawn = 0
        self.configs: dict[str, dict] = {}  # trial id -> config, every trial suggested here
        self.ended: dict[str, TrialRow] = {}  # the search's ended trials
        self.issued: set = set()  # the baseline points suggested (point_of keys)
        self.running: set[str] = set()  # not saved: after a restore Tune's own trials say what runs

    # ---- Tune's searcher interface
    def set_search_properties(self, metric: Optional[str], mode: Optional[str], config: dict, **spec) -> bool:
        _set_search_properties_backwards_compatible(self.searcher.set_search_properties, metric, mode, config, **spec)
        return super().set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str):
        full = len(self.running) >= self.max_concurrent
        if self.search_drawn < self.search_trials:
            if full:
                return None
            config = self.searcher.suggest(trial_id)
            if config is None:
                return None
            if config != Searcher.FINISHED:
                self.search_drawn += 1
                self._start(trial_id, config)
                return config
            self.search_drawn = self.search_trials  # the searcher has no more to give
        over = all(is_baseline(self.configs.get(t)) for t in self.running)  # no search trial runs
        point = self._next_point(final=over)
        if point is None:
            return Searcher.FINISHED if over else None  # else: wait for the search's trials
        if full:
            return None
        self.issued.add(point_of(point))
        config = {**point, PHASE_KEY: BASELINE_PHASE}
        self._start(trial_id, config)
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        config = self._config_of(trial_id, result)
        if trial_id not in self.ended and trial_id not in self.running:  # a restored trial runs again
            self._start(trial_id, config)
        if not is_baseline(config):
            self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        config = self._config_of(trial_id, result)
        self.running.discard(trial_id)
        if is_baseline(config):
            return
        if config is not None:
            self.ended[trial_id] = TrialRow.from_trial(config, result or {}, "error" if error else None)
        self.searcher.on_trial_complete(trial_id, result=result, error=error)

    def get_state(self) -> dict:
        """This wrapper's record, without the search's own searcher: Tune saves each wrapper's
        state (`searcher` chain) beside the innermost searcher's, and restores them alike."""
        return copy.deepcopy({k: v for k, v in self.__dict__.items()
                              if k not in ("searcher", "running")})

    def set_state(self, state: dict) -> None:
        self.__dict__.update(state)
        self.running = set()

    # ---- which point next
    def chosen(self, final: bool) -> Optional[TrialRow]:
        """The final choice (the driver's rule, search/results/trials.pick_best, over the search's
        ended trials and `earlier`), or while trials run, the best that has trained to full length."""
        rows = [*self.earlier, *self.ended.values()]
        if not final:
            rows = [r for r in rows if r.epochs >= self.full_epochs]
        return pick_best(rows, self.metric)

    def _next_point(self, final: bool) -> Optional[dict[str, Any]]:
        best = self.chosen(final)
        if best is None or best.augmentation == self.recipe:  # the recipe chosen: nothing to compare
            return None
        first = self.default_seed if best.seed is None else int(best.seed)
        return next((p for p in baseline_points(best, self.recipe, self.seeds, first)
                     if point_of(p) not in self.issued), None)

    def _start(self, trial_id: str, config: Optional[dict]) -> None:
        self.configs[trial_id] = dict(config or {})
        self.running.add(trial_id)

    def _config_of(self, trial_id: str, result: Optional[dict]) -> Optional[dict]:
        """The trial's config: suggested here, or (a trial created after this searcher's last
        saved state) as Tune reports it with its results."""
        return self.configs.get(trial_id) or (result or {}).get("config")


class SearchOnlyASHA(ASHAScheduler):
    """ASHA over the search's trials; the baseline's late trials (`SearchThenBaseline`) are in no
    rung and train to the end."""

    def on_trial_add(self, tune_controller, trial) -> None:
        if not is_baseline(trial.config):
            super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if is_baseline(trial.config):
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        if not is_baseline(trial.config):
            super().on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial) -> None:
        if not is_baseline(trial.config):
            super().on_trial_remove(tune_controller, trial)
