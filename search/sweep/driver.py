"""`augtune sweep CONFIG`: teacher -> T.stddev of every candidate -> prune -> student trials on
Ray Tune (Optuna TPE + ASHA, or PBT) -> MLflow -> the best augmentation.

The driver is a sequence of stages over the typed sweep state (search/sweep/state.py); each Tune
phase is one object of search/sweep/phases.py. On a cluster's head node, search/submit.py runs it
as a script (`ray submit cluster.yaml search/submit.py -- CONFIG`).
"""
import itertools
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import yaml

from augtune.search.results.baseline import BaselineComparison, baseline_points, compare
from augtune.search.results.compute_spent import compute_summary
from augtune.search.results.tracking import (AUDIT_VERDICT_TAG, BASELINE_TAG, BASELINE_VERDICT_TAG,
                                             BEST_AUGMENTATION_TAG, PAIR_TAG, PARENT_TAG, SELECTED_ON_TAG,
                                             SUPERSEDED_TAG, TEACHER_CACHE_TAG, TRIAL_TAG, VALIDATE_PROXY_TAG,
                                             Tracker)
from augtune.search.results.trial_logger import TrialLogger
from augtune.search.results.trials import TrialRow, pick_best, point_of
from augtune.search.selection.proxy import ProxyScore, format_table
from augtune.search.selection.prune import Audit, AuditOutcome, proxy_cut
from augtune.search.standalone.proxy_job import check_tracking_uri, job_dir, load_checked_data, pair_name, run_proxy
from augtune.search.sweep.base_view_cache import fill_for_sweep
from augtune.search.sweep.phases import (BaselinePhase, GridPhase, SearchPhase, SweepInterrupted, ValidationPhase,
                                         phase_results)
from augtune.search.sweep.printing import TEST_SELECTION_WARNING, describe_best, format_audit, print_outcome
from augtune.search.sweep.state import STATE_FILE, AuditRecord, BaselineRecord, PhaseRecord, SweepState
from augtune.search.sweep.tuners import hand_data_to_trials, init_ray
from augtune.search.sweep_config import ConfigError, SweepConfig
from augtune.spaces.candidates import expand_candidates
from augtune.trainables.engine import save_checkpoint
from augtune.trainables.method import OwnTeacher
from augtune.trainables.runner import read_runner_state


@dataclass
class SweepOutcome:
    parent_run_id: str
    scores: list[ProxyScore]
    survivors: list[str]
    trials: list[TrialRow]
    best: Optional[TrialRow]
    compute: dict[str, float]
    interrupted: bool = False
    audit: Optional[dict[str, Any]] = None  # AuditOutcome.as_dict() when the pruning was audited
    baseline: Optional[dict[str, Any]] = None  # BaselineComparison.as_dict() when a baseline was trained


# ---------------------------------------------------------------- results

def log_best_student(cfg: SweepConfig, tracker: Tracker, parent: str, best: TrialRow, grids, data,
                     teacher_path: Optional[Path] = None) -> None:
    """The chosen trial's final student, in augtune's weights-only checkpoint format, as the
    artifact `student.pt` of its MLflow run (`augtune best --export` fetches it), whichever
    phase trained it (an audit trial's checkpoint is read from its restored experiment)."""
    if best.phase == "audit":
        grids = [phase_results(cfg, best.experiment, teacher_path)]
    result = next((r for g in grids for r in g if (r.metrics or {}).get("trial_id") == best.trial_id), None)
    runs = tracker.runs(f"tags.`{TRIAL_TAG}` = '{best.trial_id}' and tags.`{PARENT_TAG}` = '{parent}'")
    checkpoint = result.checkpoint if result is not None else None
    if checkpoint is None and result is not None and (result.metrics or {}).get("checkpoint_path"):
        from ray.tune import Checkpoint  # a multi-worker trial's: its Ray Train run's latest

        checkpoint = Checkpoint(result.metrics["checkpoint_path"])
    if checkpoint is None or not runs:
        return
    with checkpoint.as_directory() as folder, tempfile.TemporaryDirectory() as tmp:
        state = read_runner_state(folder)
        student = cfg.student.build(data.num_classes, data.channels)
        student.load_state_dict(state["modules"]["model"])
        tracker.log_file(runs[0].info.run_id, save_checkpoint(Path(tmp) / "student.pt", student,
                                                              cfg.student.model, data))


