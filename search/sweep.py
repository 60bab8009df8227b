"""`augtune sweep CONFIG`: teacher -> T.stddev of every candidate -> prune -> student trials on
Ray Tune (Optuna TPE + ASHA) -> MLflow -> the best augmentation.

Also runs as a script, for `ray submit cluster.yaml search/sweep.py -- CONFIG [--resume]`.
"""
if __name__ == "__main__":  # as a script, import the installed package rather than sibling files
    import os as _os
    import sys as _sys

    _here = _os.path.dirname(_os.path.abspath(__file__))
    _sys.path[:] = [p for p in _sys.path if _os.path.abspath(p or ".") != _here]
    _sys.path.insert(0, _os.path.dirname(_here))

import json  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Optional  # noqa: E402

import yaml  # noqa: E402

from search.config import ConfigError, SweepConfig  # noqa: E402
from search.jobs import job_dir, pair_name, run_proxy  # noqa: E402
from search.proxy import ProxyScore, format_table  # noqa: E402
from search.tracking import Tracker  # noqa: E402
from spaces.candidates import parse_candidate  # noqa: E402
from spaces.hyper import parse_hyperparameters  # noqa: E402

STATE_FILE = "sweep_state.json"


@dataclass
class SweepOutcome:
    parent_run_id: str
    scores: list[ProxyScore]
    survivors: list[str]
    trials: list[dict[str, Any]]
    best: Optional[dict[str, Any]]
    compute: dict[str, float]
    interrupted: bool = False


# ---------------------------------------------------------------- pruning

def prune(scores: list[ProxyScore], mode: str, top_k: int) -> list[str]:
    """Candidates that go on to student trials, best proxy score first."""
    ranked = [s for s in scores if not math.isnan(s.t_stddev)]
    if mode == "none":
        return [s.candidate for s in ranked]
    if mode == "top_k":
        return [s.candidate for s in ranked[:top_k]]
    # overlap: every candidate whose interval reaches down into the best one's
    best = ranked[0]
    bound = best.high if not math.isnan(best.high) else best.t_stddev
    return [s.candidate for s in ranked if (s.low if not math.isnan(s.low) else s.t_stddev) <= bound]


# ---------------------------------------------------------------- search space

def _family(candidate_id: str) -> str:
    return parse_candidate(candidate_id).kind


class AugmentationSpace:
    """Optuna define-by-run space: the augmentation kind, then (only for kinds with several
    surviving variants) which variant, then the hyperparameters. Returns the candidate id as a
    constant. A class, not a closure, so Ray can pickle the searcher for resuming."""

    def __init__(self, survivors: list[str], hyperparameters: dict[str, Any]):
        self.families: dict[str, list[str]] = {}
        for cid in survivors:
            self.families.setdefault(_family(cid), []).append(cid)
        self.hyperparameters = hyperparameters

    def __call__(self, trial) -> dict[str, Any]:
        family = trial.suggest_categorical("augmentation_kind", list(self.families))
        variants = self.families[family]
        chosen = trial.suggest_categorical(f"{family}.variant", variants) if len(variants) > 1 else variants[0]
        for h in parse_hyperparameters(self.hyperparameters):
            h.suggest(trial)
        return {"augmentation": chosen}

    def first_points(self) -> list[dict[str, Any]]:
        """Every survivor once before TPE takes over."""
        points = []
        for family, variants in self.families.items():
            for cid in variants:
                point = {"augmentation_kind": family}
                if len(variants) > 1:
                    point[f"{family}.variant"] = cid
                points.append(point)
        return points


# ---------------------------------------------------------------- Ray

