"""`augtune train kd|sla|ssd`: one run without Ray, resumable, reproducible, optionally tracked."""
import json

import pytest
import yaml
from mlflow import MlflowClient

from augtune.search.cli import main
from fixtures import assert_accuracy_of

BASE = {"name": "single", "seed": 0,
        "data": {"name": "digits", "samples_per_class": 12, "val_per_class": 5, "image_size": 12},
        "teacher": {"model": "resnet8", "train": {"epochs": 2, "batch_size": 32}},
        "student": {"model": "resnet8", "train": {"epochs": 3, "batch_size": 32}}}


def _config(tmp_path, name="single", **extra):
    cfg = json.loads(json.dumps(BASE))
    cfg.update(name=name, output_dir=str(tmp_path / "runs"), tracking={"uri": f"sqlite:///{tmp_path}/m.db"}, **extra)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _summary(tmp_path, name, method="kd"):
    return json.loads((tmp_path / "runs" / name / f"train-{method}" / "summary.json").read_text())


class Stop(Exception):
    pass


def test_interrupted_kd_run_resumes_to_the_same_result(tmp_path, capsys):
    from augtune.search.sweep_config import load_config
    from augtune.search.standalone.single_run import run_folder, train_single

    straight = _config(tmp_path, "straight")
    assert main(["train", "kd", str(straight), "--augmentation", "cutmix", "--no-progress"]) == 0
    interrupted = _config(tmp_path, "interrupted")
    cfg = load_config(interrupted)

    def stop_after_two(metrics):
        if metrics["epoch"] == 2:
            raise Stop  # as a Ctrl-C after the second epoch's state was saved

    with pytest.raises(Stop):
        train_single(cfg, "kd", "cutmix", progress=False, on_epoch=stop_after_two)
    assert (run_folder(cfg, "kd") / "runner.pt").is_file() and not (run_folder(cfg, "kd") / "summary.json").exists()
    assert main(["train", "kd", str(interrupted), "--augmentation", "cutmix", "--resume", "--no-progress"]) == 0
    a, b = _summary(tmp_path, "straight"), _summary(tmp_path, "interrupted")
    assert a["epochs"] == b["epochs"] == 3
    assert a["val_loss"] == b["val_loss"] and a["test_loss"] == b["test_loss"]  # bit for bit on CPU
    from augtune.trainables.engine import load_checkpoint
    student, _ = load_checkpoint(b["student_checkpoint"])
    assert sum(p.numel() for p in student.parameters()) > 0


def test_tracked_run_logs_every_epoch_once(tmp_path, capsys):
    path = _config(tmp_path, "tracked")
    assert main(["train", "kd", str(path), "--no-progress", "--track", "--seed", "4"]) == 0
    summary = _summary(tmp_path, "tracked")
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/m.db")
    run = client.get_run((tmp_path / "runs" / "tracked" / "train-kd" / "mlflow_run_id").read_text().strip())
    assert run.info.status == "FINISHED" and run.data.tags["augtune.stage"] == "single"
    assert run.data.params["augmentation"] == "identity" and run.data.params["seed"] == "4"
    assert run.data.metrics["final_val_loss"] == pytest.approx(summary["val_loss"])
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_loss")) == [1, 2, 3]


@pytest.mark.parametrize("method", ["sla", "ssd"])
def test_sla_and_ssd_single_runs(tmp_path, method, capsys):
    extra = {"ssd": {"start_stage": 1, "lws": {"epochs": 1, "batch_size": 32}}} if method == "ssd" else {}
    path = _config(tmp_path, method, **extra)
    assert main(["train", method, str(path), "--augmentation", "cutout", "--no-progress"]) == 0
    summary = _summary(tmp_path, method, method)
    assert summary["augmentation"] == "cutout"
    assert_accuracy_of(summary["test_acc"], 450)  # the digits test split


@pytest.mark.parametrize("argv,text", [
    (["--augmentation", "cutmixx"], "--augmentation"),
    (["--augmentation", "mixup"], "--augmentation"),  # sla: one label per image
    (["--resume"], "--resume"),
    (["--set", "student.train.lr=-1"], "student.train.lr"),
])
def test_single_run_bad_input_exits_2(tmp_path, argv, text, capsys):
    path = _config(tmp_path)
    assert main(["train", "sla", str(path), "--no-progress", *argv]) == 2
    assert text in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "m.db").exists()


@pytest.mark.parametrize("method,argv,text", [
    ("ssd", [], "schedule"),  # SSD runs are multi-stage: no schedule replay
    ("kd", ["--augmentation", "cutout"], "--augmentation"),  # the schedule sets the augmentation
])
def test_schedule_replay_bad_input_exits_2(tmp_path, method, argv, text, capsys):
    path = _config(tmp_path, schedule=[{"epoch": 1, "values": {"augmentation": "cutmix(alpha=0.5)"}},
                                       {"epoch": 2, "values": {"cutmix.alpha": 1.5, "lr": 0.02}}])
    assert main(["train", method, str(path), "--no-progress", *argv]) == 2
    assert text in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "m.db").exists()


def test_replayed_schedule_is_logged_epoch_by_epoch(tmp_path, capsys):
    """`augtune train sla` with a schedule: the values change at the listed epochs, and the
    tracked run's schedule.* curves show the value of every epoch."""
    path = _config(tmp_path, schedule=[{"epoch": 1, "values": {"augmentation": "flip(p=0.2)", "lr": 0.04}},
                                       {"epoch": 3, "values": {"flip.p": 0.9, "sla.temperature": 2.0}}])
    assert main(["train", "sla", str(path), "--no-progress", "--track"]) == 0
    run_id = (tmp_path / "runs" / "single" / "train-sla" / "mlflow_run_id").read_text().strip()
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/m.db")

    def curve(name):
        return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, name), key=lambda m: m.step)]

    assert curve("schedule.flip.p") == [(1, 0.2), (2, 0.2), (3, 0.9)]
    assert curve("schedule.lr") == [(1, 0.04), (2, 0.04), (3, 0.04)]
    assert curve("schedule.sla.temperature") == [(1, 1.0), (2, 1.0), (3, 2.0)]