def supersede_forgotten(tracker: Tracker, parent: str, known_trial_ids: set) -> int:
    """FINISHED trial runs of this sweep that no phase's results hold: Ray forgot them after they
    finished (a restore from an older experiment state), and a top-up trained their work again.
    Tagged superseded, so the sweep's one run per trial is what best and report rank."""
    forgotten = [r for r in tracker.children(parent, "trial") if r.info.status == "FINISHED"
                 and r.data.tags.get(TRIAL_TAG) not in known_trial_ids and SUPERSEDED_TAG not in r.data.tags]
    for run in forgotten:
        tracker.client.set_tag(run.info.run_id, SUPERSEDED_TAG, "true")
    return len(forgotten)


def close_orphans(tracker: Tracker, parent: str) -> int:
    """Trial runs a killed driver left RUNNING (their trials were restarted under new ids or
    lost): closed as KILLED, so nothing stays RUNNING and best/report leave them out."""
    orphans = [r for r in tracker.children(parent, "trial") if r.info.status in ("RUNNING", "SCHEDULED")]
    for run in orphans:
        tracker.end_run(run.info.run_id, "KILLED")
    return len(orphans)


# ---------------------------------------------------------------- sentinel audit

def run_audit_phases(cfg: SweepConfig, state: SweepState, tracker: Tracker, teacher_path: Optional[Path],
                     callback) -> AuditOutcome:
    """Sentinels from the pruned candidates, trained beside the kept ones, one grid phase per
    batch the audit asks for (candidates x audit seeds at the config's hyperparameters); the
    verdict; the survivors for the search (the top_k audited candidates by the selection metric).
    A batch already trained (in the state) is read back, not trained again."""
    p = cfg.search.prune
    ranked = proxy_cut(sorted(state.scores, key=lambda s: s.rank), "none", 0, by=cfg.proxy.score)
    audit = Audit(ranked, state.kept, p.audit, metric=cfg.search.metric, seed=cfg.search.seed,
                  expand=p.on_disagreement == "expand", max_extra=p.max_extra, batch=cfg.search.max_concurrent,
                  keep=len(state.kept))
    for index in itertools.count():
        candidates = audit.next_batch()
        if candidates is None:
            break
        record = state.audit_phases[index] if index < len(state.audit_phases) else None
        if record is None or record.candidates != candidates:
            del state.audit_phases[index:]  # a batch the audit no longer asks for
            record = AuditRecord(f"{state.search.experiment}-audit-{index}", candidates=candidates)
            state.audit_phases.append(record)
            state.save(job_dir(cfg))
        if record.values is None:
            print(f"\naudit: training {', '.join(candidates)} ({p.audit_seeds} seeds each, the config's "
                  "hyperparameters)")
            phase = GridPhase(cfg, state, record, teacher_path, callback, candidates, p.audit_seeds, label="audit")
            record.rows = phase.rows(phase.run())
            record.values = {}
            for t in record.rows:
                if t.usable(cfg.search.metric):
                    record.values.setdefault(t.augmentation, []).append(float(t.metric(cfg.search.metric)))
            state.save(job_dir(cfg))
        audit.add(record.values)
    outcome = audit.outcome()
    parent = state.parent_run_id
    tracker.log_json(parent, "audit.json", outcome.as_dict())
    tracker.log(parent, params={"audit.sentinels": ",".join(outcome.sentinels) or "-",
                                "audit.expanded": ",".join(outcome.expanded) or "-",
                                "audit.beaten_by": ",".join(outcome.beaten_by) or "-"},
                metrics={"audit_disagreement": float(outcome.disagrees), "audit_noise_sd": outcome.noise_sd,
                         "audit_rank_kendall": outcome.rank_kendall, "audit_candidates": len(outcome.values)},
                tags={AUDIT_VERDICT_TAG: outcome.verdict()})
    return outcome


# ---------------------------------------------------------------- driver: stages over the typed state

def start_sweep(cfg: SweepConfig, tracker: Tracker) -> SweepState:
    """The parent run and the first state (stage 'proxy'), saved at once: a driver killed from
    here on can be resumed."""
    validate = cfg.search.validate_proxy
    parent = tracker.start_run(f"sweep:{cfg.name}", "sweep", tags={PAIR_TAG: pair_name(cfg),
                                                                 VALIDATE_PROXY_TAG: str(validate)})
    state = SweepState(parent_run_id=parent, validate_proxy=validate,
                       search=PhaseRecord(f"sweep-{time.strftime('%Y%m%d-%H%M%S')}"))
    state.save(job_dir(cfg))
    tracker.log(parent, params={"config": yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)})
    tracker.log_json(parent, "config.json", cfg.model_dump(mode="json"))
    return state


