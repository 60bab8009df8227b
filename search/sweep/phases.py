"""The sweep's Tune phases, each one typed object: the search (Optuna + ASHA/FIFO, or PBT), the
grids (the sentinel audit's batches, a validation sweep's every candidate x seed) and the recipe
baseline. A phase owns its experiment from start to rows: it builds its tuner, or restores the
saved experiment (after the repairs of search/sweep/ray_repair.py), fits it, tops up the trials a
restore lost in rounds of their own, records each step in the sweep state, and reads its rows.

A phase is given its record in the state (`PhaseRecord`), so a killed driver's `--resume`
restores the same experiments in the same order.
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Optional, Union

from ray import tune

from augtune.search.results.baseline import BASELINE_PHASE
from augtune.search.results.trials import TrialRow
from augtune.search.standalone.proxy_job import job_dir
from augtune.search.sweep.baseline_in_search import merges_baseline
from augtune.search.sweep.ray_repair import prepare_restore, remove_stand_ins
from augtune.search.sweep.state import Point, PhaseRecord, SweepState, TopUp
from augtune.search.sweep.tuners import (TUNE_INTERRUPTED, build_baseline_tuner, build_grid_tuner, build_tuner,
                                         collect_trials, grid_points, method_trainable, missing_points,
                                         search_trainable, storage)
from augtune.search.sweep_config import SweepConfig

Lost = Union[int, list[Point]]  # what a restore lost: a trial count or the exact grid points


class SweepInterrupted(Exception):
    """Ctrl-C during a Tune phase: Tune saved its state; `--resume` continues."""


class TunePhase:
    """One Tune experiment of the sweep and its top-up rounds. A subclass says what its tuner is
    (`build`), what a restore lost (`lost`), how many trials it asks for (`expected`) and which
    trainable restores it (`trainable`); `run` does the rest, the same way for every phase."""
    label = "search"  # the phase of its rows (TrialRow.phase)

    def __init__(self, cfg: SweepConfig, state: SweepState, record: PhaseRecord, teacher_path: Optional[Path],
                 callback):
        self.cfg, self.state, self.record = cfg, state, record
        self.teacher_path, self.callback = teacher_path, callback

    # ---- what a phase is
    @property
    def expected(self) -> int:
        raise NotImplementedError

    def trainable(self):
        return method_trainable(self.cfg, self.teacher_path)

    def build(self, experiment: str, lost: Optional[Lost], round_number: int, grids: list):
        """The tuner of experiment `experiment`: the whole phase (lost None) or top-up round
        `round_number` of what the restores lost (`grids`: the results so far)."""
        raise NotImplementedError

    def lost(self, grids: list) -> Lost:
        """What the finished `grids` lack of the phase (falsy: nothing)."""
        raise NotImplementedError

    def counted(self, grid) -> int:
        """The trials of `grid` that `expected` counts."""
        return len(grid)

    # ---- how every phase runs
    def run(self) -> list:
        """The phase's experiment (restored or built), then its top-up rounds: those already in
        the record restored in order, then, while something is lost, a new round. Returns the
        result grids, the experiment's first."""
        grids = [self._fit(self.record, None, 0, [], self.expected)]
        for number in itertools.count(1):
            if number > len(self.record.topups):
                missing = self.lost(grids)
                if not missing:
                    break
                self.record.topups.append(TopUp(f"{self.record.experiment}-topup{number}", missing))
                self._save()
            topup = self.record.topups[number - 1]
            print(f"\nrunning the {topup.size} trial(s) the interrupted experiment lost (top-up {number})")
            grids.append(self._fit(topup, topup.lost, number, grids, topup.size))
        return grids

    def rows(self, grids: list) -> list[TrialRow]:
        """Every trial of the phase; each row names the experiment that trained it (where its
        checkpoints are)."""
        return [t for grid in grids for t in collect_trials(grid, phase=self.label,
                                                            experiment=Path(grid.experiment_path).name)]

    def _save(self) -> None:
        self.state.save(job_dir(self.cfg))

    def _fit(self, target: Union[PhaseRecord, TopUp], lost: Optional[Lost], round_number: int, grids: list,
             expected: int):
        tuner, restored = self._restore_or_build(target, lost, round_number, grids)
        TUNE_INTERRUPTED.clear()
        grid = tuner.fit()
        remove_stand_ins(grid.experiment_path)
        if (TUNE_INTERRUPTED.is_set() or grid.num_terminated + grid.num_errors < len(grid)
                or (self.counted(grid) < expected and not restored)):
            raise SweepInterrupted(f"{grid.num_terminated} of {expected} trials finished")
        return grid  # a restored experiment may end short (trials it had not saved): `run` tops up

    def _restore_or_build(self, target: Union[PhaseRecord, TopUp], lost: Optional[Lost], round_number: int,
                          grids: list):
        """Tune's saved experiment `target.experiment` restored when it can be; else a new one,
        under a new name (recorded in the state) when an unusable one is in the way."""
        path = f"{storage(self.cfg).rstrip('/')}/{target.experiment}"
        prepare_restore(path)
        if tune.Tuner.can_restore(path):
            try:
                return tune.Tuner.restore(path, trainable=self.trainable(), resume_errored=True), True
            except Exception as exc:  # Ray raises many kinds on a damaged experiment
                print(f"warning: could not restore {path} ({type(exc).__name__}: {exc}); starting its trials again")
                target.experiment = f"{target.experiment}-again"
                self._save()
        elif "://" not in path and Path(path).exists():  # nothing restorable there: do not write over it
            target.experiment = f"{target.experiment}-again"
            self._save()
        return self.build(target.experiment, lost, round_number, grids), False


