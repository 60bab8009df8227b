"""The recipe baseline's comparison against hand computations; PBT's explore keeps a member's
policy inside the space; bad policy-space and baseline settings exit 2 naming the field."""
import math
import random

import pytest
from scipy import stats

from augtune.search.results.baseline import BaselineComparison, baseline_points, compare
from augtune.search.results.trials import TrialRow
from augtune.search.sweep.tuners import ExploreInsideDomains
from augtune.spaces.candidates import parse_candidate
from augtune.spaces.policies import DEFAULT_POLICY_SPACE

RECIPE = "cutmix_pick(entropy=teacher,pool=2,keep=0.5)"


def _row(aug, seed, val, test, **hyper):
    return TrialRow(aug, epochs=30, val_loss=val, test_loss=test, seed=seed, hyperparameters=hyper)


def test_baseline_points_use_the_chosen_trials_values_and_seed():
    best = _row("cutout(size=4)+mixup(alpha=0.2)", 7, 0.3, 0.3, lr=0.04, **{"kd.temperature": 2.0})
    points = baseline_points(best, RECIPE, 3, best.seed)
    assert [(p["augmentation"], p["seed"]) for p in points] == [
        (RECIPE, 7), (RECIPE, 8), (RECIPE, 9), (best.augmentation, 8), (best.augmentation, 9)]
    assert all(p["lr"] == 0.04 and p["kd.temperature"] == 2.0 for p in points)


def test_comparison_against_a_pooled_t_test_by_hand():
    best = _row("trivialaugment", 3, 0.20, 0.22)
    rows = [_row(RECIPE, 3, 0.26, 0.27), _row(RECIPE, 4, 0.30, 0.29), _row("trivialaugment", 4, 0.22, 0.23),
            _row("identity", 4, 0.1, 0.1)]  # not part of the comparison
    c = compare(best, RECIPE, rows, "val_loss", 2, 3)
    assert c.chosen_values == [0.20, 0.22] and c.baseline_values == [0.26, 0.30]
    sd = math.sqrt(((0.20 - 0.21) ** 2 + (0.22 - 0.21) ** 2 + (0.26 - 0.28) ** 2 + (0.30 - 0.28) ** 2) / 2)
    assert c.noise() == (pytest.approx(sd), 2)
    assert c.difference() == pytest.approx(0.07)  # lower val loss: the chosen one is better
    assert c.in_noise_units() == pytest.approx(0.07 / sd)
    t = stats.ttest_ind([0.20, 0.22], [0.26, 0.30])  # scipy's pooled two-sample t test
    assert c.separable() == bool(t.pvalue < 0.05)
    assert "chosen better" in c.line() if c.separable() else "not separable" in c.line()
    again = BaselineComparison.from_dict(c.as_dict())
    assert again.line() == c.line()


def test_one_seed_each_is_never_called_separable():
    c = compare(_row("trivialaugment", 0, 0.1, 0.1), RECIPE, [_row(RECIPE, 0, 0.5, 0.5)], "val_loss", 1, 0)
    assert c.separable() is None and "not separable" in c.line()


def test_the_chosen_recipe_is_its_own_baseline():
    c = compare(_row(RECIPE, 0, 0.2, 0.2), RECIPE, [_row(RECIPE, 1, 0.25, 0.2)], "val_loss", 2, 0)
    assert c.same and "is the baseline recipe" in c.line()


def test_pbt_explore_moves_a_policy_inside_the_space_and_clips_values():
    explore = ExploreInsideDomains({"lr": {"loguniform": [0.01, 0.1]}}, "default", resample_probability=0.0)
    random.seed(0)
    policy = DEFAULT_POLICY_SPACE.sample(1, seed=2)[0].id
    moved = 0
    for _ in range(50):
        config = explore({"augmentation": policy, "lr": 0.5, "seed": 1})
        assert config["lr"] == 0.1 and parse_candidate(config["augmentation"]) in DEFAULT_POLICY_SPACE
        moved += config["augmentation"] != policy
        policy = config["augmentation"]
    assert moved > 35
    without_space = ExploreInsideDomains({}, None)
    assert without_space({"augmentation": "cutmix(alpha=1.0)"})["augmentation"] == "cutmix(alpha=1.0)"