def _discard_partial_stage(cfg: SweepConfig, tracker: Tracker, parent: str) -> None:
    """A driver killed during teacher/proxy work may have logged some child runs: delete them
    (MLflow's soft delete, restorable) before the stage runs again, so each appears once."""
    own = cfg.method.teacher if isinstance(cfg.method.teacher, OwnTeacher) else None
    for stage in ("proxy", *([own.stage] if own else [])):
        for run in tracker.children(parent, stage):
            tracker.client.delete_run(run.info.run_id)


def stage_proxy_and_prune(cfg: SweepConfig, data, tracker: Tracker, state: SweepState, progress: bool) -> None:
    """Teacher and T.stddev (methods with a teacher), pruning; the state moves on to 'search'.
    A method without a teacher has no proxy: every candidate goes to the trials."""
    parent = state.parent_run_id
    mode = cfg.prune_mode(state.validate_proxy)
    if mode == "fixed":  # the teacher only: nothing to score
        teacher_path = run_proxy(cfg, data, tracker, parent, progress, score=False).teacher_path
        scores, survivors = [], [expand_candidates([cfg.search.prune.candidate])[0].id]
    elif cfg.method.has_teacher:
        proxy = run_proxy(cfg, data, tracker, parent, progress)
        scores, teacher_path = proxy.scores, proxy.teacher_path
        survivors = proxy_cut(scores, mode, cfg.search.prune.top_k, by=cfg.proxy.score)
    else:
        scores, teacher_path = [], None
        survivors = [c.id for c in cfg.space.resolved()]
    tracker.log_json(parent, "pruned.json", {"kept": survivors,
                                             "pruned": [s.candidate for s in scores if s.candidate not in survivors]})
    tracker.log(parent, params={"prune.mode": mode, "prune.top_k": cfg.search.prune.top_k,
                                "survivors": ",".join(survivors)})
    state.stage, state.teacher_path = "search", str(teacher_path) if teacher_path else None
    state.scores, state.kept, state.survivors = list(scores), survivors, survivors
    state.audit_done = not (cfg.search.prune.audit and survivors != [s.candidate for s in scores])
    state.save(job_dir(cfg))


def stage_audit(cfg: SweepConfig, state: SweepState, tracker: Tracker, teacher_path: Optional[Path],
                score_of: dict[str, float]) -> AuditOutcome:
    """Sentinel audit of the pruning; the survivors of the search follow its outcome."""
    logger = TrialLogger(cfg.tracking.uri, cfg.experiment_name, state.parent_run_id, pair_name(cfg), score_of,
                         phase="audit")
    audit = run_audit_phases(cfg, state, tracker, teacher_path, logger)
    state.survivors, state.audit_done, state.audit = audit.survivors, True, audit.as_dict()
    state.save(job_dir(cfg))
    return audit


def stage_search(cfg: SweepConfig, state: SweepState, teacher_path: Optional[Path],
                 score_of: dict[str, float]) -> list:
    """The student trials on Ray (restored when the sweep is resumed, topped up where a restore
    lost trials): a validation sweep's grid of every candidate x seed, else the search. Returns
    the result grids."""
    callback = TrialLogger(cfg.tracking.uri, cfg.experiment_name, state.parent_run_id, pair_name(cfg), score_of)
    phase = (ValidationPhase if state.validate_proxy else SearchPhase)(cfg, state, teacher_path, callback)
    return phase.run()


def chosen_trial(cfg: SweepConfig, state: SweepState, trials: list[TrialRow]) -> Optional[TrialRow]:
    """The best trial by the selection metric among the search's and the audit's full-length
    trials: the same definition as `augtune best`."""
    return pick_best(trials + state.audit_rows(), cfg.search.metric)