class SearchPhase(TunePhase):
    """The search over the survivors: Optuna TPE + ASHA/FIFO or random search, or a PBT
    population. A top-up draws the number of trials a restore lost, with its own seed."""

    def __init__(self, cfg: SweepConfig, state: SweepState, teacher_path: Optional[Path], callback):
        super().__init__(cfg, state, state.search, teacher_path, callback)
        self.survivors = state.survivors

    @property
    def expected(self) -> int:
        return self.cfg.search.num_samples

    def trainable(self):
        return search_trainable(self.cfg, self.teacher_path)  # a PBT member records its schedule

    def build(self, experiment, lost, round_number, grids):
        tried = [t.augmentation for t in self.rows_of(grids)]
        # the experiment goes on with the recipe baseline's points; a top-up round does not (the
        # driver trains what the baseline lacks)
        baseline_after = self.state.audit_rows() if round_number == 0 and merges_baseline(self.cfg) else None
        return build_tuner(self.cfg, self.survivors, self.teacher_path, self.callback, experiment,
                           num_samples=lost, tried=tried, top_up=round_number, baseline_after=baseline_after)

    def lost(self, grids):
        return max(0, self.cfg.search.num_samples - sum(self.counted(grid) for grid in grids))

    def counted(self, grid) -> int:
        return len(self.rows_of([grid]))

    @staticmethod
    def rows_of(grids: list) -> list[TrialRow]:
        """The search's rows (phase "search", no experiment: its trials' checkpoints are in the grids)."""
        return [t for grid in grids for t in collect_trials(grid) if t.phase == "search"]

    @staticmethod
    def baseline_rows_of(grids: list) -> list[TrialRow]:
        """The recipe baseline's rows the search's experiment trained after its own trials
        (search/sweep/baseline_in_search.py), the experiment named."""
        return [t for grid in grids for t in collect_trials(grid, experiment=Path(grid.experiment_path).name)
                if t.phase == BASELINE_PHASE]

    def rows(self, grids):
        return self.rows_of(grids)


class GridPhase(TunePhase):
    """Fixed (augmentation, seed) points at the config's own hyperparameters, trained to the end
    (no early stopping): a validation sweep's every candidate x seed, or one batch of the sentinel
    audit. A top-up runs exactly the points a restore lost."""

    def __init__(self, cfg: SweepConfig, state: SweepState, record: PhaseRecord, teacher_path: Optional[Path],
                 callback, candidates: list[str], seeds: int, label: str):
        super().__init__(cfg, state, record, teacher_path, callback)
        self.candidates, self.seeds, self.label = candidates, seeds, label
        self.points = grid_points(cfg, candidates, seeds)

    @property
    def expected(self) -> int:
        return len(self.points)

    def build(self, experiment, lost, round_number, grids):
        return build_grid_tuner(self.cfg, self.candidates, self.seeds, self.teacher_path, self.callback, experiment,
                                points=lost)

    def lost(self, grids):
        return missing_points(grids, self.points)


class ValidationPhase(GridPhase):
    """A validation sweep's search: every survivor x `search.seeds`, in the search's record."""

    def __init__(self, cfg: SweepConfig, state: SweepState, teacher_path: Optional[Path], callback):
        super().__init__(cfg, state, state.search, teacher_path, callback, state.survivors, cfg.search.seeds,
                         label="search")

    def rows(self, grids):
        return SearchPhase.rows_of(grids)


class BaselinePhase(TunePhase):
    """The recipe baseline's points (search/results/baseline.py): the recipe, and the chosen
    augmentation again, at the chosen trial's hyperparameters and given seeds. A top-up runs
    exactly the points a restore lost."""
    label = BASELINE_PHASE

    def __init__(self, cfg: SweepConfig, state: SweepState, teacher_path: Optional[Path], callback,
                 points: list[Point]):
        super().__init__(cfg, state, state.baseline, teacher_path, callback)
        self.points = points

    @property
    def expected(self) -> int:
        return len(self.points)

    def build(self, experiment, lost, round_number, grids):
        return build_baseline_tuner(self.cfg, self.points if lost is None else lost, self.teacher_path,
                                    self.callback, experiment)

    def lost(self, grids):
        return missing_points(grids, self.points)


def phase_results(cfg: SweepConfig, experiment: str, teacher_path: Optional[Path]):
    """The results (checkpoints included) of a finished phase, read back from its saved
    experiment without running anything."""
    path = f"{storage(cfg).rstrip('/')}/{experiment}"
    return tune.Tuner.restore(path, trainable=method_trainable(cfg, teacher_path)).get_results()