def init_ray(cfg: SweepConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    if cfg.search.ray_address:
        ray.init(address=cfg.search.ray_address, log_to_driver=False)
    else:
        import os

        # a private local instance on this machine: no cluster token needed
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        # per-epoch checkpoints of short trials trip this warning constantly; it is noise here
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
        ray.init(include_dashboard=False, log_to_driver=False)


def _storage(cfg: SweepConfig) -> str:
    if cfg.search.storage_path:
        return cfg.search.storage_path
    return str((job_dir(cfg) / "ray").resolve())


def method_trainable(cfg: SweepConfig, teacher_path: Optional[Path]):
    """The method's trainable with its fixed inputs and per-trial resources."""
    from ray import tune

    from trainables.tune import KDTrainable, SLATrainable, SSDTrainable

    resources = {"cpu": cfg.search.resources.get("cpu", 1.0), "gpu": cfg.search.resources.get("gpu", 0.0)}
    if cfg.search.method in ("kd", "ssd"):
        trainable = KDTrainable if cfg.search.method == "kd" else SSDTrainable
        with_fixed = tune.with_parameters(trainable, experiment=cfg.distill_dict(),
                                          teacher_checkpoint=str(Path(teacher_path).resolve()))
    else:
        with_fixed = tune.with_parameters(SLATrainable, experiment=cfg.distill_dict())
    return tune.with_resources(with_fixed, resources)


def build_tuner(cfg: SweepConfig, survivors: list[str], teacher_path: Optional[Path], callback, experiment_name: str,
                validate: bool):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    s = cfg.search
    metric, mode = s.metric, ("min" if s.metric.endswith("loss") else "max")
    trainable = method_trainable(cfg, teacher_path)
    epochs = cfg.student.train.epochs
    if validate:
        # exhaustive grid: every candidate x seed, trained to the end (no early stopping)
        param_space = {"augmentation": tune.grid_search(survivors),
                       "seed": tune.grid_search([cfg.seed + i for i in range(s.seeds)])}
        tune_config = tune.TuneConfig(metric=metric, mode=mode, num_samples=1, scheduler=FIFOScheduler(),
                                      max_concurrent_trials=s.max_concurrent)
    else:
        scheduler = (ASHAScheduler(time_attr="training_iteration", metric=metric, mode=mode, max_t=epochs,
                                   grace_period=min(s.scheduler.grace_period, epochs),
                                   reduction_factor=s.scheduler.reduction_factor)
                     if s.scheduler.kind == "asha" else FIFOScheduler())
        if s.algorithm == "optuna":
            space = AugmentationSpace(survivors, s.hyperparameters)
            searcher = OptunaSearch(space=space, metric=metric, mode=mode,
                                    points_to_evaluate=space.first_points()[:s.num_samples], seed=s.seed)
            param_space = {}
            tune_config = tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher, max_concurrent=s.max_concurrent),
                                          scheduler=scheduler, num_samples=s.num_samples)
        else:  # random search: independent draws of the candidate and every hyperparameter
            param_space = {"augmentation": tune.choice(survivors),
                           **{h.name: h.tune_domain() for h in parse_hyperparameters(s.hyperparameters)}}
            sampler = BasicVariantGenerator(random_state=s.seed, max_concurrent=s.max_concurrent)
            tune_config = tune.TuneConfig(search_alg=sampler, scheduler=scheduler, num_samples=s.num_samples)
    run_config = tune.RunConfig(
        name=experiment_name, storage_path=_storage(cfg), callbacks=[callback], verbose=1,
        checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=1, num_to_keep=2, checkpoint_at_end=True),
        failure_config=tune.FailureConfig(max_failures=1))
    return tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config)


# ---------------------------------------------------------------- results

def collect_trials(result_grid) -> list[dict[str, Any]]:
    rows = []
    for result in result_grid:
        metrics = result.metrics or {}
        config = result.config or {}
        rows.append({
            "trial_id": metrics.get("trial_id"),
            "augmentation": config.get("augmentation"),
            "seed": config.get("seed"),
            "hyperparameters": {k: v for k, v in config.items()
                                if k not in ("augmentation", "seed")
                                and not k.endswith(".variant") and k != "augmentation_kind"},
            "epochs": metrics.get("epoch", 0),
            "test_loss": metrics.get("test_loss"), "test_acc": metrics.get("test_acc"),
            "val_loss": metrics.get("val_loss"), "val_acc": metrics.get("val_acc"),
            "seconds": metrics.get("time_total_s", 0.0),
            "error": str(result.error) if result.error else None,
        })
    return rows


def pick_best(trials: list[dict[str, Any]], metric: str, epochs: int) -> Optional[dict[str, Any]]:
    """The best trial among those trained to the end (ASHA-stopped trials are not comparable)."""
    finished = [t for t in trials if t["error"] is None and t.get(metric) is not None and t["epochs"] >= epochs]
    pool = finished or [t for t in trials if t["error"] is None and t.get(metric) is not None]
    if not pool:
        return None
    sign = 1 if metric.endswith("loss") else -1
    return min(pool, key=lambda t: sign * t[metric])


