"""The trial logger's resume of a trial's MLflow run (search/results/trial_logger.py)."""
from types import SimpleNamespace

from augtune.search.results.tracking import PARENT_TAG, TRIAL_TAG, Tracker
from augtune.search.results.trial_logger import TrialLogger


def test_a_resumed_trial_gets_the_values_a_killed_driver_never_logged(tmp_path):
    """A driver killed between creating a trial's run and logging its values leaves a run with no
    params; the resumed sweep reuses that run and logs them, and leaves a complete run as it was."""
    uri = f"sqlite:///{tmp_path}/m.db"
    tracker = Tracker(uri, "resume")
    parent = tracker.start_run("sweep:resume", "sweep")
    bare = tracker.start_run("trial:cutout:t1", "trial", parent, {TRIAL_TAG: "t1"})  # killed right here
    complete = tracker.start_run("trial:mixup:t2", "trial", parent, {TRIAL_TAG: "t2"})
    tracker.log(complete, params={"augmentation": "mixup", "seed": 1, "lr": 0.05})

    logger = TrialLogger(uri, "resume", parent, "a->b", {"cutout": 0.25})
    logger.on_trial_start(0, [], SimpleNamespace(trial_id="t1", config={"augmentation": "cutout", "seed": 0,
                                                                      "lr": 0.02}))
    logger.on_trial_start(0, [], SimpleNamespace(trial_id="t2", config={"augmentation": "mixup", "seed": 1,
                                                                      "lr": 0.05}))
    assert logger.run_ids == {"t1": bare, "t2": complete}  # the same runs, no second one
    client = tracker.client
    resumed = client.get_run(bare)
    assert resumed.data.params == {"augmentation": "cutout", "seed": "0", "lr": "0.02"}
    assert resumed.data.metrics["t_stddev"] == 0.25 and resumed.info.status == "RUNNING"
    assert client.get_run(complete).data.params == {"augmentation": "mixup", "seed": "1", "lr": "0.05"}
    assert len(tracker.runs(f"tags.`{PARENT_TAG}` = '{parent}'")) == 2
