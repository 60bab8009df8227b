"""Population based training: an exploit takes the donor's whole state and the new values; a
replayed schedule applies its values epoch by epoch and reproduces the member exactly; a real
PBT sweep keeps one MLflow run per member with every epoch logged once."""
import json
import shutil
import time
from pathlib import Path

import pytest
import torch

from augtune.search.sweep_config import ConfigError, load_config
from augtune.search.results.schedule import to_steps
from tests.sweep_helpers import replay_exported_best, runs_by_stage, write_sweep_config
from augtune.trainables.experiment_config import DistillConfig
from augtune.trainables.data import load_data
from augtune.trainables.engine import lr_factor, save_checkpoint
from augtune.trainables.models import build_model

TRACK = ["lr", "cutmix.alpha", "kd.temperature"]


def _experiment(tmp_path, epochs=4) -> DistillConfig:
    return DistillConfig.model_validate({
        "output_dir": str(tmp_path), "data": {"name": "digits", "samples_per_class": 10, "val_per_class": 5,
                                              "image_size": 12},
        "teacher": {"model": "resnet8"},
        "student": {"model": "resnet8", "train": {"epochs": epochs, "batch_size": 32, "schedule": "cosine"}},
    })


@pytest.fixture
def kd_trainable(tmp_path, ray_session):
    from ray import tune

    from augtune.trainables.tune_trainables import KDTrainable

    experiment = _experiment(tmp_path)
    data = load_data(experiment.data)
    torch.manual_seed(0)
    teacher = build_model("resnet8", data.num_classes, data.channels)
    checkpoint = save_checkpoint(tmp_path / "teacher.pt", teacher, "resnet8", data)
    trainable = tune.with_parameters(KDTrainable, experiment=experiment.model_dump(mode="json"),
                                     teacher_checkpoint=str(checkpoint), track=TRACK)
    return experiment, checkpoint, trainable


def _clone(state):
    return {k: (v.clone() if torch.is_tensor(v) else v) for k, v in state.items()}


DONOR = {"augmentation": "cutmix", "seed": 3, "lr": 0.05, "cutmix.alpha": 1.0, "kd.temperature": 4.0}


def _donor_after_two_epochs(trainable, folder):
    """A population member trained 2 epochs, its checkpoint saved in `folder` (what PBT copies)."""
    donor = trainable(config=dict(DONOR))
    results = [donor.train(), donor.train()]
    folder.mkdir()
    donor.save_checkpoint(str(folder))
    return donor, results


def test_exploit_copies_the_donors_state_and_takes_the_new_values(kd_trainable, tmp_path):
    _, _, trainable = kd_trainable
    folder = tmp_path / "donor-checkpoint"
    donor, _ = _donor_after_two_epochs(trainable, folder)
    weights = _clone(donor.runner.model.state_dict())
    generator = donor.runner.generator.get_state().clone()
    feeder_generator = donor.runner.train_feeder.generator.get_state().clone()
    momentum = [donor.runner.optimizer.state[p]["momentum_buffer"].clone() for p in donor.runner.model.parameters()]

    member = trainable(config={"augmentation": "mixup", "seed": 1, "lr": 0.02, "cutmix.alpha": 2.0,
                               "kd.temperature": 2.0})
    member.train()  # a member with a state of its own, about to be overwritten
    new_config = {**DONOR, "lr": 0.08, "cutmix.alpha": 0.4}  # what PBT's explore gives
    assert member.reset(dict(new_config))  # Ray's exploit on a reused actor: reset, then restore
    member.load_checkpoint(str(folder))

    runner = member.runner
    assert runner.epoch == 2
    for name, value in runner.model.state_dict().items():
        assert torch.equal(value, weights[name]), name
    assert torch.equal(runner.generator.get_state(), generator)
    assert torch.equal(runner.train_feeder.generator.get_state(), feeder_generator)
    for param, buffer in zip(runner.model.parameters(), momentum):
        assert torch.equal(runner.optimizer.state[param]["momentum_buffer"], buffer)
    # the new values, not the donor's: the restored optimiser carried lr 0.05
    steps = runner.scheduler.last_epoch
    assert steps == 2 * len(runner.train_feeder)
    expected_lr = 0.08 * lr_factor(runner.train_cfg, steps, len(runner.train_feeder))
    assert runner.optimizer.param_groups[0]["lr"] == pytest.approx(expected_lr, rel=1e-12)
    assert runner.scheduler.base_lrs == [0.08]
    assert runner.candidate.params["alpha"] == 0.4
    # the donor's schedule so far is the member's lineage
    assert [(r["epoch"], r["lr"], r["cutmix.alpha"]) for r in runner.values.log] == [(1, 0.05, 1.0), (2, 0.05, 1.0)]
    result = member.train()
    assert result["epoch"] == 3 and result["schedule.lr"] == 0.08 and result["schedule.cutmix.alpha"] == 0.4
    assert runner.values.log[-1]["augmentation"] == "cutmix(alpha=0.4)"
    donor.stop(), member.stop()