def format_trials(trials: list[dict[str, Any]], scores: dict[str, float]) -> str:
    width = max([len(t["augmentation"] or "") for t in trials] + [12])
    lines = [f"{'augmentation':<{width}}  {'T.stddev':>9}  {'epochs':>6}  {'test_loss':>9}  {'test_acc':>8}  hyperparameters"]
    for t in sorted(trials, key=lambda t: (t["test_loss"] is None, t["test_loss"] or 0)):
        hyper = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in t["hyperparameters"].items())
        loss = f"{t['test_loss']:.4f}" if t["test_loss"] is not None else "-"
        acc = f"{t['test_acc']:.4f}" if t["test_acc"] is not None else "-"
        lines.append(f"{t['augmentation']:<{width}}  {scores.get(t['augmentation'], float('nan')):>9.6f}  "
                     f"{t['epochs']:>6}  {loss:>9}  {acc:>8}  {hyper or '-'}")
    return "\n".join(lines)


def compute_summary(trials: list[dict[str, Any]], scores: list[ProxyScore], survivors: list[str]) -> dict[str, float]:
    trial_seconds = sum(t["seconds"] or 0.0 for t in trials)
    proxy_seconds = sum(s.seconds for s in scores)
    per_candidate = trial_seconds / max(len(survivors), 1)
    candidates = len(scores) or len(survivors)
    exhaustive = per_candidate * candidates  # the same trial budget for every candidate
    spent = trial_seconds + proxy_seconds
    return {"trial_seconds": trial_seconds, "proxy_seconds": proxy_seconds, "trials": len(trials),
            "candidates": candidates, "trained_candidates": len(survivors),
            "pruned_candidates": candidates - len(survivors),
            "estimated_exhaustive_seconds": exhaustive,
            "estimated_seconds_saved": exhaustive - spent,
            "compute_saved_fraction": (exhaustive - spent) / exhaustive if exhaustive > 0 else 0.0}


# ---------------------------------------------------------------- driver

def _start_sweep(cfg: SweepConfig, data, tracker: Tracker, progress: bool) -> dict[str, Any]:
    """Parent run, teacher and proxy (kd, ssd), pruning; returns the state a resume needs."""
    validate = cfg.search.validate_proxy
    parent = tracker.start_run(f"sweep:{cfg.name}", "sweep", tags={"augtune.pair": pair_name(cfg),
                                                                 "augtune.validate_proxy": str(validate)})
    tracker.log(parent, params={"config": yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)})
    tracker.log_json(parent, "config.json", cfg.model_dump(mode="json"))
    if cfg.search.method in ("kd", "ssd"):
        try:
            proxy = run_proxy(cfg, data, tracker, parent, progress)
        except BaseException:
            tracker.end_run(parent, "FAILED")
            raise
        print(format_table(proxy.scores))
        scores, teacher_path = proxy.scores, proxy.teacher_path
        mode = "none" if validate else cfg.search.prune.mode
        survivors = prune(scores, mode, cfg.search.prune.top_k)
    else:  # SLA has no teacher to score with: every candidate goes to the trials
        scores, teacher_path, mode = [], None, "none"
        survivors = [c.id for c in cfg.space.resolved()]
    state = {"parent_run_id": parent, "ray_experiment": f"sweep-{time.strftime('%Y%m%d-%H%M%S')}",
             "teacher_path": str(teacher_path) if teacher_path else None, "scores": [s.as_row() for s in scores],
             "survivors": survivors, "validate_proxy": validate}
    _save_state(cfg, state)
    tracker.log_json(parent, "pruned.json", {"kept": survivors,
                                             "pruned": [s.candidate for s in scores if s.candidate not in survivors]})
    tracker.log(parent, params={"prune.mode": mode, "prune.top_k": cfg.search.prune.top_k,
                                "survivors": ",".join(survivors)})
    return state


def _load_state(cfg: SweepConfig) -> dict[str, Any]:
    path = job_dir(cfg) / STATE_FILE
    if not path.is_file():
        raise ConfigError(f"--resume: no sweep to resume in {job_dir(cfg)} (no {STATE_FILE}); run without --resume")
    return json.loads(path.read_text())


