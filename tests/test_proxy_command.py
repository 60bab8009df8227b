"""`augtune proxy`: every candidate scored (student-entropy pick included when a student
checkpoint is given), table files written, one MLflow parent and a child per candidate."""
import csv
import json

import yaml

from augtune.search.cli import main
from sweep_helpers import runs_by_stage


def test_proxy_command_logs_parent_and_children(tmp_path, capsys):
    base = {"output_dir": str(tmp_path / "runs"), "data": {"name": "digits", "samples_per_class": 10},
            "teacher": {"model": "resnet8", "train": {"epochs": 1, "batch_size": 32}},
            "tracking": {"uri": f"sqlite:///{tmp_path}/m.db"}}
    student_cfg = tmp_path / "student.yaml"
    student_cfg.write_text(yaml.safe_dump({**base, "name": "student"}))
    assert main(["train", "teacher", str(student_cfg), "--no-progress", "--output", str(tmp_path / "s.pt")]) == 0
    cfg = {**base, "name": "proxy-cmd", "proxy": {"passes": 2, "group_batches": 2, "batch_size": 16,
                                                  "bootstrap": 50, "student_checkpoint": str(tmp_path / "s.pt")},
           "space": {"candidates": ["identity", "flip", "crop_flip", "cutout", "autoaugment", "randaugment",
                                    "trivialaugment", "mixup", "cutmix", "cutmix_pick",
                                    "cutmix_pick(entropy=student)", "pick(base=cutout,tau=0.3)"]}}
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(cfg))
    capsys.readouterr()
    assert main(["proxy", str(path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "cutmix_pick(entropy=student,pool=2,keep=0.5)" in out
    rows = list(csv.DictReader(open(tmp_path / "runs" / "proxy-cmd" / "proxy.csv")))
    assert len(rows) == 12 and [int(r["rank"]) for r in rows] == list(range(1, 13))
    scores = [float(r["t_stddev"]) for r in rows]
    assert scores == sorted(scores) and all(s > 0 for s in scores)
    assert json.loads((tmp_path / "runs" / "proxy-cmd" / "proxy.json").read_text())[0]["candidate"] == rows[0]["candidate"]
    runs = runs_by_stage(f"sqlite:///{tmp_path}/m.db", "proxy-cmd")
    (parent,) = runs["proxy-job"]
    assert len(runs["proxy"]) == 12
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in runs["proxy"])
    assert all({"t_stddev", "t_stddev_low", "t_stddev_high"} <= set(r.data.metrics) for r in runs["proxy"])


def test_low_fidelity_student_score_ranks_when_chosen(tmp_path, capsys):
    """proxy.low_fidelity_epochs: each candidate's student trained that many epochs of its full
    schedule; the score equals the validation loss of an independent run of the same runner, and
    proxy.score low_fidelity ranks by it (lowest first). MLflow logs it with the zoo."""
    from augtune.search.sweep_config import load_config
    from augtune.trainables.experiment_config import DistillConfig
    from augtune.trainables.values import apply_trial_values
    from augtune.trainables.data import load_data
    from augtune.trainables.kd import KDRunner

    cfg = {"name": "lowfi", "output_dir": str(tmp_path / "runs"), "seed": 3,
           "data": {"name": "digits", "samples_per_class": 10, "val_per_class": 3, "image_size": 12},
           "teacher": {"model": "resnet8", "train": {"epochs": 1, "batch_size": 32}},
           "student": {"model": "resnet8", "train": {"epochs": 5, "batch_size": 32}},
           "proxy": {"passes": 2, "group_batches": 2, "batch_size": 16, "bootstrap": 0,
                     "low_fidelity_epochs": 2, "score": "low_fidelity"},
           "space": {"candidates": ["identity", "cutout", "mixup"]},
           "tracking": {"uri": f"sqlite:///{tmp_path}/m.db"}}
    path = tmp_path / "lowfi.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["proxy", str(path), "--no-progress"]) == 0
    assert "low_fidelity" in capsys.readouterr().out
    rows = json.loads((tmp_path / "runs" / "lowfi" / "proxy.json").read_text())
    lowfi = [r["zoo"]["low_fidelity"] for r in rows]
    assert lowfi == sorted(lowfi) and [r["rank"] for r in rows] == [1, 2, 3]
    loaded = load_config(path)
    data = load_data(loaded.data)
    teacher = str(tmp_path / "runs" / "lowfi" / "teacher.pt")
    trial = DistillConfig.model_validate(apply_trial_values(loaded.distill_dict(), {"augmentation": "cutout"}, "kd"))
    runner = KDRunner(trial, None, teacher, data=data, seed=3)
    runner.run_epoch()
    independent = runner.run_epoch()["val_loss"]
    assert next(r for r in rows if r["candidate"] == "cutout")["zoo"]["low_fidelity"] == independent
    runs = runs_by_stage(f"sqlite:///{tmp_path}/m.db", "lowfi")
    assert all("proxy.low_fidelity" in r.data.metrics for r in runs["proxy"])