def test_a_replayed_schedule_applies_its_values_and_reproduces_the_member(kd_trainable, tmp_path):
    from augtune.trainables.kd import KDRunner
    from augtune.trainables.values import value_of

    experiment, teacher, trainable = kd_trainable
    folder = tmp_path / "checkpoint"
    donor, donor_results = _donor_after_two_epochs(trainable, folder)
    member = trainable(config={**DONOR, "seed": 9})
    member.reset({**DONOR, "lr": 0.03, "cutmix.alpha": 0.25, "kd.temperature": 2.5})
    member.load_checkpoint(str(folder))
    member_results = [member.train(), member.train()]
    assert member_results[-1]["done"]
    lineage = json.loads(member_results[-1]["schedule_log"])
    # the metrics of every epoch of the network: the donor's first two, then the member's own
    curves = json.loads(member_results[-1]["lineage_curves"])
    assert [(c["epoch"], c["val_loss"]) for c in curves] == [(r["epoch"], r["val_loss"])
                                                            for r in donor_results + member_results]
    donor.stop(), member.stop()

    steps = to_steps(lineage)
    assert [s["epoch"] for s in steps] == [1, 3]  # the start, then the exploit's new values
    replay_cfg = DistillConfig.model_validate({**experiment.model_dump(mode="json"), "seed": 3, "schedule": steps})
    runner = KDRunner(replay_cfg, None, str(teacher))
    seen = []
    while not runner.finished:
        metrics = runner.run_epoch()
        seen.append((value_of(runner, "lr"), value_of(runner, "kd.temperature"), runner.candidate.id,
                     runner.kd_cfg.temperature, runner.optimizer.param_groups[0]["weight_decay"]))
        last = metrics
    assert seen == [(0.05, 4.0, "cutmix(alpha=1.0)", 4.0, 5e-4)] * 2 + [(0.03, 2.5, "cutmix(alpha=0.25)", 2.5, 5e-4)] * 2
    assert runner.values.log == lineage
    # the same network as the member that trained through an exploit (CPU kernels are deterministic)
    for key in ("train_loss", "val_loss", "test_loss"):
        assert last[key] == member_results[-1][key], key


def test_schedule_steps_are_checked(tmp_path):
    base = _experiment(tmp_path).model_dump(mode="json")
    cases = [
        ([{"epoch": 1, "values": {"batch_size": 64}}], "batch_size cannot change during a run"),
        ([{"epoch": 1, "values": {"cutmix.alpha": 50.0}}], "cutmix.alpha must lie in"),
        ([{"epoch": 1, "values": {"lr": -1.0}}], "schedule.0.values.lr"),
        ([{"epoch": 2, "values": {"lr": 0.1}}, {"epoch": 2, "values": {"lr": 0.2}}], "increasing epoch order"),
        ([{"epoch": 9, "values": {"lr": 0.1}}], "past the run's 4 epochs"),
        ([{"epoch": 1, "values": {"augmentation": "cutmixx"}}], "unknown augmentation"),
    ]
    for schedule, message in cases:
        with pytest.raises(ValueError, match=message):
            DistillConfig.model_validate({**base, "schedule": schedule})


