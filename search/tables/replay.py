"""Replays of candidate-search strategies against a learning-curve table (search/tables/learning_curves.py).

A replay is one search as it would have run: the strategy asks for (candidate, seed) runs up to
some epoch, the world answers from the table and charges epochs x the candidate's per-epoch
seconds (plus the proxy's seconds when a proxy is used). The decisions are the project's and
Ray's own: the proxy cut and the sentinel audit of search/selection/prune.py, and Ray Tune's
AsyncHyperBandScheduler called with the tabulated results in the order a search with `workers`
concurrent trials would have produced them (replay_asha_through_tune runs the same through
`tune.Tuner` with a trainable that reports the table, to show that both take the same decisions).

Cross-fitting: in each replay every candidate's seeds are shuffled; the first `search_seeds` are
all the search may see, the rest measure the truth. Regret = true mean test loss of the chosen
candidate minus the lowest true mean test loss, so a lucky seed cannot win twice.
"""
from __future__ import annotations

import heapq
import itertools
import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from augtune.search.tables.learning_curves import Regime
from augtune.search.selection.metric import metric_mode, metric_sign
from augtune.search.selection.prune import proxy_cut, run_audit

# Imported where a strategy uses them: the proxy's score names (its module loads torch), Ray Tune's
# schedulers and Optuna; replaying the table-only strategies then imports in 0.1 s.


class World:
    """One replay: the seed split, the proxy seed, and the compute spent so far."""

    def __init__(self, regime: Regime, rng: np.random.Generator, search_seeds: int = 2,
                 metric: str = "val_loss", truth_metric: str = "test_loss"):
        self.regime, self.rng, self.metric, self.truth_metric = regime, rng, metric, truth_metric
        ran = regime.ran()
        self.order = []  # per candidate: its table seed positions, shuffled
        for c in range(len(regime.candidates)):
            seeds = np.flatnonzero(ran[c])
            if len(seeds) <= search_seeds:
                raise ValueError(f"regime {regime.name}: {regime.candidates[c]} has {len(seeds)} seeds; cross-fitting "
                                 f"needs more than the {search_seeds} a search may see")
            self.order.append(list(rng.permutation(seeds)))
        self.search_seeds = search_seeds
        self.proxy_seed = int(rng.integers(regime.proxy_width())) if regime.proxy else None
        self.per_epoch = regime.epoch_seconds()
        self.seconds = 0.0
        self.trained_epochs: dict[tuple[str, int], int] = {}  # (candidate, search seed) -> epochs charged

    # -- what a search may see
    def curve(self, candidate: str, seed: int = 0, metric: Optional[str] = None) -> np.ndarray:
        if seed >= self.search_seeds:
            raise IndexError(f"a search sees {self.search_seeds} seeds per candidate")
        c = self.regime.index(candidate)
        return self.regime.curves[metric or self.metric][c, self.order[c][seed]]

    def train(self, candidate: str, epochs: Optional[int] = None, seed: int = 0) -> float:
        """Train (candidate, search seed) up to `epochs` (default: full); charges only epochs not
        trained before (a run continued from a lower rung pays the difference). Returns the
        metric at that epoch. A rung past the table's length is the full run (short tables)."""
        epochs = min(epochs or self.regime.epochs, self.regime.epochs)
        done = self.trained_epochs.get((candidate, seed), 0)
        if epochs > done:
            self.seconds += (epochs - done) * float(self.per_epoch[self.regime.index(candidate)])
            self.trained_epochs[(candidate, seed)] = epochs
        return float(self.curve(candidate, seed)[epochs - 1])

    def proxy_scores(self, score: str) -> list:
        """This replay's proxy seed's scores as the sweep's ProxyScores, ranked by `score` the way
        the sweep ranks them (search/selection/proxy.py rank_scores); charges the proxy's seconds for every
        candidate (all are scored in the same passes)."""
        from augtune.search.selection.proxy import ProxyScore, rank_scores

        if self.regime.proxy_seconds is not None:
            self.seconds += float(np.nansum(self.regime.proxy_seconds[:, self.proxy_seed]))
        nan = float("nan")
        scores = [ProxyScore(name, float(self.regime.proxy["t_stddev"][c, self.proxy_seed])
                             if "t_stddev" in self.regime.proxy else nan, nan, nan, 0, 0, 0.0,
                             zoo={k: float(v[c, self.proxy_seed]) for k, v in self.regime.proxy.items()})
                  for c, name in enumerate(self.regime.candidates)]
        return rank_scores(scores, score)

    def proxy_ranking(self, score: str) -> list[str]:
        """Candidates best first by the proxy `score` (see proxy_scores)."""
        return [s.candidate for s in self.proxy_scores(score)]

    # -- what only the scorer sees
    def truth(self) -> np.ndarray:
        """[candidate] mean final truth metric over the held-out seeds."""
        final = self.regime.final(self.truth_metric)
        return np.array([final[c, self.order[c][self.search_seeds:]].mean() for c in range(len(self.order))])

    def best_of(self, values: dict[str, float]) -> str:
        sign = metric_sign(self.metric)
        return min(values, key=lambda c: (sign * values[c], c))


