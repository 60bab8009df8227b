"""Small sweep configs and MLflow look-ups shared by the sweep tests."""
from __future__ import annotations

from pathlib import Path

import yaml

EIGHT_CANDIDATES = ["identity", "flip", "crop_flip", "cutout", "mixup", "cutmix", "autoaugment",
                    "cutmix_pick(keep=0.5,pool=2)"]


def write_sweep_config(tmp_path: Path, name: str, tracking_uri: str, **search) -> Path:
    cfg = {
        "name": name, "seed": 0, "output_dir": str(tmp_path / "runs"),
        "data": {"name": "digits", "samples_per_class": 12, "val_per_class": 5, "image_size": 12},
        "teacher": {"model": "resnet8", "train": {"epochs": 3, "batch_size": 32}},
        "student": {"model": "resnet8", "train": {"epochs": 2, "batch_size": 32}},
        "space": {"candidates": EIGHT_CANDIDATES},
        "proxy": {"passes": 2, "group_batches": 2, "batch_size": 16, "bootstrap": 100},
        # no recipe baseline unless a test asks for one: it trains extra trials (tests/test_sweep.py covers it)
        "search": {"baseline": None, "num_samples": 3, "max_concurrent": 2, "prune": {"mode": "top_k", "top_k": 3},
                   "scheduler": {"kind": "fifo"}, "resources": {"cpu": 1, "gpu": 0},
                   "hyperparameters": {"lr": {"loguniform": [0.02, 0.1]}}, **search},
        "tracking": {"uri": tracking_uri},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def runs_by_stage(uri: str, experiment: str) -> dict[str, list]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    out: dict[str, list] = {}
    for run in client.search_runs([exp.experiment_id], max_results=1000):
        out.setdefault(run.data.tags.get("augtune.stage"), []).append(run)
    return out


def replay_exported_best(tmp_path: Path, experiment: str, uri: str) -> dict:
    """`augtune best --export` of the experiment's best trial, replayed by `augtune train kd`
    without Ray (one thread, as trials run); returns the replay's summary.json."""
    import json

    import torch

    from augtune.search.cli import main

    exported = tmp_path / "best.yaml"
    assert main(["best", "--experiment", experiment, "--tracking-uri", uri, "--export", str(exported)]) == 0
    assert "schedule:" in exported.read_text()
    assert main(["train", "kd", str(exported), "--threads", "1", "--no-progress",
                 "--set", f"output_dir={tmp_path / 'again'}"]) == 0
    torch.set_num_threads(2)  # back to the test session's default
    return json.loads((tmp_path / "again" / experiment / "train-kd" / "summary.json").read_text())
