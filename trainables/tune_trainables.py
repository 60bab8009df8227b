"""Ray Tune class trainables around `EpochRunner`s.

The trial's config holds only the sampled values; the fixed parts (the experiment config as a
plain dict, the teacher checkpoint path) come through `tune.with_parameters`, so trial tables
and MLflow params stay readable. One `step` is one epoch.

Actors are reused across trials (`reset_config`): a new trial on a warm actor skips the process
start, the imports and Ray's set-up, and takes the data already on the device from a per-actor
cache keyed by the data section it was built from; the student, optimiser, generators and
augmentation are built afresh, so a reused actor gives the same result as a fresh one. A fresh
actor takes the data the sweep's driver loaded (`HandedData`, through Ray's object store with the
other fixed inputs) instead of loading it again: no dataset reading, and for the embedded
default no scikit-learn import, in each actor's first trial.
"""
from __future__ import annotations

import functools
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import ray.train
import torch
from ray import tune
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from augtune.trainables import builtin_methods as methods
from augtune.trainables.data import DataBundle, load_data
from augtune.trainables.distributed import DataParallel
from augtune.trainables.experiment_config import DataConfig, DistillConfig
from augtune.trainables.values import apply_trial_values
from augtune.trainables.runner import EpochRunner, drive_epochs, epoch_result, load_runner_state, save_runner_state


def _method_config(config: dict[str, Any], experiment: dict[str, Any], section: str):
    """The trial's DistillConfig: the fixed experiment plus the sampled values; the trial's
    candidate ("augmentation", with any sampled `kind.param` values) goes to the method's own
    augmentation field."""
    return DistillConfig.model_validate(apply_trial_values(experiment, config, section))


def data_key(data_section: dict[str, Any]) -> str:
    return json.dumps(data_section, sort_keys=True, default=str)


@dataclass
class HandedData:
    """The data the driver loaded from `section`, handed to the trials with their fixed inputs."""
    section: dict[str, Any]
    bundle: DataBundle


class DataCache:
    """Data bundles of one actor, keyed by the data section they were loaded from; `loaded`
    counts the bundles this actor read itself (not handed)."""

    def __init__(self):
        self.bundles: dict[str, Any] = {}
        self.loaded = 0

    def get(self, data_section: dict[str, Any], handed: Optional[HandedData] = None):
        key = data_key(data_section)
        if key not in self.bundles:
            if handed is not None and data_key(handed.section) == key:
                bundle = handed.bundle
            else:
                bundle, self.loaded = load_data(DataConfig.model_validate(data_section)), self.loaded + 1
            self.bundles = {key: bundle}  # one at a time
        return self.bundles[key]


def as_trainable(build_runner: Callable[..., EpochRunner], name: str) -> type[tune.Trainable]:
    class RunnerTrainable(tune.Trainable):
        def setup(self, config: dict[str, Any], **fixed: Any) -> None:
            torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
            self.fixed, self.cache = fixed, DataCache()
            self._build(config)

        def reset_config(self, new_config: dict[str, Any]) -> bool:
            """Reuse this actor for the next trial (Tune has already switched the trial's name
            and config): a fresh runner on the cached data."""
            self._build(new_config)
            return True

        def _build(self, config: dict[str, Any]) -> None:
            start, loaded = time.perf_counter(), self.cache.loaded
            self.runner = build_runner(config, cache=self.cache, trial=self.trial_name, **self.fixed)
            # where a trial's seconds go (benchmarks/sweep_overhead.py), reported with its first epoch
            self.setup: Optional[dict[str, float]] = {"trial_setup_seconds": time.perf_counter() - start,
                                                      "train_data_loaded": float(self.cache.loaded - loaded)}

        def step(self) -> dict[str, Any]:
            metrics = epoch_result(self.runner)
            if self.setup is not None:
                metrics.update(self.setup)
                self.setup = None
            return metrics

        def save_checkpoint(self, checkpoint_dir: str) -> None:
            save_runner_state(self.runner, checkpoint_dir)

        def load_checkpoint(self, checkpoint_dir: str) -> None:
            load_runner_state(self.runner, checkpoint_dir)

    RunnerTrainable.__name__ = RunnerTrainable.__qualname__ = name
    return RunnerTrainable