Strategy = Callable[[World], str]


# ---------------------------------------------------------------- strategies

def exhaustive() -> Strategy:
    def run(world: World) -> str:
        return world.best_of({c: world.train(c) for c in world.regime.candidates})
    return run


def random_k(k: int) -> Strategy:
    def run(world: World) -> str:
        chosen = world.rng.choice(world.regime.candidates, size=min(k, len(world.regime.candidates)), replace=False)
        return world.best_of({str(c): world.train(str(c)) for c in chosen})
    return run


def fixed(candidate: str) -> Strategy:
    """No search: the one candidate, trained once (the run a user needs anyway)."""
    def run(world: World) -> str:
        world.train(candidate)
        return candidate
    return run


def proxy_top_k(k: int, score: str = "t_stddev") -> Strategy:
    """The proxy cut of search/selection/prune.py (mode top_k), then the kept candidates in full."""
    def run(world: World) -> str:
        kept = proxy_cut(world.proxy_scores(score), "top_k", k, by=score)
        return world.best_of({c: world.train(c) for c in kept})
    return run


def proxy_audit(k: int = 3, sentinels: int = 1, audit_seeds: int = 2, expand: bool = True, max_extra: int = 2,
                score: str = "t_stddev", batch: int = 2) -> Strategy:
    """The sweep's default decision path: proxy cut, then search/selection/prune.py's run_audit (sentinels,
    expansion) training every audited candidate for `audit_seeds` seeds; the best audited
    candidate by mean metric is the choice."""
    def run(world: World) -> str:
        ranked = world.proxy_ranking(score)

        def train(candidates: list[str]) -> dict[str, list[float]]:
            return {c: [world.train(c, seed=s) for s in range(audit_seeds)] for c in candidates}

        outcome = run_audit(ranked, ranked[:k], sentinels, train, metric=world.metric,
                            seed=int(world.rng.integers(1 << 31)), expand=expand, max_extra=max_extra, batch=batch,
                            keep=k)
        return outcome.survivors[0]
    return run


def low_fidelity_top_k(epochs: int, k: int) -> Strategy:
    """The low-fidelity student proxy: every candidate trained `epochs` epochs (of the full
    schedule), the k best by the metric there continued to full length."""
    def run(world: World) -> str:
        early = {c: world.train(c, epochs) for c in world.regime.candidates}
        sign = metric_sign(world.metric)
        kept = sorted(early, key=lambda c: (sign * early[c], c))[:k]
        return world.best_of({c: world.train(c) for c in kept})
    return run


def successive_halving(min_epochs: int, eta: int = 3, enter: Optional[int] = None,
                       score: Optional[str] = None) -> Strategy:
    """Synchronous successive halving: all entering candidates to min_epochs, keep the best
    ceil(n / eta) by the metric at that epoch, multiply the epochs by eta, ... up to full length.
    With `score`, the proxy decides which `enter` candidates go in (proxy-ordered SH)."""
    def run(world: World) -> str:
        pool = list(world.regime.candidates)
        if score is not None:
            pool = world.proxy_ranking(score)[:enter or len(pool)]
        epochs, full = min_epochs, world.regime.epochs
        while True:
            epochs = min(epochs, full)
            values = {c: world.train(c, epochs) for c in pool}
            if epochs == full or len(pool) == 1:
                if epochs < full:
                    values = {c: world.train(c) for c in pool}
                return world.best_of(values)
            sign = metric_sign(world.metric)
            pool = sorted(pool, key=lambda c: (sign * values[c], c))[:max(1, math.ceil(len(pool) / eta))]
            epochs *= eta
    return run


