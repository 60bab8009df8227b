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


def test_the_first_result_after_a_restore_logs_the_epochs_the_killed_driver_never_did(tmp_path):
    """A data-parallel trial's checkpoint can be ahead of what the killed driver logged: its first
    result after the restore carries the runner's earlier epochs, and the run gets the missing
    ones (with their own values), keeps the logged ones as they were, and has each epoch once."""
    import json

    from mlflow import MlflowClient

    from augtune.trainables.tune_trainables import EARLIER_EPOCHS

    uri = f"sqlite:///{tmp_path}/m.db"
    tracker = Tracker(uri, "resume")
    parent = tracker.start_run("sweep:resume", "sweep")
    logger = TrialLogger(uri, "resume", parent, "a->b", {})
    trial = SimpleNamespace(trial_id="t1", config={"augmentation": "cutout", "seed": 0})
    logger.on_trial_start(0, [], trial)
    epochs = [{"epoch": e, "lr": 0.1 / e, "val_loss": 1.0 / e, "test_loss": 2.0 / e, "train_loss": 3.0 / e}
              for e in range(1, 5)]
    logger.on_trial_result(0, [], trial, {**epochs[0], "val_loss": 9.0})  # logged before the kill
    # the driver was killed with epochs 2 and 3 checkpointed but not logged; a new driver resumes
    resumed = TrialLogger(uri, "resume", parent, "a->b", {})
    resumed.on_trial_start(0, [], trial)
    resumed.on_trial_result(0, [], trial, {**epochs[3], EARLIER_EPOCHS: json.dumps(epochs[:3])})
    history = {m.step: m.value for m in MlflowClient(uri).get_metric_history(logger.run_ids["t1"], "val_loss")}
    assert history == {1: 9.0, 2: 0.5, 3: 1.0 / 3, 4: 0.25}
    for key in ("lr", "test_loss", "train_loss"):
        assert sorted(m.step for m in MlflowClient(uri).get_metric_history(logger.run_ids["t1"], key)) == [1, 2, 3, 4]