def stage_baseline(cfg: SweepConfig, state: SweepState, tracker: Tracker, teacher_path: Optional[Path],
                   trials: list[TrialRow], grids: list, score_of: dict[str, float]) -> Optional[BaselineComparison]:
    """The recipe baseline (search/results/baseline.py) at the chosen trial's hyperparameters and
    seed, and the chosen augmentation again at the further seeds; the comparison logged to the
    parent run. The search's experiment trains them after its own trials where it can
    (search/sweep/baseline_in_search.py); a baseline phase trains the points it lacks. Not for
    validation sweeps (every candidate is trained already) or PBT (values follow schedules)."""
    recipe, best = cfg.baseline, chosen_trial(cfg, state, trials)
    if recipe is None or best is None or state.validate_proxy or cfg.search.scheduler.kind == "pbt":
        return None
    if state.baseline is not None and state.baseline.comparison:
        return BaselineComparison.from_dict(state.baseline.comparison)
    seeds = cfg.search.baseline_seeds
    first = cfg.seed if best.seed is None else int(best.seed)  # search trials train at the config's seed
    # the chosen augmentation is the recipe itself: nothing to compare, nothing to train
    points = [] if best.augmentation == recipe else baseline_points(best, recipe, seeds, first)
    rows = SearchPhase.baseline_rows_of(grids)  # every one, the points of a trial not chosen in the end too
    wanted = {point_of(p) for p in points}
    ran = {r.point for r in rows}
    missing = [p for p in points if point_of(p) not in ran]
    if state.baseline is None:
        state.baseline = BaselineRecord(f"{state.search.experiment}-baseline")
        state.save(job_dir(cfg))
    if points:
        unused = sum(r.point not in wanted for r in rows)
        print(f"\nbaseline: {recipe} at the chosen trial's hyperparameters, seeds "
              f"{', '.join(str(first + i) for i in range(seeds))}"
              + (f"; {best.augmentation} again at the further seeds" if seeds > 1 else "")
              + f" ({len(points) - len(missing)} of {len(points)} trained after the search in its experiment"
              + (f"; {unused} trained there for a trial the search did not choose in the end)" if unused else ")"))
    if missing:
        callback = TrialLogger(cfg.tracking.uri, cfg.experiment_name, state.parent_run_id, pair_name(cfg), score_of,
                               phase=BaselinePhase.label)
        phase = BaselinePhase(cfg, state, teacher_path, callback, missing)
        rows += phase.rows(phase.run())
    comparison = compare(best, recipe, [r for r in rows if r.point in wanted], cfg.search.metric, seeds, first)
    state.baseline.rows, state.baseline.comparison = rows, comparison.as_dict()
    state.save(job_dir(cfg))
    parent = state.parent_run_id
    tracker.log_json(parent, "baseline.json", comparison.as_dict())
    sd, _ = comparison.noise()
    tracker.log(parent, metrics={f"baseline_{cfg.search.metric}": float(np.mean(comparison.baseline_values)),
                                 "baseline_test_loss": float(np.mean(comparison.baseline_test)),
                                 "baseline_noise_sd": sd, "baseline_difference": comparison.difference(),
                                 "baseline_difference_in_noise": comparison.in_noise_units()},
                tags={BASELINE_TAG: recipe, BASELINE_VERDICT_TAG: comparison.line()}, once=True)
    return comparison


def stage_summarise(cfg: SweepConfig, state: SweepState, tracker: Tracker, grids, trials: list[TrialRow], data,
                    baseline: Optional[BaselineComparison] = None) -> SweepOutcome:
    """The chosen trial (`chosen_trial`), the compute spent, everything logged once to the parent
    run; the state is marked finished."""
    parent = state.parent_run_id
    close_orphans(tracker, parent)
    best = chosen_trial(cfg, state, trials)
    baseline_trials = (state.baseline.rows or []) if state.baseline else []
    supersede_forgotten(tracker, parent, {t.trial_id for t in [*trials, *state.audit_rows(), *baseline_trials]})
    # full length = the longest trial (a multi-stage method counts its stages' epochs)
    full_epochs = max([t.epochs for t in trials] + [cfg.student.train.epochs])
    compute = compute_summary(trials, state.scores, state.survivors, state.audit_rows(), full_epochs,
                              candidates=[c.id for c in cfg.space.resolved()], baseline_trials=baseline_trials)
    # proxy_seconds is on the parent already (logged by the proxy stage): log it once
    tracker.log(parent, metrics={k: v for k, v in compute.items() if k != "proxy_seconds"}, once=True)
    tracker.log_json(parent, "trials.json", [t.as_dict() for t in trials])
    if best is not None:
        # the chosen trial's test metrics are reported beside the score it was chosen by
        tracker.log(parent, metrics={f"best_{cfg.search.metric}": best.metric(cfg.search.metric),
                                     **{f"best_trial_{k}": best.metric(k) for k in ("test_loss", "test_acc")
                                        if best.metric(k) is not None}},
                    tags={BEST_AUGMENTATION_TAG: best.augmentation,
                          SELECTED_ON_TAG: "test" if cfg.search.metric.startswith("test_") else "val"},
                    once=True)
        if cfg.method.student_artifact:
            log_best_student(cfg, tracker, parent, best, grids, data,
                             Path(state.teacher_path) if state.teacher_path else None)
    state.finished = {"best": best.as_dict() if best else None, "compute": compute,
                      "trials": [t.as_dict() for t in trials]}
    return SweepOutcome(parent, state.scores, state.survivors, trials, best, compute, audit=state.audit,
                        baseline=baseline.as_dict() if baseline else None)