def random_successive_halving(n: int, min_epochs: int, eta: int = 3) -> Strategy:
    """Synchronous successive halving over a random sample of n candidates (same rule as
    successive_halving: keep the best ceil(n / eta) at each rung, epochs x eta up to full length)."""
    def run(world: World) -> str:
        pool = [str(c) for c in world.rng.choice(world.regime.candidates, size=min(n, len(world.regime.candidates)),
                                                  replace=False)]
        epochs, full, sign = min_epochs, world.regime.epochs, metric_sign(world.metric)
        while epochs < full and len(pool) > 1:
            values = {c: world.train(c, epochs) for c in pool}
            pool = sorted(pool, key=lambda c: (sign * values[c], c))[:max(1, math.ceil(len(pool) / eta))]
            epochs *= eta
        return world.best_of({c: world.train(c) for c in pool})
    return run


def asha(grace_period: int, reduction_factor: float = 3, workers: int = 2, order: str = "random",
         score: str = "t_stddev", enter: Optional[int] = None) -> Strategy:
    """Ray Tune's AsyncHyperBandScheduler over one trial per candidate, driven with the table's
    results in the order `workers` concurrent trials would report them. `order`: "random"
    (arrival order shuffled; `enter` keeps a random sample of that many), "proxy" (best proxy
    score first; `enter` keeps only the top) or "table" (the table's candidate order)."""
    def run(world: World) -> str:
        if order == "proxy":
            candidates = world.proxy_ranking(score)[:enter or len(world.regime.candidates)]
        elif order == "table":
            candidates = list(world.regime.candidates)
        else:
            candidates = [str(c) for c in world.rng.permutation(world.regime.candidates)][:enter]
        decisions = simulate_asha(world, candidates, grace_period, reduction_factor, workers)
        finished = {c: v for c, (epochs, v) in decisions.items() if epochs == world.regime.epochs}
        if not finished:  # every trial stopped early (cannot happen with Ray's rule: the first one survives)
            finished = {c: v for c, (_, v) in decisions.items()}
        return world.best_of(finished)
    return run


def combined_ranking(world: World, weights: dict[str, float], ranks: bool = False) -> list[str]:
    """Candidates best first by a weighted sum of proxies, each oriented so that higher predicts a
    better student (ZOO directions) and standardised over this regime's candidates (z-scores, or
    ranks with `ranks`); one proxy charge (every proxy comes from the same passes)."""
    from augtune.search.selection.proxy import ZOO

    scores = world.proxy_scores("t_stddev")
    names = [s.candidate for s in scores]
    total = np.zeros(len(names))
    for proxy, weight in weights.items():
        values = np.array([s.value(proxy) for s in scores], dtype=float)
        values = -values if ZOO[proxy] == "lower" else values
        values = np.nan_to_num(values, nan=np.nanmin(values))
        if ranks:
            values = values.argsort().argsort().astype(float)
        spread = values.std()
        total += weight * ((values - values.mean()) / spread if spread > 0 else 0.0)
    order = sorted(range(len(names)), key=lambda i: (-total[i], names[i]))
    return [names[i] for i in order]


def combined_top_k(k: int, weights: dict[str, float], ranks: bool = False) -> Strategy:
    """The top k of a proxy combination (combined_ranking), trained in full."""
    def run(world: World) -> str:
        kept = combined_ranking(world, weights, ranks)[:k]
        return world.best_of({c: world.train(c) for c in kept})
    return run


def learn_proxy_weights(regime: Regime, proxies: Sequence[str]) -> dict[str, float]:
    """Least-squares weights of the oriented, standardised proxies (means over proxy seeds)
    predicting the negated mean final validation loss over every candidate of `regime`: a
    combination learned on one regime, to be tested on another."""
    from augtune.search.selection.proxy import ZOO

    columns = []
    for proxy in proxies:
        values = np.nanmean(regime.proxy[proxy], axis=1)
        values = -values if ZOO[proxy] == "lower" else values
        columns.append((values - values.mean()) / (values.std() or 1.0))
    target = -np.nanmean(regime.final("val_loss"), axis=1)
    weights, *_ = np.linalg.lstsq(np.stack(columns, 1), (target - target.mean()) / (target.std() or 1.0), rcond=None)
    return {proxy: float(w) for proxy, w in zip(proxies, weights)}