def test_a_finished_run_ray_forgot_is_superseded_and_left_out_of_best(tmp_path):
    """The sweep's summary tags FINISHED trial runs that no phase holds (Ray forgot them, a top-up
    trained their work again): kept in MLflow, left out of best's rows."""
    from augtune.search.sweep.driver import supersede_forgotten
    from augtune.search.results.tracking import SUPERSEDED_TAG, TRIAL_TAG, Tracker
    from augtune.search.results.trials import trial_rows

    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "forgot")
    parent = tracker.start_run("sweep:x", "sweep")
    ids = {}
    for trial_id in ("kept", "forgotten", "running"):
        run = tracker.start_run(f"trial:{trial_id}", "trial", parent, {TRIAL_TAG: trial_id, "augtune.candidate": "cutout"})
        tracker.log(run, metrics={"final_val_loss": 0.3, "epochs_trained": 2})
        if trial_id != "running":
            tracker.end_run(run)
        ids[trial_id] = run
    assert supersede_forgotten(tracker, parent, {"kept", "running"}) == 1
    assert SUPERSEDED_TAG in tracker.client.get_run(ids["forgotten"]).data.tags
    assert tracker.client.get_run(ids["forgotten"]).info.status == "FINISHED"  # nothing logged is lost
    assert [row.trial_id for row in trial_rows(tracker, parent)] == ["kept"]
    assert supersede_forgotten(tracker, parent, {"kept", "running"}) == 0  # once


# ---------------------------------------------------------------- the baseline after the search, in its experiment

class _ListSearch:
    """A searcher that hands out fixed configs in order (Ray's Searcher interface, what
    SearchThenBaseline calls) and records what it was told."""

    def __init__(self, configs):
        self.configs, self.told = list(configs), []

    def set_search_properties(self, metric, mode, config, **spec):
        return True

    def suggest(self, trial_id):
        return self.configs.pop(0) if self.configs else "FINISHED"

    def on_trial_result(self, trial_id, result):
        pass

    def on_trial_complete(self, trial_id, result=None, error=False):
        self.told.append(trial_id)


def _search_then_baseline(full_epochs=10):
    from augtune.search.sweep.baseline_in_search import SearchThenBaseline

    inner = _ListSearch([{"augmentation": "a", "lr": 0.1}, {"augmentation": "b", "lr": 0.2},
                         {"augmentation": "c", "lr": 0.3}])
    return SearchThenBaseline(inner, 3, 2, "val_loss", "min", RECIPE, 2, 0, full_epochs), inner


def _end(searcher, trial_id, epoch, val_loss):
    searcher.on_trial_complete(trial_id, {"trial_id": trial_id, "epoch": epoch, "val_loss": val_loss})


def test_the_search_goes_on_with_the_baseline_of_its_best_full_length_trial_then_of_the_chosen():
    searcher, inner = _search_then_baseline()
    assert searcher.suggest("t1") == {"augmentation": "a", "lr": 0.1}
    assert searcher.suggest("t2") == {"augmentation": "b", "lr": 0.2}
    assert searcher.suggest("t3") is None  # 2 running: the concurrency bound
    _end(searcher, "t1", 3, 0.05)  # stopped early by ASHA: the best loss, but not full length
    assert searcher.suggest("t3") == {"augmentation": "c", "lr": 0.3}
    assert searcher.suggest("t4") is None
    _end(searcher, "t2", 10, 0.4)  # the only full-length trial: the guess
    guess = searcher.suggest("t4")
    assert guess == {"augmentation": RECIPE, "seed": 0, "lr": 0.2, "phase": "baseline"}
    _end(searcher, "t3", 10, 0.3)  # c beats b: the search is over, c is chosen
    # c's points, in baseline_points' order: the recipe at seeds 0 and 1, c again at seed 1
    assert searcher.suggest("t5") == {"augmentation": RECIPE, "seed": 0, "lr": 0.3, "phase": "baseline"}
    assert searcher.suggest("t6") is None  # t4 and t5 run
    searcher.on_trial_complete("t4", {"epoch": 10, "val_loss": 0.5})
    assert searcher.suggest("t6") == {"augmentation": RECIPE, "seed": 1, "lr": 0.3, "phase": "baseline"}
    searcher.on_trial_complete("t5", {"epoch": 10, "val_loss": 0.5})
    assert searcher.suggest("t7") == {"augmentation": "c", "seed": 1, "lr": 0.3, "phase": "baseline"}
    assert searcher.suggest("t8") == "FINISHED"
    assert inner.told == ["t1", "t2", "t3"]  # the search's own searcher hears of its trials only


