import math
import subprocess
import sys
from pathlib import Path

from augtune.search.selection.proxy import ProxyScore
from augtune.search.selection.prune import proxy_cut as prune
from augtune.search.sweep.tuners import AugmentationSpace


def _score(name, value, low, high):
    return ProxyScore(name, value, low, high, groups=10, passes=2, seconds=1.0)


SCORES = [_score("a", 0.010, 0.008, 0.012), _score("b", 0.011, 0.0115, 0.013),
          _score("c", 0.0115, 0.0119, 0.014), _score("d", 0.020, 0.018, 0.022),
          _score("e", math.nan, math.nan, math.nan)]


def test_prune_modes():
    assert prune(SCORES, "top_k", 2) == ["a", "b"]
    # overlap: every interval whose lower end reaches the best one's upper end (0.012)
    assert prune(SCORES, "overlap", 1) == ["a", "b", "c"]
    assert prune(SCORES, "none", 1) == ["a", "b", "c", "d"]  # unscored (NaN) never trains


def test_space_is_conditional_and_seeds_every_survivor():
    import optuna

    space = AugmentationSpace(["cutmix_pick(entropy=teacher,pool=2,keep=0.3)",
                               "cutmix_pick(entropy=teacher,pool=2,keep=0.5)", "cutout"],
                              {"lr": {"loguniform": [0.01, 0.1]}})
    points = space.first_points()
    assert len(points) == 3 and {"augmentation_kind": "cutout"} in points
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        chosen = space(trial)["augmentation"]
        names = set(trial.params)
        if trial.params["augmentation_kind"] == "cutout":
            assert chosen == "cutout" and names == {"augmentation_kind", "lr"}
        else:
            assert names == {"augmentation_kind", "cutmix_pick.variant", "lr"}
            assert chosen == trial.params["cutmix_pick.variant"]
        study.tell(trial, 0.0)


def test_sweep_script_runs_as_a_script():
    # `ray submit cluster.yaml search/submit.py -- CONFIG` runs the file directly
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(repo / "search" / "submit.py"), "--help"], capture_output=True,
                          text=True, timeout=120, cwd="/")
    assert done.returncode == 0 and "--resume" in done.stdout, done.stderr


def test_searcher_ignores_trials_it_never_suggested():
    """A restored experiment may report a trial created after the searcher's saved state."""
    from augtune.search.sweep.tolerant_optuna import TolerantOptunaSearch

    space = AugmentationSpace(["cutout", "flip"], {"lr": {"loguniform": [0.01, 0.1]}})
    searcher = TolerantOptunaSearch(space=space, metric="val_loss", mode="min", seed=0)
    config = searcher.suggest("known")
    assert config["augmentation"] in ("cutout", "flip")
    searcher.on_trial_result("unknown", {"val_loss": 0.5, "training_iteration": 1})  # no KeyError
    searcher.on_trial_complete("unknown", {"val_loss": 0.5})
    searcher.on_trial_result("known", {"val_loss": 0.4, "training_iteration": 1})
    searcher.on_trial_complete("known", {"val_loss": 0.4})
    finished = searcher._ot_study.get_trials()
    assert len(finished) == 1 and finished[0].value == 0.4