def tpe_asha(trials: int, grace_period: int, reduction_factor: float = 3) -> Strategy:
    """Optuna's TPE over the tabulated candidates (a categorical), one trial at a time, each
    stopped or continued by Ray's AsyncHyperBandScheduler as its epochs arrive; TPE is told each
    trial's last value (what Ray's OptunaSearch reports for a stopped trial). The best full-length
    trial is the choice. A candidate TPE proposes again is trained on the next search seed when
    there is one, else its first run is reused."""
    import optuna
    from ray.tune.schedulers import TrialScheduler

    def run(world: World) -> str:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sampler = optuna.samplers.TPESampler(seed=int(world.rng.integers(1 << 31)), n_startup_trials=min(10, trials))
        study = optuna.create_study(sampler=sampler, direction="minimize" if metric_sign(world.metric) > 0 else
                                    "maximize")
        scheduler = asha_scheduler(world.regime.epochs, grace_period, reduction_factor, world.metric)
        finished: dict[str, list[float]] = {}
        proposals: dict[str, int] = {}
        for number in range(trials):
            trial = study.ask()
            candidate = trial.suggest_categorical("candidate", list(world.regime.candidates))
            seed = min(proposals.get(candidate, 0), world.search_seeds - 1)
            proposals[candidate] = proposals.get(candidate, 0) + 1
            record = _Trial(f"{number:05d}-{candidate}", candidate)
            scheduler.on_trial_add(None, record)
            value = float("nan")
            for epoch in range(1, world.regime.epochs + 1):
                value = world.train(candidate, epoch, seed)
                result = {"training_iteration": epoch, world.metric: value}
                if scheduler.on_trial_result(None, record, result) == TrialScheduler.STOP:
                    break
            scheduler.on_trial_complete(None, record, {"training_iteration": epoch, world.metric: value})
            study.tell(trial, value)
            if epoch == world.regime.epochs:
                finished.setdefault(candidate, []).append(value)
        if not finished:  # Ray's rule lets the first trial through, so this does not happen
            return world.best_of({c: world.train(c, seed=0) for c in proposals})
        return world.best_of({c: float(np.mean(v)) for c, v in finished.items()})
    return run


@dataclass
class _Trial:
    """What AsyncHyperBandScheduler reads of a trial."""

    trial_id: str
    candidate: str = ""
    epochs: int = 0
    last: float = float("nan")
    history: list = field(default_factory=list)


def asha_scheduler(world_epochs: int, grace_period: int, reduction_factor: float, metric: str):
    from ray.tune.schedulers import AsyncHyperBandScheduler

    return AsyncHyperBandScheduler(time_attr="training_iteration", metric=metric, mode=metric_mode(metric),
                                   max_t=world_epochs, grace_period=min(grace_period, world_epochs),
                                   reduction_factor=reduction_factor, brackets=1)


def simulate_asha(world: World, candidates: Sequence[str], grace_period: int, reduction_factor: float,
                  workers: int) -> dict[str, tuple[int, float]]:
    """Run the real scheduler object over the table: `workers` trials at a time, trials started in
    the given order, each epoch's result delivered at the moment its run would have produced it
    (the table's per-epoch seconds). Returns {candidate: (epochs trained, last metric)}."""
    from ray.tune.schedulers import TrialScheduler

    scheduler = asha_scheduler(world.regime.epochs, grace_period, reduction_factor, world.metric)
    waiting = list(candidates)
    events: list[tuple[float, int, _Trial]] = []  # (time of the next result, tie-break, trial)
    out: dict[str, tuple[int, float]] = {}
    order = itertools.count()  # ties in time: first scheduled, first reported

    def start(at: float) -> None:
        candidate = waiting.pop(0)
        trial = _Trial(f"{len(out) + len(events):05d}-{candidate}", candidate)
        scheduler.on_trial_add(None, trial)
        seconds = world.curve(candidate, 0, world.regime.seconds_curve)
        heapq.heappush(events, (at + float(seconds[0]), next(order), trial))

    for _ in range(min(workers, len(waiting))):
        start(0.0)
    while events:
        now, _, trial = heapq.heappop(events)
        trial.epochs += 1
        trial.last = world.train(trial.candidate, trial.epochs)
        result = {"training_iteration": trial.epochs, world.metric: trial.last}
        action = scheduler.on_trial_result(None, trial, result)
        trial.history.append(action)
        if action == TrialScheduler.STOP or trial.epochs >= world.regime.epochs:
            scheduler.on_trial_complete(None, trial, result)
            out[trial.candidate] = (trial.epochs, trial.last)
            if waiting:
                start(now)
        else:
            seconds = world.curve(trial.candidate, 0, world.regime.seconds_curve)
            heapq.heappush(events, (now + float(seconds[trial.epochs]), next(order), trial))
    return out


# ---------------------------------------------------------------- many replays