def test_nothing_follows_when_the_recipe_itself_is_chosen():
    from augtune.search.sweep.baseline_in_search import SearchThenBaseline

    searcher = SearchThenBaseline(_ListSearch([{"augmentation": RECIPE, "lr": 0.1}]), 1, 2, "val_loss", "min",
                                  RECIPE, 2, 0, 10)
    assert searcher.suggest("t1")["augmentation"] == RECIPE
    assert searcher.suggest("t2") is None  # the search runs: nothing to guess from
    _end(searcher, "t1", 10, 0.3)
    assert searcher.suggest("t2") == "FINISHED"


def test_a_restored_searcher_goes_on_where_its_saved_record_left_off():
    import ray.cloudpickle as cloudpickle

    searcher, inner = _search_then_baseline()
    for trial_id in ("t1", "t2"):
        searcher.suggest(trial_id)
    _end(searcher, "t1", 10, 0.2)
    state = cloudpickle.loads(cloudpickle.dumps(searcher.get_state()))  # as Tune saves it
    restored, _ = _search_then_baseline()
    restored.searcher = inner  # Tune restores the innermost searcher from its own file
    restored.set_state(state)
    # what ran is not saved: t2, restored by Tune, says so with its first result
    restored.on_trial_result("t2", {"epoch": 4, "val_loss": 0.9, "config": {"augmentation": "b", "lr": 0.2}})
    assert restored.suggest("t3") == {"augmentation": "c", "lr": 0.3}
    assert restored.suggest("t4") is None  # t2 and t3 run
    _end(restored, "t2", 10, 0.5)
    assert restored.suggest("t4") == {"augmentation": RECIPE, "seed": 0, "lr": 0.1, "phase": "baseline"}


def test_asha_leaves_the_baseline_trials_out_of_its_rungs():
    from types import SimpleNamespace

    from ray.tune.schedulers import TrialScheduler

    from augtune.search.sweep.baseline_in_search import SearchOnlyASHA

    asha = SearchOnlyASHA(time_attr="training_iteration", metric="val_loss", mode="min", max_t=10, grace_period=1,
                          reduction_factor=2)
    good, bad = SimpleNamespace(trial_id="good", config={}), SimpleNamespace(trial_id="bad", config={})
    baseline = SimpleNamespace(trial_id="base", config={"phase": "baseline"})
    for trial in (good, bad, baseline):
        asha.on_trial_add(None, trial)
    assert asha.on_trial_result(None, good, {"training_iteration": 1, "val_loss": 0.1}) == TrialScheduler.CONTINUE
    assert asha.on_trial_result(None, bad, {"training_iteration": 1, "val_loss": 9.0}) == TrialScheduler.STOP
    for iteration in (1, 2, 4, 10):  # worse than anything, and at max_t: still trains (and ends itself)
        assert asha.on_trial_result(None, baseline, {"training_iteration": iteration, "val_loss": 99.0}) \
            == TrialScheduler.CONTINUE
    asha.on_trial_complete(None, baseline, {"training_iteration": 10, "val_loss": 99.0})
    assert "base" not in asha._trial_info and "good" in asha._trial_info


def test_tune_lets_as_many_trials_wait_for_actors_as_the_search_runs_at_once():
    """Tune finds the ConcurrencyLimiter inside (by its `searcher` attribute) and starts both
    slots' actors side by side; otherwise it would create one trial at a time (Ray 2.60's rule)."""
    from ray.tune.execution.tune_controller import _get_max_pending_trials
    from ray.tune.search import ConcurrencyLimiter, SearchGenerator

    from augtune.search.sweep.baseline_in_search import SearchThenBaseline
    from augtune.search.sweep.tolerant_optuna import TolerantOptunaSearch

    limited = ConcurrencyLimiter(TolerantOptunaSearch(metric="val_loss", mode="min"), max_concurrent=3)
    searcher = SearchThenBaseline(limited, 8, 3, "val_loss", "min", RECIPE, 2, 0, 10)
    assert _get_max_pending_trials(SearchGenerator(searcher)) == 3