def run_sweep(cfg: SweepConfig, resume: bool = False, progress: bool = True) -> SweepOutcome:
    """Checks -> teacher + proxy + pruning -> audit -> search -> baseline -> summary, each stage
    recorded in the sweep state; the parent run's end status is set in one place
    (Tracker.run_status)."""
    cfg.check_selection_split()
    cfg.check_resources()
    folder = job_dir(cfg)
    state = SweepState.load(folder) if resume else None
    if resume and state is None:  # before anything is written
        raise ConfigError(f"--resume: no sweep to resume in {folder} (no {STATE_FILE}); run without --resume")
    data = load_checked_data(cfg, proxy=cfg.method.has_teacher)
    check_tracking_uri(cfg.tracking.uri)
    tracker = Tracker(cfg.tracking.uri, cfg.experiment_name)
    if state is not None and state.finished:
        print(f"this sweep already finished (parent run {state.parent_run_id}); nothing to resume")
        best = state.finished["best"]
        outcome = SweepOutcome(state.parent_run_id, state.scores, state.survivors,
                               [TrialRow.from_dict(t) for t in state.finished["trials"]],
                               TrialRow.from_dict(best) if best else None, state.finished["compute"],
                               audit=state.audit, baseline=state.baseline.comparison if state.baseline else None)
        if outcome.best is not None:
            print(describe_best(outcome.best, cfg.search.metric))
        return outcome  # nothing left to do, nothing logged again
    if state is None:
        state = start_sweep(cfg, tracker)
    else:
        tracker.client.update_run(state.parent_run_id, status="RUNNING")
    try:
        with tracker.run_status(state.parent_run_id, killed_by=(KeyboardInterrupt, SweepInterrupted)):
            outcome = _run_stages(cfg, state, tracker, data, resume, progress)
    except SweepInterrupted as stopped:  # Ctrl-C in a Tune phase: Tune saved its state and returned early
        print(f"\nsweep interrupted ({stopped}); continue with `augtune sweep CONFIG --resume`")
        return SweepOutcome(state.parent_run_id, state.scores, state.survivors, [], None, {}, interrupted=True)
    state.save(folder)  # finished: the parent run is closed, nothing of it is logged again
    print_outcome(cfg, outcome)
    return outcome


def _run_stages(cfg: SweepConfig, state: SweepState, tracker: Tracker, data, resume: bool,
                progress: bool) -> SweepOutcome:
    if state.stage == "proxy":
        if resume:
            _discard_partial_stage(cfg, tracker, state.parent_run_id)
        stage_proxy_and_prune(cfg, data, tracker, state, progress)
        if state.scores:
            print(format_table(state.scores))
    teacher_path = Path(state.teacher_path) if state.teacher_path else None
    score_of = {s.candidate: s.t_stddev for s in state.scores}
    if cfg.search.metric.startswith("test_"):
        print(TEST_SELECTION_WARNING)
    if not cfg.method.schedulable and cfg.search.scheduler.kind == "asha":
        print(f"note: {cfg.search.method} trials are multi-stage; ASHA compares the current stage's headline metric")
    init_ray(cfg)
    hand_data_to_trials(cfg, data)
    cache = fill_for_sweep(cfg, data, teacher_path, progress)
    if cache is not None:
        tracker.log(state.parent_run_id, tags={TEACHER_CACHE_TAG: cache["path"]},
                    metrics={"teacher_cache_seconds": cache["seconds"]} if cache["filled"] else None)
    if not state.audit_done:
        print("\n" + format_audit(stage_audit(cfg, state, tracker, teacher_path, score_of)))
    print(f"\n{cfg.search.method} trials for {len(state.survivors)} of {len(cfg.space.resolved())} "
          f"candidates: {', '.join(state.survivors)}")
    grids = stage_search(cfg, state, teacher_path, score_of)
    trials = SearchPhase.rows_of(grids)  # a validation sweep's grid rows read the same way
    baseline = stage_baseline(cfg, state, tracker, teacher_path, trials, grids, score_of)
    return stage_summarise(cfg, state, tracker, grids, trials, data, baseline)