@dataclass
class ReplayResult:
    strategy: str
    regime: str
    regrets: np.ndarray  # one per replay
    compute: np.ndarray  # seconds spent / exhaustive seconds, one per replay
    chosen: list[str]
    # per replay: true mean of the best reference recipe minus the chosen one's (> 0: the choice is better)
    margins: Optional[np.ndarray] = None

    def mean_regret(self) -> float:
        return float(self.regrets.mean())

    def interval(self, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
        """95% percentile bootstrap interval of the mean regret over replays."""
        rng = np.random.default_rng(seed)
        means = self.regrets[rng.integers(0, len(self.regrets), (resamples, len(self.regrets)))].mean(1)
        return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))

    def exceed(self, threshold: float) -> float:
        return float((self.regrets > threshold).mean())


def replay(regime: Regime, name: str, strategy: Strategy, replays: int = 200, seed: int = 0,
           search_seeds: int = 2, references: Sequence[str] = ()) -> ReplayResult:
    """`replays` searches, each with its own seed split, proxy seed and strategy randomness.
    `references` (fixed recipes): each replay also records how much better the choice is than the
    best of them on the same held-out seeds."""
    regrets, compute, chosen, margins = [], [], [], []
    exhaustive_seconds = regime.exhaustive_seconds()
    for r in range(replays):
        world = World(regime, np.random.default_rng([seed, r]), search_seeds)
        choice = strategy(world)
        truth = world.truth()
        regrets.append(float(truth[regime.index(choice)] - truth.min()))
        compute.append(world.seconds / exhaustive_seconds)
        chosen.append(choice)
        if references:
            best_reference = min(truth[regime.index(c)] for c in references)
            margins.append(float(best_reference - truth[regime.index(choice)]))
    return ReplayResult(name, regime.name, np.array(regrets), np.array(compute), chosen,
                        np.array(margins) if references else None)


def resample_seeds(regime: Regime, rng: np.random.Generator) -> Regime:
    """A bootstrap copy of `regime`: every candidate's runs drawn with replacement from its own
    (a run drawn twice is two draws from the empirical distribution; cross-fitting then treats
    them as two seeds). Proxy scores and seconds stay as they are."""
    ran = regime.ran()
    curves = {m: a.copy() for m, a in regime.curves.items()}
    for c in range(len(regime.candidates)):
        seeds = np.flatnonzero(ran[c])
        picks = rng.choice(seeds, size=len(seeds), replace=True)
        for m, a in regime.curves.items():
            curves[m][c, seeds] = a[c, picks]
    return Regime(regime.name, list(regime.candidates), list(regime.seeds), regime.epochs, curves, regime.proxy,
                  regime.proxy_seconds, regime.meta)


def two_level_bootstrap(regime: Regime, replays_of: Callable[[Regime, int], np.ndarray], outer: int,
                        seed: int = 0) -> np.ndarray:
    """`outer` bootstrap values of a mean over replays, with both sources of its uncertainty:
    level 1 resamples every candidate's seeds (resample_seeds), level 2 resamples the replays
    `replays_of(resampled regime, replay seed)` returns (with replacement, as many as it
    returned); each value is the mean of the resampled replays. Draw order, from
    default_rng(seed): the seed picks of every candidate in table order, the replay seed, the
    replay picks."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(outer):
        resampled = resample_seeds(regime, rng)
        per_replay = np.asarray(replays_of(resampled, int(rng.integers(1 << 31))), dtype=float)
        values.append(float(per_replay[rng.integers(0, len(per_replay), len(per_replay))].mean()))
    return np.array(values)


def replay_asha_through_tune(world: World, candidates: Sequence[str], grace_period: int, reduction_factor: float,
                             storage_path: str, name: str = "asha-replay") -> dict[str, tuple[int, float]]:
    """The same ASHA decision made by Ray Tune itself: a trainable reports the table's curve of
    the (candidate, first search seed) it is given instead of training; trials run one at a time
    in the given order. Returns {candidate: (epochs trained, last metric)} as Tune recorded it;
    equal to simulate_asha(..., workers=1) when both take the same decisions."""
    from ray import tune

    metric = world.metric
    curves = {c: [float(v) for v in world.curve(c, 0)] for c in candidates}

    def replay_trainable(config):
        for value in curves[config["candidate"]]:
            tune.report({metric: value})

    tuner = tune.Tuner(
        replay_trainable, param_space={"candidate": tune.grid_search(list(candidates))},
        tune_config=tune.TuneConfig(scheduler=asha_scheduler(world.regime.epochs, grace_period, reduction_factor,
                                                             metric), max_concurrent_trials=1, reuse_actors=True),
        run_config=tune.RunConfig(storage_path=storage_path, name=name, verbose=0))
    grid = tuner.fit()
    return {r.config["candidate"]: (int(r.metrics["training_iteration"]), float(r.metrics[metric])) for r in grid}