@pytest.mark.parametrize("search, message", [
    ({"scheduler": {"kind": "pbt"}, "method": "ssd"}, "ssd trials are multi-stage"),
    ({"scheduler": {"kind": "pbt"}, "hyperparameters": {"batch_size": {"int": [16, 64]}}}, "cannot change mid-run"),
    ({"scheduler": {"kind": "pbt"}, "hyperparameters": {"lr": 0.05}}, "at least one search.hyperparameters"),
    ({"scheduler": {"kind": "pbt", "perturbation_interval": 2}}, "would never exploit"),
    ({"scheduler": {"kind": "pbt"}, "resources": {"cpu": 1, "workers_per_trial": 2}}, "use scheduler.kind asha"),
    ({"hyperparameters": {"randaugment.magnitude": {"uniform": [1, 9]}}}, "takes whole numbers"),
    ({"hyperparameters": {"cutmix.alpha": {"uniform": [0.1, 20.0]}}}, "cutmix.alpha must lie in"),
])
def test_pbt_config_is_checked(tmp_path, search, message):
    path = write_sweep_config(tmp_path, "pbt-bad", f"sqlite:///{tmp_path}/m.db", **search)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


@pytest.mark.slow
def test_pbt_sweep_keeps_one_run_per_member_and_logs_schedules(tmp_path, ray_session):
    from mlflow import MlflowClient

    from augtune.search.sweep.driver import run_sweep

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    path = write_sweep_config(
        tmp_path, "pbt", uri, num_samples=4, prune={"mode": "top_k", "top_k": 2},
        scheduler={"kind": "pbt", "perturbation_interval": 1, "quantile_fraction": 0.5, "resample_probability": 0.5},
        hyperparameters={"lr": {"loguniform": [0.02, 0.1]}, "cutmix.alpha": {"uniform": [0.2, 2.0]},
                         "mixup.alpha": {"uniform": [0.2, 2.0]}})
    cfg = load_config(path, {"student.train.epochs": 6, "space.candidates": ["identity", "mixup", "cutmix"]})
    outcome = run_sweep(cfg, progress=False)
    assert outcome.best is not None and len(outcome.trials) == 4
    client = MlflowClient(tracking_uri=uri)
    trials = runs_by_stage(uri, "pbt")["trial"]
    assert sorted(r.data.tags["augtune.trial_id"] for r in trials) == sorted(t.trial_id for t in outcome.trials)
    exploited = 0
    for run in trials:
        assert run.info.status == "FINISHED"
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_loss"))
        # every epoch once: one a member skipped by taking a donor's later checkpoint comes from its lineage
        assert steps == list(range(1, 7)), steps
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"schedule.csv", "schedule.png", "schedule.json", "final_config.json"} <= artifacts
        rows = json.loads(open(client.download_artifacts(run.info.run_id, "schedule.json", str(tmp_path))).read())
        assert [r["epoch"] for r in rows] == list(range(1, 7))
        logged_lr = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "schedule.lr"),
                                             key=lambda m: m.step)]
        started_with = float(run.data.params["lr"])
        # an exploited member's lineage starts with its donor's values, not the ones it started with
        if rows[0]["lr"] != started_with:
            exploited += 1
            assert logged_lr[0] == started_with  # what the member itself trained with before the exploit
        for row in rows:  # explore stays inside the declared domains
            assert 0.02 <= row["lr"] <= 0.1
            for name in ("cutmix.alpha", "mixup.alpha"):
                if name in row:
                    assert 0.2 <= row[name] <= 2.0
    assert exploited >= 1  # with half the population below the top half, some member copied another
    # the best member, exported from MLflow with its schedule, replays bit for bit without Ray
    summary = replay_exported_best(tmp_path, "pbt", uri)
    assert summary["val_loss"] == outcome.best.val_loss and summary["test_loss"] == outcome.best.test_loss


def _counting_trainable():
    """A member whose whole state is one number: each step adds its rate; a restore reports the
    folder and the number it loaded. Members wait for each other before their first step (a file
    each under `config["started"]`), so the donor is still stepping when the slow member first
    reports, however late Ray started either; the steps are paced so that a donor saves its next
    checkpoint well within the time a restarted member takes to start."""
    from ray import tune

    class Counting(tune.Trainable):
        def setup(self, config):
            started = Path(config["started"])
            started.mkdir(exist_ok=True)
            (started / self.trial_id).touch()
            deadline = time.monotonic() + 60  # never a hang: a member alone goes on after a minute
            while len(list(started.iterdir())) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.5)  # an actor's start: slower than a donor's steps
            self.value, self.restored = 0.0, ("", -1.0)

        def step(self):
            time.sleep(0.2)
            self.value += self.config["rate"]
            (restored_from, restored_value), self.restored = self.restored, ("", -1.0)  # with its first step only
            return {"score": self.value, "restored_from": restored_from, "restored_value": restored_value}

        def save_checkpoint(self, checkpoint_dir):
            (Path(checkpoint_dir) / "value.json").write_text(json.dumps(self.value))

        def load_checkpoint(self, checkpoint_dir):
            self.value = json.loads((Path(checkpoint_dir) / "value.json").read_text())
            self.restored = (str(checkpoint_dir), self.value)

    return tune.with_resources(Counting, {"cpu": 0.5})


