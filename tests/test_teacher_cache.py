"""The teacher base-view cache (trainables/teacher_cache.py): a KD run that reads the teacher's
logits on x from the cache trains exactly as one that forwards the teacher, bit for bit in fp32
on CPU; the cache holds every base view; only a complete file is used."""
from pathlib import Path

import numpy as np
import pytest
import torch

from augtune.spaces import ops
from augtune.trainables.data import load_data
from augtune.trainables.engine import InputPipeline, save_checkpoint
from augtune.trainables.experiment_config import DistillConfig
from augtune.trainables.kd import KDRunner
from augtune.trainables.models import build_model
from augtune.trainables.teacher_cache import TeacherCache, cache_key, cache_path, fill_cache


def _experiment(tmp_path, batch_size=32, samples=10, **kd):
    return DistillConfig.model_validate({
        "output_dir": str(tmp_path), "data": {"name": "digits", "samples_per_class": samples, "val_per_class": 3,
                                              "image_size": 8},
        "teacher": {"model": "resnet8"}, "kd": kd,
        "student": {"model": "resnet8", "train": {"epochs": 3, "batch_size": batch_size, "crop_padding": 1}}})


def _teacher(tmp_path, cfg):
    data = load_data(cfg.data)
    torch.manual_seed(0)
    teacher = build_model("resnet8", data.num_classes, data.channels)
    with torch.no_grad():  # BatchNorm statistics that are not the identity, as a trained teacher's
        teacher.train()
        teacher(torch.rand(64, data.channels, 8, 8))
    return data, save_checkpoint(tmp_path / "teacher.pt", teacher.eval(), "resnet8", data)


def _train(cfg, checkpoint, data, candidate, epochs=3):
    runner = KDRunner(cfg, candidate, str(checkpoint), data=data, seed=5)
    losses = [runner.train_epoch()["train_loss"] for _ in range(epochs)]
    return runner, losses


def test_base_views_are_the_random_crop_and_flip_draws():
    pipeline = InputPipeline.__new__(InputPipeline)
    pipeline.padding, pipeline.flip = 2, True
    x = torch.rand(1000, 1, 6, 6)
    g_ops, g_views = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    expected = ops.random_flip(ops.random_crop(x, g_ops, 2), g_ops)
    augmented, views = pipeline.base_augment_with_views(x, g_views)
    assert torch.equal(augmented, expected)  # the same draws, so a run's images do not change
    assert pipeline.num_base_views == 50 and set(views.tolist()) == set(range(50))  # every offset and flip visited
    for i in range(0, len(x), 7):
        assert torch.equal(pipeline.base_view(x[i:i + 1], int(views[i]))[0], augmented[i])


# 19: the epoch ends with a lone image; crop_flip: x' is a crop, whose strides once chose another
# convolution kernel (engine.row_major)
@pytest.mark.parametrize("batch_size,candidate", [(32, "cutmix"), (19, "crop_flip")])
def test_cached_and_uncached_kd_train_the_same_bit_for_bit(tmp_path, batch_size, candidate):
    cfg = _experiment(tmp_path, batch_size=batch_size)
    data, checkpoint = _teacher(tmp_path, cfg)
    plain, plain_losses = _train(cfg, checkpoint, data, candidate)
    assert plain.teacher_cache is None  # nothing filled yet: the teacher is forwarded

    pipeline = InputPipeline(data, torch.device("cpu"), cfg.student.train)
    path = cache_path(checkpoint, cache_key(checkpoint, data, pipeline, torch.device("cpu"), bf16=True))
    fill_cache(plain.teacher, data, pipeline, torch.device("cpu"), True, path)
    cached, cached_losses = _train(cfg, checkpoint, data, candidate)
    assert cached.teacher_cache is not None and cached.teacher_cache.path == path

    forwarded = []
    cached.teacher.register_forward_hook(lambda module, inputs, output: forwarded.append(len(inputs[0])))
    cached.train_epoch()
    plain.train_epoch()
    assert sum(forwarded) <= len(data.train) + 1  # x' only (and x beside a lone x'), not [x; x']
    assert cached_losses == plain_losses
    for a, b in zip(cached.model.state_dict().values(), plain.model.state_dict().values()):
        assert torch.equal(a, b)


