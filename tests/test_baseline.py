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