def _method_runner(config: dict[str, Any], experiment: dict[str, Any], method, cache: DataCache, trial: str,
                   teacher_checkpoint: Optional[str] = None, track: Sequence[str] = (),
                   handed_data: Optional[HandedData] = None):
    """The trial's runner of `method` (a trainables.method.Method) on the actor's cached data (the
    driver's, where it handed the same data section)."""
    cfg = _method_config(config, experiment, method.name)
    work_dir = Path(cfg.output_dir) / cfg.name / f"{method.name}-trials" / trial  # multi-stage outputs
    runner = method.runner(cfg, data=cache.get(experiment["data"], handed_data), seed=config.get("seed"),
                           teacher_checkpoint=teacher_checkpoint, work_dir=work_dir)
    if track:
        runner.values.track(track)
    return runner


def trainable_for(method) -> type[tune.Trainable]:
    """The Ray Tune trainable of a registered method; the fixed inputs (experiment dict, the
    teacher checkpoint for methods with a teacher, `track`, the driver's `handed_data`) come
    through `tune.with_parameters`."""
    return as_trainable(functools.partial(_method_runner, method=method), f"{method.name.upper()}Trainable")


KDTrainable = trainable_for(methods.get_method("kd"))
SLATrainable = trainable_for(methods.get_method("sla"))
SSDTrainable = trainable_for(methods.get_method("ssd"))
_BUILTIN_TRAINABLES = {"kd": KDTrainable, "sla": SLATrainable, "ssd": SSDTrainable}


# ---------------------------------------------------------------- several workers per trial

# the first result after a data-parallel trial's restore carries its runner's earlier epochs (JSON
# rows of `RunValues.curves`)
EARLIER_EPOCHS = "earlier_epochs"


def _data_parallel_worker(loop: dict[str, Any]) -> None:
    """One Ray Train worker of a multi-worker trial: the method's runner as one rank
    (trainables/distributed.py), resumed from the run's latest checkpoint; every rank reports each
    epoch, rank 0 with the runner's state (Ray Train passes rank 0's metrics on to Tune)."""
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    runner = _method_runner(loop["config"], cache=DataCache(), trial=loop["trial"], method=loop["method"],
                            **loop["fixed"])
    runner.make_data_parallel(DataParallel.current(), loop["sync_batchnorm"])
    saved = ray.train.get_checkpoint()
    if saved is not None:
        with saved.as_directory() as folder:
            load_runner_state(runner, folder)
    rank = ray.train.get_context().get_world_rank()
    restored = saved is not None
    for metrics in drive_epochs(runner):
        if restored:
            # Ray Train keeps rank 0's checkpoint before its epoch reaches Tune: a driver killed in
            # between never logged it. The trial logger logs from these the epochs it lacks.
            metrics[EARLIER_EPOCHS] = json.dumps(runner.values.curves[:-1])
            restored = False
        with tempfile.TemporaryDirectory() as folder:
            checkpoint = None
            if rank == 0:
                save_runner_state(runner, folder)
                checkpoint = ray.train.Checkpoint.from_directory(folder)
            ray.train.report(metrics, checkpoint=checkpoint)


def data_parallel_trainable(method, workers: int, cpu: float, gpu: float, sync_batchnorm: bool,
                            storage_path: str) -> Callable[..., None]:
    """A Tune function trainable that runs each trial of `method` as a Ray Train TorchTrainer on
    `workers` workers (`cpu` / `gpu` each; gloo on CPUs, NCCL on GPUs), the way Ray 2.60 combines
    Train with Tune: the function starts the trainer, and Train's TuneReportCallback hands rank
    0's epochs to Tune (schedulers, the MLflow trial logger). The trainer's run is named after
    the trial under `storage_path`, so a trial restarted after a kill resumes from its checkpoint."""

    def trial(config: dict[str, Any], **fixed: Any) -> None:
        name = tune.get_context().get_trial_id()
        loop = {"config": config, "fixed": fixed, "method": method, "trial": name, "sync_batchnorm": sync_batchnorm}
        per_worker = {"CPU": cpu, **({"GPU": gpu} if gpu else {})}
        trainer = TorchTrainer(
            _data_parallel_worker, train_loop_config=loop,
            scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=gpu > 0,
                                                   resources_per_worker=per_worker),
            run_config=ray.train.RunConfig(name=name, storage_path=storage_path, callbacks=[TuneReportCallback()],
                                           checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
                                           failure_config=ray.train.FailureConfig(max_failures=1)))
        trainer.fit()

    trial.__name__ = trial.__qualname__ = f"{method.name.upper()}DataParallel"
    return trial


def trainable_of(method) -> type[tune.Trainable]:
    """A built-in method's importable trainable, or a new one for a method registered elsewhere
    (Ray then ships it by value, with its Method, which registers itself in the worker)."""
    builtin = _BUILTIN_TRAINABLES.get(method.name)
    return builtin if builtin is not None and methods.get_method(method.name) is method else trainable_for(method)