def test_cache_holds_the_teachers_logits_on_every_view(tmp_path):
    cfg = _experiment(tmp_path, samples=4)
    data, checkpoint = _teacher(tmp_path, cfg)
    runner = KDRunner(cfg, "identity", str(checkpoint), data=data, seed=0)
    pipeline = runner.pipeline
    path = tmp_path / "c.npy"
    fill_cache(runner.teacher, data, pipeline, torch.device("cpu"), False, path)
    stored = np.load(path)
    assert stored.shape == (len(data.train), 9 * 2, data.num_classes)
    images = pipeline.to_unit(data.train.images)
    for view in (0, 7, 17):
        with torch.no_grad():
            expected = runner.teacher(pipeline.normalise(pipeline.base_view(images, view)))
        assert torch.equal(torch.from_numpy(stored[:, view]), expected)


def test_an_incomplete_or_foreign_cache_is_not_used(tmp_path):
    cfg = _experiment(tmp_path, samples=4)
    data, checkpoint = _teacher(tmp_path, cfg)
    pipeline = InputPipeline(data, torch.device("cpu"), cfg.student.train)
    key = cache_key(checkpoint, data, pipeline, torch.device("cpu"), bf16=True)
    path = cache_path(checkpoint, key)
    path.parent.mkdir(parents=True)
    path.with_name(f"{path.stem}.partial.npy").write_bytes(b"killed mid-fill")  # what a killed fill leaves
    assert TeacherCache.find(checkpoint, data, pipeline, torch.device("cpu"), True) is None
    # another padding, another teacher: another key
    other = InputPipeline(data, torch.device("cpu"), cfg.student.train.model_copy(update={"crop_padding": 2}))
    assert cache_key(checkpoint, data, other, torch.device("cpu"), True) != key
    torch.manual_seed(1)
    retrained = save_checkpoint(tmp_path / "t2.pt", build_model("resnet8", data.num_classes, data.channels),
                                "resnet8", data)
    assert cache_key(retrained, data, pipeline, torch.device("cpu"), True) != key
    # off: a complete cache is ignored
    fill_cache(KDRunner(cfg, "identity", str(checkpoint), data=data).teacher, data, pipeline,
               torch.device("cpu"), True, path)
    assert KDRunner(cfg, "identity", str(checkpoint), data=data).teacher_cache is not None
    off = _experiment(tmp_path, samples=4, teacher_cache="off")
    assert KDRunner(off, "identity", str(checkpoint), data=data).teacher_cache is None


def test_a_resumed_fill_reuses_a_complete_cache_and_refills_a_killed_one(tmp_path):
    """What a resumed sweep meets beside the teacher: a complete file is used as it is (not filled
    again); a fill killed before its rename left only `.partial.npy`, which is filled anew."""
    from augtune.trainables.teacher_cache import ensure_cache

    cfg = _experiment(tmp_path, samples=4)
    _, checkpoint = _teacher(tmp_path, cfg)
    first = ensure_cache(cfg, checkpoint)
    path = Path(first["path"])
    assert first["filled"] and path.is_file() and not list(path.parent.glob("*.partial.npy"))
    written = path.read_bytes()
    again = ensure_cache(cfg, checkpoint)
    assert not again["filled"] and again["path"] == first["path"] and path.read_bytes() == written
    path.rename(path.with_name(f"{path.stem}.partial.npy"))  # a fill killed just before its rename ...
    partial = path.with_name(f"{path.stem}.partial.npy")
    partial.write_bytes(partial.read_bytes()[:200])  # ... half written
    refilled = ensure_cache(cfg, checkpoint)
    assert refilled["filled"] and path.read_bytes() == written and not partial.exists()


def test_the_sweep_fills_the_cache_only_where_it_pays(tmp_path):
    """auto: when the trials' epochs forward x at least as often per image as the cache has views;
    never for data-parallel trials (each rank forwards its own shard) nor when switched off."""
    from augtune.search.sweep.base_view_cache import why_not
    from augtune.search.sweep_config import load_config
    from sweep_helpers import write_sweep_config

    path = write_sweep_config(tmp_path, "cache", f"sqlite:///{tmp_path}/m.db", num_samples=4)
    data = load_data(load_config(path).data)  # 12 px: padding 1, 18 views
    short = load_config(path)  # 4 trials x 2 epochs = 8 < 18
    assert "fewer than the cache's 18 views" in why_not(short, data)
    assert why_not(load_config(path, {"student.train.epochs": 5}), data) is None  # 20 >= 18
    assert why_not(load_config(path, {"kd.teacher_cache": "on"}), data) is None
    assert why_not(load_config(path, {"kd.teacher_cache": "off", "student.train.epochs": 5}), data) == \
        "kd.teacher_cache: off"
    parallel = load_config(path, {"kd.teacher_cache": "on", "search.resources.workers_per_trial": 2})
    assert "data-parallel" in why_not(parallel, data)
    sla = load_config(path, {"search.method": "sla", "space.candidates": ["identity"]})
    assert "do not forward a teacher" in why_not(sla, data)
