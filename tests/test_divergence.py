"""A trial whose loss becomes NaN stops at that epoch, is marked diverged in Ray's results and
in MLflow (status FAILED, tag augtune.diverged), and best/report leave it out."""
import math
import sys

from augtune.search.cli import main
from augtune.search.results.trials import TrialRow, pick_best
from augtune.search.sweep.tuners import collect_trials
from augtune.search.results.tracking import CANDIDATE_TAG, Tracker
from augtune.search.results.trial_logger import TrialLogger
from augtune.trainables.values import RunValues

EPOCHS = 5


class ScriptedRunner:
    """Reports a loss curve chosen by the trial config: finite, or NaN from epoch 2 on."""

    values = RunValues()  # nothing changes mid-run, nothing recorded

    def __init__(self, config):
        self.config, self.epoch = config, 0

    @property
    def finished(self):
        return self.epoch >= EPOCHS

    def run_epoch(self):
        self.epoch += 1
        bad = self.config["augmentation"] == "explodes" and self.epoch >= 2
        loss = math.nan if bad else 1.0 / self.epoch
        return {"epoch": self.epoch, "train_loss": loss, "val_loss": loss + self.config["offset"],
                "val_acc": 0.5, "test_loss": loss + 0.1, "test_acc": 0.5}

    def state_dict(self):
        return {"epoch": self.epoch}

    def load_state_dict(self, state):
        self.epoch = state["epoch"]


def _build(config, cache, trial):
    return ScriptedRunner(config)


def test_nan_trial_stops_is_marked_and_left_out(tmp_path, ray_session, capsys):
    from ray import cloudpickle, tune

    from augtune.trainables.tune_trainables import as_trainable

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    uri = f"sqlite:///{tmp_path}/m.db"
    tracker = Tracker(uri, "diverge")
    parent = tracker.start_run("sweep:diverge", "sweep")
    logger = TrialLogger(uri, "diverge", parent, "a->b", {})
    tuner = tune.Tuner(as_trainable(_build, "Scripted"),
                       param_space={"augmentation": tune.grid_search(["explodes", "calm"]), "offset": 0.0},
                       tune_config=tune.TuneConfig(metric="val_loss", mode="min"),
                       run_config=tune.RunConfig(storage_path=str(tmp_path / "ray"), callbacks=[logger], verbose=0))
    trials = {t.augmentation: t for t in collect_trials(tuner.fit())}
    assert trials["explodes"].diverged and trials["explodes"].epochs == 2  # stopped at the NaN epoch
    assert not trials["calm"].diverged and trials["calm"].epochs == EPOCHS
    assert pick_best(list(trials.values()), "val_loss").augmentation == "calm"
    runs = {r.data.tags[CANDIDATE_TAG]: r for r in tracker.children(parent, "trial")}
    assert runs["explodes"].info.status == "FAILED" and runs["explodes"].data.tags["augtune.diverged"] == "true"
    assert runs["calm"].info.status == "FINISHED" and "augtune.diverged" not in runs["calm"].data.tags
    assert main(["best", "--experiment", "diverge", "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert "best augmentation: calm" in out and "left out 1 diverged" in out


def test_pick_best_ignores_diverged_and_nonfinite_trials():
    base = {"epochs": 3, "test_loss": 0.1}
    trials = [TrialRow(**base, augmentation="a", val_loss=0.01, diverged=True),
              TrialRow(**base, augmentation="b", val_loss=math.inf),
              TrialRow(**base, augmentation="c", val_loss=0.30),
              TrialRow(augmentation="stopped", val_loss=0.001, epochs=1, test_loss=0.1)]
    assert pick_best(trials, "val_loss").augmentation == "c"  # the one stopped early is not comparable
    assert pick_best(trials[:2], "val_loss") is None
