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
