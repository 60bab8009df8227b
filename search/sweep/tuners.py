"""Ray Tune objects for the sweep's phases: Ray itself, the search space, the trainables, the
tuners (Optuna + ASHA/FIFO, grids for audits, proxy validation and the recipe baseline, PBT) and
the trial rows of a result grid. The phases (search/sweep/phases.py) decide which to build."""
import os
import random
import signal
import socket
import threading
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining
from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

from augtune.search.results.trials import TrialRow
from augtune.search.selection.metric import metric_mode
from augtune.search.standalone.proxy_job import job_dir
from augtune.search.sweep.baseline_in_search import SearchOnlyASHA, SearchThenBaseline
from augtune.search.sweep.exploited_checkpoints import KeepExploitedCheckpoints
from augtune.search.sweep.tolerant_optuna import TolerantOptunaSearch
from augtune.search.sweep_config import SweepConfig, policy_space
from augtune.spaces.candidates import numeric_params, parse_candidate
from augtune.spaces.hyper import parse_hyperparameters
from augtune.trainables.data import DataBundle
from augtune.trainables.tune_trainables import HandedData, data_key, data_parallel_trainable, trainable_of


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
    if ray.is_initialized():
        return
    if cfg.search.ray_address:
        ray.init(address=cfg.search.ray_address, log_to_driver=False)
        wanted = {"CPU": cfg.search.resources.cpu, "GPU": cfg.search.resources.gpu}
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        if not any(all(node.get(k, 0.0) >= v for k, v in wanted.items() if v) for node in nodes):
            # an autoscaling cluster may still add such a node; a fixed one never will
            print(f"warning: no node of this cluster has {wanted} free for one trial (search.resources); trials "
                  "wait until the autoscaler adds such a node, or forever on a fixed-size cluster")
    else:
        # a private local instance on this machine: no cluster token needed
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        # per-epoch checkpoints of short trials trip this warning constantly; it is noise here
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
        if cfg.search.resources.workers_per_trial > 1:
            ray.init(log_to_driver=False, **own_state_api())
        else:
            ray.init(include_dashboard=False, log_to_driver=False)


