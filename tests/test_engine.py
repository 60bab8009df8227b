import math

import pytest
import torch

from augtune.search.sweep_config import load_config
from augtune.search.cli import main
from augtune.trainables.experiment_config import DataConfig, ExperimentConfig, ModelConfig, TrainConfig
from augtune.trainables.data import BatchFeeder, load_data
from augtune.trainables.engine import (CheckpointError, InputPipeline, evaluate, load_checkpoint, lr_factor,
                                       save_checkpoint)
from augtune.trainables.models import build_model
from augtune.trainables.supervised import SupervisedRunner


def test_step_schedule_with_warmup():
    cfg = TrainConfig(epochs=10, schedule="step", milestones=[0.5, 0.8], gamma=0.1, warmup_epochs=1)
    steps = 4
    assert lr_factor(cfg, 0, steps) == pytest.approx(0.25)
    assert lr_factor(cfg, 3, steps) == pytest.approx(1.0)
    assert lr_factor(cfg, 4 * 5 - 1, steps) == pytest.approx(1.0)
    assert lr_factor(cfg, 4 * 5, steps) == pytest.approx(0.1)
    assert lr_factor(cfg, 4 * 8, steps) == pytest.approx(0.01)


def test_cosine_schedule_matches_formula():
    cfg = TrainConfig(epochs=10, schedule="cosine")
    for step in (0, 7, 20, 39):
        expected = 0.5 * (1 + math.cos(math.pi * (step / 4) / 10))
        assert lr_factor(cfg, step, 4) == pytest.approx(expected)


def test_checkpoint_roundtrip_weights_only(tmp_path):
    data = load_data(DataConfig(name="digits", image_size=16))
    model = build_model("resnet8", 10, in_channels=1)
    model.add_head("soft", 10)
    path = save_checkpoint(tmp_path / "m.pt", model, "resnet8", data, extra={"test_acc": 0.5})
    raw = torch.load(path, weights_only=True)
    assert raw["model_name"] == "resnet8"
    loaded, payload = load_checkpoint(path, data)
    assert set(loaded.heads) == {"main", "soft"}
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key])
    other = load_data(DataConfig(name="digits", image_size=8))
    with pytest.raises(CheckpointError, match="image_size"):
        load_checkpoint(path, other)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="weights-only"):
        load_checkpoint(tmp_path / "junk.pt")


def _tiny_cfg(seed=0):
    return ExperimentConfig(seed=seed, data=DataConfig(name="digits", samples_per_class=20),
                            teacher=ModelConfig(model="resnet8", train=TrainConfig(epochs=2, batch_size=32)))


def test_cpu_training_is_deterministic():
    runs = []
    for _ in range(2):
        runner = SupervisedRunner(_tiny_cfg())
        runs.append([runner.run_epoch()["train_loss"] for _ in range(2)])
    assert runs[0] == runs[1]
    other = SupervisedRunner(_tiny_cfg(seed=1))
    assert other.run_epoch()["train_loss"] != runs[0][0]


def test_runner_state_resumes_exactly():
    straight = SupervisedRunner(_tiny_cfg())
    straight.run_epoch()
    state = {k: v for k, v in straight.state_dict().items()}
    import copy
    state = copy.deepcopy(state)
    expected = straight.run_epoch()["train_loss"]
    resumed = SupervisedRunner(_tiny_cfg())
    resumed.load_state_dict(state)
    assert resumed.run_epoch()["train_loss"] == expected


def test_teacher_command_reaches_95_percent_and_reloads(tmp_path, capsys):
    code = main(["train", "teacher", "configs/digits_teacher.yaml", "--no-progress",
                 "--set", f"output_dir={tmp_path}"])
    assert code == 0
    import json
    out = capsys.readouterr().out
    summary = json.loads(out[out.index("{"):])
    assert summary["test_acc"] >= 0.95
    cfg = load_config("configs/digits_teacher.yaml")
    data = load_data(cfg.data)
    model, _ = load_checkpoint(summary["checkpoint"], data)
    acc = evaluate(model, BatchFeeder(data.test, 200, "cpu", shuffle=False), InputPipeline(data, torch.device("cpu")),
                   torch.device("cpu"))["acc"]
    assert acc == pytest.approx(summary["test_acc"], abs=1e-6)


def test_progress_in_a_log_file_is_a_few_lines(capsys):
    """stderr not a terminal (a log file): nested per-batch bars are off and the outer bar
    refreshes at most every 30 s, so an epoch loop does not print a line per epoch."""
    from augtune.trainables.engine import progress_bar

    outer = progress_bar(range(50), desc="epochs")
    for _ in outer:
        inner = progress_bar(range(20), nested=True, desc="batches", leave=False)
        assert inner.disable
        for _ in inner:
            pass
    assert outer.mininterval >= 30
    assert capsys.readouterr().err.count("batches") == 0
