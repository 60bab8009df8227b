"""A trial on a reused (warm) actor gives exactly what a fresh actor gives for the same config."""
import torch

from augtune.trainables.experiment_config import DistillConfig
from augtune.trainables.data import load_data
from augtune.trainables.engine import save_checkpoint
from augtune.trainables.models import build_model


def _train_to_end(trainable) -> list[dict]:
    results = []
    while True:
        result = trainable.train()
        results.append({k: result[k] for k in ("epoch", "train_loss", "val_loss", "test_loss")})
        if result["done"]:
            return results


def test_reused_actor_matches_a_fresh_one(tmp_path, ray_session):
    from ray import tune

    from augtune.trainables.tune_trainables import KDTrainable

    experiment = DistillConfig.model_validate({
        "output_dir": str(tmp_path), "data": {"name": "digits", "samples_per_class": 10, "val_per_class": 5,
                                              "image_size": 12},
        "teacher": {"model": "resnet8"}, "student": {"model": "resnet8", "train": {"epochs": 2, "batch_size": 32}},
    })
    data = load_data(experiment.data)
    torch.manual_seed(0)
    teacher = build_model("resnet8", data.num_classes, data.channels)
    checkpoint = save_checkpoint(tmp_path / "teacher.pt", teacher, "resnet8", data)
    trainable = tune.with_parameters(KDTrainable, experiment=experiment.model_dump(mode="json"),
                                     teacher_checkpoint=str(checkpoint))
    first = {"augmentation": "cutmix", "seed": 3, "lr": 0.05}
    second = {"augmentation": "mixup", "seed": 1, "lr": 0.02}

    fresh = trainable(config=dict(first))
    expected_first = _train_to_end(fresh)
    fresh.stop()
    fresh = trainable(config=dict(second))
    expected_second = _train_to_end(fresh)
    fresh.stop()

    warm = trainable(config=dict(second))
    _train_to_end(warm)
    loaded = warm.runner.data
    assert warm.reset(dict(first))  # reuse the actor for another trial
    assert warm.runner.data is loaded  # the data on the device was not loaded again
    assert _train_to_end(warm) == expected_first
    assert warm.reset(dict(second))
    assert warm.runner.data is loaded
    assert _train_to_end(warm) == expected_second
    warm.stop()


def test_a_trial_on_handed_data_matches_one_that_loads_it(tmp_path, ray_session):
    """The driver's data handed through the object store (HandedData) trains exactly as the
    trial's own load of the same section; a handed bundle of another section is not used."""
    from ray import tune

    from augtune.trainables.tune_trainables import HandedData, KDTrainable

    experiment = DistillConfig.model_validate({
        "output_dir": str(tmp_path), "data": {"name": "digits", "samples_per_class": 10, "val_per_class": 5,
                                              "image_size": 12},
        "teacher": {"model": "resnet8"}, "student": {"model": "resnet8", "train": {"epochs": 2, "batch_size": 32}},
    }).model_dump(mode="json")
    data = load_data(DistillConfig.model_validate(experiment).data)
    torch.manual_seed(0)
    checkpoint = save_checkpoint(tmp_path / "teacher.pt", build_model("resnet8", data.num_classes, data.channels),
                                 "resnet8", data)
    other_section = dict(experiment["data"], samples_per_class=11)
    config = {"augmentation": "cutmix", "seed": 3, "lr": 0.05}
    runs = {}
    for name, handed in (("loads", None), ("handed", HandedData(experiment["data"], data)),
                         ("other section", HandedData(other_section, data))):
        fixed = {"handed_data": handed} if handed is not None else {}
        trial = tune.with_parameters(KDTrainable, experiment=experiment, teacher_checkpoint=str(checkpoint),
                                     **fixed)(config=dict(config))
        first = trial.train()
        runs[name] = (first["train_data_loaded"], [first["val_loss"]] + [r["val_loss"] for r in _train_to_end(trial)])
        assert torch.equal(trial.runner.data.train.images, data.train.images)
        trial.stop()
    assert runs["handed"] == (0.0, runs["loads"][1])
    assert runs["loads"][0] == 1.0 and runs["other section"] == runs["loads"]