def own_state_api() -> dict[str, Any]:
    """`ray.init` arguments for a local Ray whose multi-worker trials can end cleanly. Ray Train's
    placement-group cleaner reads the state API, which the dashboard serves; without it, or when
    it finds another Ray on this machine (it then refuses to guess which), a finished trial's
    workers stay reserved and the next trial never starts. So: the dashboard on 127.0.0.1 at a
    free port, and every worker of this job told that address (RAY_API_SERVER_ADDRESS)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return {"include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": port,
            "runtime_env": {"env_vars": {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}}}


def storage(cfg: SweepConfig) -> str:
    if cfg.search.storage_path:
        return cfg.search.storage_path
    return str((job_dir(cfg) / "ray").resolve())


_HANDED: dict[str, HandedData] = {}  # the data the driver loaded, by data section (one at a time)


def hand_data_to_trials(cfg: SweepConfig, data: DataBundle) -> None:
    """The data this driver loaded for `cfg` goes to the trials of its Tune phases with their fixed
    inputs (one copy in Ray's object store per phase), so a fresh actor does not load it again."""
    section = cfg.distill_dict()["data"]
    _HANDED.clear()
    _HANDED[data_key(section)] = HandedData(section, data)


def method_trainable(cfg: SweepConfig, teacher_path: Optional[Path], track: Sequence[str] = ()):
    """The method's trainable with its fixed inputs and per-trial resources; `track` names the
    values each epoch records (PBT schedules). A restored experiment must get the same one as
    the experiment was built with (search_trainable / method_trainable)."""

    wanted = cfg.search.resources
    experiment = cfg.distill_dict()
    fixed: dict[str, Any] = {"experiment": experiment}
    handed = _HANDED.get(data_key(experiment["data"]))
    if handed is not None:
        fixed["handed_data"] = handed
    if track:
        fixed["track"] = list(track)
    if cfg.method.has_teacher:
        fixed["teacher_checkpoint"] = str(Path(teacher_path).resolve())
    if wanted.workers_per_trial == 1:
        with_fixed = tune.with_parameters(trainable_of(cfg.method), **fixed)
        return tune.with_resources(with_fixed, {"cpu": wanted.cpu, "gpu": wanted.gpu})
    trainable = data_parallel_trainable(cfg.method, wanted.workers_per_trial, wanted.cpu, wanted.gpu,
                                        wanted.sync_batchnorm, f"{storage(cfg).rstrip('/')}/train-runs")
    # the trial's function only starts its Ray Train workers, which hold the CPUs and GPUs; Tune
    # cannot place a bundle of nothing, so it asks for one byte of memory
    return tune.with_resources(tune.with_parameters(trainable, **fixed), {"cpu": 0, "memory": 1})


class ExploreInsideDomains:
    """PBT's explore, kept inside the declared space. PBT scales a value by 0.8 or 1.2 without
    looking at its domain: every value is brought back inside its bounds (whole numbers for int
    domains). With a policy space (`space.policies`), the member's augmentation moves too: to a
    neighbouring policy of the space (PolicySpace.mutate: one stage's op or one parameter one step),
    or a fresh draw with PBT's resample probability. Draws follow Python's `random`, which the
    tuner seeds."""

    def __init__(self, hyperparameters: dict[str, Any], policies: Optional[Any] = None,
                 resample_probability: float = 0.25):
        self.bounds = {h.name: (h.form, h.args) for h in parse_hyperparameters(hyperparameters)
                       if h.form in ("uniform", "loguniform", "int")}
        self.policies, self.resample_probability = policies, resample_probability  # the space's declaration

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        for name, (form, (low, high)) in self.bounds.items():
            if name in config:
                value = min(max(config[name], low), high)
                config[name] = int(round(value)) if form == "int" else float(value)
        if self.policies is not None and "augmentation" in config:
            space = policy_space(None if self.policies == "default" else self.policies)
            rng = np.random.default_rng(random.getrandbits(64))
            config["augmentation"] = space.mutate(parse_candidate(config["augmentation"]), rng,
                                                  self.resample_probability).id
        return config


def mutates_policies(cfg: SweepConfig) -> bool:
    """PBT over a declared policy space moves each member's policy inside it."""
    return cfg.search.scheduler.kind == "pbt" and cfg.space.policies is not None


def pbt_mutations(cfg: SweepConfig) -> dict[str, Any]:
    """PBT's hyperparam_mutations: every searched value (choices as lists, ranges as domains)."""
    return {h.name: list(h.args) if h.form == "choice" else h.tune_domain()
            for h in parse_hyperparameters(cfg.search.hyperparameters) if h.form != "constant"}


def search_trainable(cfg: SweepConfig, teacher_path: Optional[Path], validate: bool = False):
    """The search phase's trainable: a PBT member records the values PBT mutates, every epoch
    (its schedule); built and restored alike, so a resumed member goes on recording them."""
    pbt = cfg.search.scheduler.kind == "pbt" and not validate
    track = [*pbt_mutations(cfg), *(["augmentation"] if mutates_policies(cfg) else [])] if pbt else []
    return method_trainable(cfg, teacher_path, track=track)


def _reuse_actors(cfg: SweepConfig) -> bool:
    """search.reuse_actors, for one-process trials: a multi-worker trial's actor only starts its
    Ray Train run, whose workers must go when the trial ends, so the next trial can have them."""
    return cfg.search.reuse_actors and cfg.search.resources.workers_per_trial == 1


def _search_seed(cfg: SweepConfig, top_up: int) -> int:
    """search.seed, or another one for each top-up round, so it does not draw the trials it
    replaces (or an earlier round drew) again."""
    return cfg.search.seed + top_up


def build_pbt_tuner(cfg: SweepConfig, survivors: list[str], teacher_path: Optional[Path], callback,
                    experiment_name: str, num_samples: Optional[int] = None, top_up: int = 0):
    """A population of `num_samples` trials. The first members start from the proxy's ranking
    (one per surviving candidate, best first, at that candidate's own parameter values); the rest
    draw a candidate and values at random. Every `perturbation_interval` epochs, the bottom
    quantile copies a top member's checkpoint (weights, optimiser, generators, the schedule so
    far) and config, then perturbs the values within their domains: each member's values over
    the epochs are its schedule."""


    s, sched = cfg.search, cfg.search.scheduler
    samples = num_samples or s.num_samples
    hypers = parse_hyperparameters(s.hyperparameters)
    mutations = pbt_mutations(cfg)
    param_space = {"augmentation": tune.choice(survivors), "seed": tune.randint(0, 2**31 - 1),
                   **{h.name: h.tune_domain() for h in hypers}}
    first = []
    for rank, candidate_id in enumerate(survivors[:samples]):
        candidate = parse_candidate(candidate_id)
        own = {name: candidate.params[name.split(".", 1)[1]] for name in mutations
               if name in numeric_params() and name.startswith(candidate.kind + ".")
               and candidate.params.get(name.split(".", 1)[1]) is not None}
        first.append({"augmentation": candidate_id, "seed": cfg.seed + rank, **own})
    random.seed(_search_seed(cfg, top_up))  # PBT's explore draws from Python's random
    scheduler = PopulationBasedTraining(
        time_attr="training_iteration", perturbation_interval=sched.perturbation_interval,
        hyperparam_mutations=mutations, quantile_fraction=sched.quantile_fraction,
        resample_probability=sched.resample_probability, custom_explore_fn=ExploreInsideDomains(
            s.hyperparameters, cfg.space.policies if mutates_policies(cfg) else None, sched.resample_probability),
        synch=False)  # Ray's synchronous mode lost members' epochs in tests (2.60): the asynchronous one
    # no concurrency limit: every member exists from the start (resources bound how many train at
    # once), so the first members do not exploit among themselves before the others begin
    sampler = BasicVariantGenerator(points_to_evaluate=first, random_state=_search_seed(cfg, top_up))
    tune_config = tune.TuneConfig(metric=s.metric, mode=metric_mode(s.metric),
                                  search_alg=sampler, scheduler=scheduler, num_samples=samples,
                                  reuse_actors=_reuse_actors(cfg))
    trainable = search_trainable(cfg, teacher_path)
    # Members save at boundaries only (PBT's own save may double one): a resumed member retrains
    # at most interval - 1 epochs (the same ones: its generators are in the checkpoint; MLflow
    # skips the steps it already has). Keeping 6 keeps the checkpoint the last saved experiment
    # state names through 3 more intervals; an exploiting member restores from its own copy of
    # the donor's (KeepExploitedCheckpoints), whatever the donor has deleted since.
    return tune.Tuner(trainable, param_space=param_space, tune_config=tune_config,
                      run_config=_run_config(cfg, experiment_name, callback, every=sched.perturbation_interval,
                                             keep_checkpoints=6, more_callbacks=[KeepExploitedCheckpoints()]))


# Set when Ctrl-C stopped a Tune phase of this process; phases.TunePhase clears it before each fit.
TUNE_INTERRUPTED = threading.Event()


class InterruptWatch(tune.Callback):
    """Notes a Ctrl-C that stops a Tune run. Tune then ends the run early and returns its results,
    and may mark the trial it stopped TERMINATED, like a finished one (seen on CI, Ray 2.60): the
    trials' statuses alone cannot tell an interrupted phase from a complete one. Tune installs its
    own SIGINT handler before it sets up its callbacks; this one wraps it."""

    def setup(self, **info) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        tune_handler = signal.getsignal(signal.SIGINT)

        def noting(signum, frame):
            TUNE_INTERRUPTED.set()
            if callable(tune_handler):
                tune_handler(signum, frame)

        signal.signal(signal.SIGINT, noting)


def _run_config(cfg: SweepConfig, experiment_name: str, callback, every: int = 1, keep_checkpoints: Optional[int] = 2,
                more_callbacks: Sequence[tune.Callback] = ()):
    # a multi-worker trial's checkpoints are its Ray Train run's (trainables.tune_trainables.data_parallel_trainable)
    checkpoints = (tune.CheckpointConfig(checkpoint_frequency=every, num_to_keep=keep_checkpoints, checkpoint_at_end=True)
                   if cfg.search.resources.workers_per_trial == 1 else tune.CheckpointConfig())
    return tune.RunConfig(name=experiment_name, storage_path=storage(cfg), callbacks=[callback, InterruptWatch(), *more_callbacks],
                          verbose=1,
                          checkpoint_config=checkpoints, failure_config=tune.FailureConfig(max_failures=1))


def grid_points(cfg: SweepConfig, candidates: list[str], seeds: int) -> list[dict[str, Any]]:
    """The (augmentation, seed) trials of a grid: every candidate at seeds seed, seed+1, ..."""
    return [{"augmentation": c, "seed": cfg.seed + i} for c in candidates for i in range(seeds)]


def build_grid_tuner(cfg: SweepConfig, candidates: list[str], seeds: int, teacher_path: Optional[Path], callback,
                     experiment_name: str, points: Optional[list[dict[str, Any]]] = None):
    """Every candidate x seed at the config's own hyperparameters, trained to the end (no early
    stopping): the same budget for each. Validation sweeps and sentinel audits use it. `points`:
    only these (augmentation, seed) trials (a top-up of the ones a restored grid lost)."""
    s = cfg.search
    mode = metric_mode(s.metric)
    if points is None:
        param_space = {"augmentation": tune.grid_search(candidates),
                       "seed": tune.grid_search([cfg.seed + i for i in range(seeds)])}
        search = {}
    else:  # each point is one trial: the values are placeholders the points replace
        param_space = {"augmentation": tune.choice(candidates), "seed": tune.choice([p["seed"] for p in points])}
        search = {"search_alg": BasicVariantGenerator(points_to_evaluate=[dict(p) for p in points])}
    tune_config = tune.TuneConfig(metric=s.metric, mode=mode, num_samples=1 if points is None else len(points),
                                  scheduler=FIFOScheduler(), max_concurrent_trials=s.max_concurrent,
                                  reuse_actors=_reuse_actors(cfg), **search)
    return tune.Tuner(method_trainable(cfg, teacher_path), param_space=param_space, tune_config=tune_config,
                      run_config=_run_config(cfg, experiment_name, callback))


def build_baseline_tuner(cfg: SweepConfig, points: list[dict[str, Any]], teacher_path: Optional[Path], callback,
                         experiment_name: str):
    """The recipe baseline's trials (search/results/baseline.py): each point an (augmentation, seed) at the
    chosen trial's hyperparameters, trained to the end."""
    s = cfg.search
    values = {k: v for k, v in points[0].items() if k not in ("augmentation", "seed")}
    param_space = {"augmentation": tune.choice(sorted({p["augmentation"] for p in points})),
                   "seed": tune.choice(sorted({p["seed"] for p in points})), **values}
    tune_config = tune.TuneConfig(metric=s.metric, mode=metric_mode(s.metric), num_samples=len(points),
                                  scheduler=FIFOScheduler(), max_concurrent_trials=s.max_concurrent,
                                  reuse_actors=_reuse_actors(cfg),
                                  search_alg=BasicVariantGenerator(points_to_evaluate=[
                                      {"augmentation": p["augmentation"], "seed": p["seed"]} for p in points]))
    return tune.Tuner(method_trainable(cfg, teacher_path), param_space=param_space, tune_config=tune_config,
                      run_config=_run_config(cfg, experiment_name, callback))


def build_tuner(cfg: SweepConfig, survivors: list[str], teacher_path: Optional[Path], callback, experiment_name: str,
                num_samples: Optional[int] = None, tried: Sequence[str] = (), top_up: int = 0,
                baseline_after: Optional[Sequence[TrialRow]] = None):
    """The search phase's tuner (a validation sweep's grid is `build_grid_tuner`'s). Top-up round
    `top_up` (`num_samples` left to run after a restore lost some) skips the first points of
    augmentations already `tried` and draws with its own seed, so it does not repeat trials the
    restored experiments hold. `baseline_after` (the audit's rows, possibly none): the recipe
    baseline's points follow the search in the same experiment (search/sweep/baseline_in_search.py;
    Optuna searches only)."""

    s = cfg.search
    if s.scheduler.kind == "pbt":
        return build_pbt_tuner(cfg, survivors, teacher_path, callback, experiment_name, num_samples, top_up)
    samples = num_samples or s.num_samples
    metric, mode = s.metric, metric_mode(s.metric)
    epochs = cfg.student.train.epochs
    asha = SearchOnlyASHA if baseline_after is not None else ASHAScheduler
    scheduler = (asha(time_attr="training_iteration", metric=metric, mode=mode, max_t=epochs,
                      grace_period=min(s.scheduler.grace_period, epochs), reduction_factor=s.scheduler.reduction_factor)
                 if s.scheduler.kind == "asha" else FIFOScheduler())
    if s.algorithm == "optuna":
        space = AugmentationSpace(survivors, s.hyperparameters)
        first = [p for p in space.first_points() if p.get(f"{p['augmentation_kind']}.variant",
                                                             space.families[p["augmentation_kind"]][0]) not in tried]
        searcher = ConcurrencyLimiter(TolerantOptunaSearch(space=space, metric=metric, mode=mode,
                                                           points_to_evaluate=first[:samples],
                                                           seed=_search_seed(cfg, top_up)),
                                      max_concurrent=s.max_concurrent)
        if baseline_after is not None:  # Tune asks until the searcher says it is finished
            searcher = SearchThenBaseline(searcher, samples, s.max_concurrent, metric, mode, cfg.baseline,
                                          s.baseline_seeds, cfg.seed, epochs, earlier=baseline_after)
            samples = -1
        param_space = {}
        tune_config = tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=samples,
                                      reuse_actors=_reuse_actors(cfg))
    else:  # random search: independent draws of the candidate and every hyperparameter
        param_space = {"augmentation": tune.choice(survivors),
                       **{h.name: h.tune_domain() for h in parse_hyperparameters(s.hyperparameters)}}
        sampler = BasicVariantGenerator(random_state=_search_seed(cfg, top_up), max_concurrent=s.max_concurrent)
        tune_config = tune.TuneConfig(search_alg=sampler, scheduler=scheduler, num_samples=samples,
                                      reuse_actors=_reuse_actors(cfg))
    trainable = search_trainable(cfg, teacher_path)
    return tune.Tuner(trainable, param_space=param_space, tune_config=tune_config,
                      run_config=_run_config(cfg, experiment_name, callback))


# ---------------------------------------------------------------- results

def collect_trials(result_grid, **where: Any) -> list[TrialRow]:
    """The grid's trials as rows; `where` sets their phase / experiment."""
    return [TrialRow.from_result(result, **where) for result in result_grid]


def missing_points(grids, points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The (augmentation, seed) points of `points` that no trial of `grids` ran."""
    ran = {(t.augmentation, t.seed) for grid in grids for t in collect_trials(grid)}
    return [p for p in points if (p["augmentation"], p["seed"]) not in ran]