def _save_state(cfg: SweepConfig, state: dict[str, Any]) -> None:
    path = job_dir(cfg) / STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(state, indent=2))


def run_sweep(cfg: SweepConfig, resume: bool = False, progress: bool = True) -> SweepOutcome:
    from ray import tune

    from search.trial_logger import TrialLogger
    from trainables.data import load_data

    state = _load_state(cfg) if resume else None  # raises before anything is written
    data = load_data(cfg.data)
    tracker = Tracker(cfg.tracking.uri, cfg.experiment_name)
    if state is None:
        state = _start_sweep(cfg, data, tracker, progress)
    else:
        tracker.client.update_run(state["parent_run_id"], status="RUNNING")
    parent, survivors, validate = state["parent_run_id"], state["survivors"], state["validate_proxy"]
    scores = [ProxyScore(**row) for row in state["scores"]]
    teacher_path = Path(state["teacher_path"]) if state["teacher_path"] else None
    print(f"\n{cfg.search.method} trials for {len(survivors)} of {len(scores) or len(survivors)} candidates: "
          f"{', '.join(survivors)}")

    score_of = {s.candidate: s.t_stddev for s in scores}
    if cfg.search.method == "ssd" and cfg.search.scheduler.kind == "asha":
        print("note: SSD trials are multi-stage; ASHA compares the current stage's headline metric")
    callback = TrialLogger(cfg.tracking.uri, cfg.experiment_name, parent, pair_name(cfg), score_of)
    init_ray(cfg)
    experiment_path = f"{_storage(cfg).rstrip('/')}/{state['ray_experiment']}"
    if resume and tune.Tuner.can_restore(experiment_path):
        tuner = tune.Tuner.restore(experiment_path, trainable=method_trainable(cfg, teacher_path),
                                   resume_errored=True)
    else:
        tuner = build_tuner(cfg, survivors, teacher_path, callback, state["ray_experiment"], validate)
    try:
        grid = tuner.fit()
    except BaseException:
        tracker.end_run(parent, "KILLED")
        raise
    trials = collect_trials(grid)
    expected = len(survivors) * cfg.search.seeds if validate else cfg.search.num_samples
    if len(grid) < expected or grid.num_terminated + grid.num_errors < len(grid):
        # Ctrl-C: Tune saved its state and returned early
        tracker.end_run(parent, "KILLED")
        print(f"\nsweep interrupted after {grid.num_terminated} of {expected} trials; continue with "
              f"`augtune sweep CONFIG --resume`")
        return SweepOutcome(parent, scores, survivors, trials, None, {}, interrupted=True)
    best = pick_best(trials, cfg.search.metric, cfg.student.train.epochs)
    compute = compute_summary(trials, scores, survivors)
    tracker.log(parent, metrics=compute)
    tracker.log_json(parent, "trials.json", trials)
    if best is not None:
        tracker.log(parent, metrics={f"best_{cfg.search.metric}": best[cfg.search.metric]},
                    tags={"augtune.best_augmentation": best["augmentation"]})
    tracker.end_run(parent)

    print("\n" + format_trials(trials, score_of))
    print(f"\ncompute: {compute['trial_seconds']:.0f} trial-seconds + {compute['proxy_seconds']:.0f} s proxy; "
          f"{compute['pruned_candidates']} candidates pruned, an estimated {compute['estimated_seconds_saved']:.0f} s "
          f"({100 * compute['compute_saved_fraction']:.0f}%) saved against training every candidate")
    if best is not None:
        print(f"\nbest augmentation: {best['augmentation']}  ({cfg.search.metric} = {best[cfg.search.metric]:.4f})")
    print(f"MLflow: experiment {cfg.experiment_name!r}, parent run {parent}\n"
          f"  mlflow ui --backend-store-uri {cfg.tracking.uri}\n"
          f"  augtune best --experiment {cfg.experiment_name} --tracking-uri {cfg.tracking.uri}")
    return SweepOutcome(parent, scores, survivors, trials, best, compute)


def main(argv: Optional[list[str]] = None) -> int:
    from search.cli import main as cli_main

    import sys
    return cli_main(["sweep", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