@pytest.mark.parametrize("keep", [True, False], ids=["kept", "not-kept"])
def test_an_exploiting_member_restores_after_the_donor_deleted_its_checkpoint(tmp_path, ray_session, keep):
    """Two members, one climbing ten times faster: PBT points the slow one at the fast one's
    checkpoint at every interval, and the donor's retention deletes that checkpoint before the
    member restores. With KeepExploitedCheckpoints the member restores from its own
    copy (the donor's number, at the donor's iteration) and no copy outlives the run; without it
    the member fails, which is the race the callback exists for."""
    from ray import tune
    from ray.tune.schedulers import PopulationBasedTraining

    from augtune.search.sweep.exploited_checkpoints import COPY_PREFIX, KeepExploitedCheckpoints

    class DonorRetention(tune.Callback):
        """Ray's retention keeping one checkpoint per donor: the one PBT named is deleted when the
        donor has saved a newer one. Members start slower than a donor steps (`setup` sleeps), so
        that happens before the exploiting member restores."""

        def __init__(self):
            self.named: dict[str, set[Path]] = {}

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if trial.latest_checkpoint_result is not None:
                path = Path(trial.latest_checkpoint_result.checkpoint.path)
                if path.name.startswith(COPY_PREFIX):
                    donor_id, _, index = path.name[len(COPY_PREFIX):].rpartition("_checkpoint_")
                    path = Path(next(t for t in trials if t.trial_id == donor_id).path) / f"checkpoint_{index}"
                if path.parent != Path(trial.path):
                    self.named.setdefault(str(path.parent), set()).add(path)

        def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
            for path in self.named.pop(str(Path(trial.path)), set()) - {Path(checkpoint.path)}:
                shutil.rmtree(path, ignore_errors=True)

    pbt = PopulationBasedTraining(time_attr="training_iteration", perturbation_interval=1, quantile_fraction=0.5,
                                  hyperparam_mutations={"rate": [0.1]}, resample_probability=1.0, synch=False)
    callbacks = [*([KeepExploitedCheckpoints()] if keep else []), DonorRetention()]
    tuner = tune.Tuner(_counting_trainable(),
                       param_space={"rate": tune.grid_search([1.0, 0.1]), "started": str(tmp_path / "started")},
                       tune_config=tune.TuneConfig(metric="score", mode="max", scheduler=pbt),
                       run_config=tune.RunConfig(name="pbt", storage_path=str(tmp_path), verbose=0, callbacks=callbacks,
                                                 stop={"training_iteration": 5},
                                                 checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=1),
                                                 failure_config=tune.FailureConfig(max_failures=0)))
    grid = tuner.fit()
    if not keep:
        assert grid.num_errors >= 1  # the member named a folder that was gone
        return
    assert grid.num_errors == 0
    histories = {r.path: r.metrics_dataframe for r in grid}
    restores = 0
    for path, history in histories.items():
        for row in history[history.restored_from != ""].itertuples():
            restored = Path(row.restored_from)
            assert restored.parent == Path(path), restored  # every restore from the member's own folder
            if not restored.name.startswith(COPY_PREFIX):
                continue  # its own checkpoint (PBT pauses a member that is ahead)
            donor_id = restored.name[len(COPY_PREFIX):].rpartition("_checkpoint_")[0]
            donor = next(h for p, h in histories.items() if donor_id in Path(p).name)
            # the donor climbs at its own rate and never copies anyone, so its number at iteration k is
            # k x rate; the member's restore carries the number the donor had at the iteration it saved
            # (Tune leaves out of the history a result PBT paused a member on, so it is computed, not looked up)
            assert not donor.restored_from.str.contains(COPY_PREFIX).any()
            saved_at = int(row.training_iteration) - 1
            assert row.restored_value == saved_at * donor["config/rate"].iloc[0]
            restores += 1
    assert restores >= 1
    assert not list(Path(grid.experiment_path).glob(f"*/{COPY_PREFIX}*"))
