"""An epoch-at-a-time training run, usable with or without Ray.

A method subclasses `EpochRunner`: it builds its networks in `__init__` and writes its step as
`loss(images, labels)`; the runner owns the loop (batches, autocast, optimiser step, on-device
sums, evaluation of the named heads, checkpoints). `run_to_completion` is the no-Ray path
(`augtune train ...`), `augtune.trainables.tune_trainables.as_trainable` the Ray Tune path; both drive the same object.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

import torch

from augtune.trainables.experiment_config import ExperimentConfig, TrainConfig
from augtune.trainables.data import BatchFeeder, DataBundle, load_data
from augtune.trainables.distributed import DataParallel, sync_batchnorm as to_sync
from augtune.trainables.engine import (InputPipeline, accuracy_and_loss, autocast, build_optimizer, build_scheduler,
                                       predict_logits, progress_bar, resolve_device, save_atomic, seed_everything)
from augtune.trainables.metrics import shot_accuracy, shot_groups
from augtune.trainables.values import RunValues


class EpochRunner:
    """Shared state: config, device, data, feeders, pipeline, generator, epoch counter; and the
    loop. A method sets `self.model` (and `self.optimizer` / `self.scheduler` through
    `_setup_optimisation`) and writes its step as `loss(images, labels) -> (loss, parts)`, the
    formula of its paper on one screen; `heads(unit_images) -> {name: logits}` names what is
    evaluated (default: the model's main head) and `deployed_head` which one is reported as
    test_acc / test_loss. The runner does the batches, autocast, the optimiser step, on-device
    loss sums, one evaluation of every head (with many/medium/few accuracy when the training
    data is long-tailed) and the checkpoint of every module.

    Values that may change during a run (a PBT exploit, a replayed `schedule`) are routed by
    `self.values` (trainables/values.py), which also records them epoch by epoch."""

    show_progress = False
    candidate = None  # the augmentation the method applies, when it has one
    method_section: Optional[str] = None  # where `kd.temperature`-style names go
    deployed_head = "main"
    metric_prefix = ""  # e.g. "stage1_": metric keys become test_stage1_HEAD_acc
    progress_label = "epoch"
    parallel: Optional[DataParallel] = None  # one rank of a data-parallel trial (make_data_parallel)

    def __init__(self, cfg: ExperimentConfig, train: TrainConfig, data: Optional[DataBundle] = None,
                 seed: Optional[int] = None):
        self.cfg, self.train_cfg = cfg, train
        self.device = resolve_device(cfg.device)
        self.seed = cfg.seed if seed is None else seed
        self.generator = seed_everything(self.seed, self.device)
        self.data = data if data is not None else load_data(cfg.data)
        self.pipeline = InputPipeline(self.data, self.device, train)
        self.train_feeder = BatchFeeder(self.data.train, train.batch_size, self.device, sampler=train.sampler,
                                        drop_last=len(self.data.train) > train.batch_size, seed=self.seed,
                                        num_workers=cfg.data.num_workers)
        eval_batch = max(256, train.batch_size)
        self.test_feeder = BatchFeeder(self.data.test, eval_batch, self.device, shuffle=False,
                                       num_workers=cfg.data.num_workers)
        self.val_feeder = (BatchFeeder(self.data.val, eval_batch, self.device, shuffle=False,
                                       num_workers=cfg.data.num_workers) if self.data.val is not None else None)
        self.epoch = 0
        self.batch_indices: Optional[torch.Tensor] = None
        self.values = RunValues(getattr(cfg, "schedule", None) or [])

    # -- a method implements
    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The batch's loss (uint8 images on the device; runs under autocast) and its named parts."""
        raise NotImplementedError

    def heads(self, unit_images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits of every evaluated head on un-augmented images in [0, 1]."""
        return {"main": self.model(self.pipeline.normalise(unit_images))}

    def train_mode(self) -> None:
        self.model.train()

    def eval_mode(self) -> None:
        self.model.eval()

    def after_step(self) -> None:
        """After the optimiser step (e.g. MoCo's key queue)."""

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"model": self.model}

    # -- the loop
    def train_epoch(self) -> dict[str, float]:
        self.train_mode()
        sums: dict[str, torch.Tensor] = {}
        count = 0
        for indices, images, labels in self.batches(f"{self.progress_label} {self.epoch + 1}"):
            self.batch_indices = indices  # the training set's index of each image (the KD teacher cache)
            if self.parallel is not None:  # every rank reads the global batch and trains on its slice
                images, labels = self.parallel.shard(images, labels)
                self.batch_indices = None
            with autocast(self.device, self.train_cfg.bf16):
                loss, parts = self.loss(images, labels)
            self.optimise(loss)
            self.after_step()
            n = len(labels)
            for name, value in {"loss": loss, **parts}.items():  # summed on the device: no sync per batch
                sums[f"train_{name}"] = sums.get(f"train_{name}", 0) + value.detach().float() * n
            count += n
        if self.parallel is not None:  # means over the global batches; BatchNorm statistics of rank 0
            sums = {name: self.parallel.total(total) for name, total in sums.items()}
            count = self.parallel.total(torch.tensor(float(count), device=self.device))
            self.parallel.broadcast(self.modules().values(), buffers_only=True)
        metrics = {name: (total / count).item() for name, total in sums.items()}
        metrics.update(self.evaluate())
        return metrics

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Accuracy and CE loss of every head on the test and validation splits; `SPLIT_acc` and
        `SPLIT_loss` are the deployed head's."""
        out: dict[str, float] = {}
        self.eval_mode()
        # validation first: Ray's trial table shows the first metrics, and trials are chosen by val
        for split, feeder in (("val", self.val_feeder), ("test", self.test_feeder)):
            if feeder is None:
                continue
            outputs, y = predict_logits(self.heads, feeder, self.pipeline, self.device, self.train_cfg.bf16)
            named = len(outputs) > 1 or self.metric_prefix
            for name, logits in outputs.items():
                prefix = f"{split}_{self.metric_prefix}{name}_" if named else f"{split}_"
                out.update(self._scores(logits, y, prefix))
            if named:
                deployed = f"{split}_{self.metric_prefix}{self.deployed_head}_"
                out[f"{split}_acc"], out[f"{split}_loss"] = out[deployed + "acc"], out[deployed + "loss"]
        self.train_mode()
        return out

    @property
    def _spans_shot_groups(self) -> bool:
        """Whether the training classes fall into more than one of many / medium / few."""
        groups = shot_groups(self.data.class_counts, self.cfg.data.many_shot_threshold,
                             self.cfg.data.few_shot_threshold)
        return sum(1 for classes in groups.values() if classes) > 1

    def _scores(self, logits: torch.Tensor, labels: torch.Tensor, prefix: str) -> dict[str, float]:
        out = {f"{prefix}{k}": v for k, v in accuracy_and_loss(logits, labels).items()}
        if self._spans_shot_groups:  # long-tailed: accuracy by shot group too
            shots = shot_accuracy(logits, labels, self.data.class_counts, self.cfg.data.many_shot_threshold,
                                  self.cfg.data.few_shot_threshold)
            # a group with no classes (e.g. no class above many_shot_threshold) has no accuracy
            out.update({f"{prefix}{k}": v for k, v in shots.items() if k != "acc" and not math.isnan(v)})
        return out

    # -- shared
    def two_views(self, images: torch.Tensor, augmented: bool = True) -> tuple[torch.Tensor, int]:
        """[x; x'] normalised, for one forward of each network over both views: x the loader view
        (crop+flip), x' = candidate(x) (none when not `augmented`). Returns the batch and len(x)."""
        both, n, _ = self.two_views_and_base_views(images, augmented)
        return both, n

    def two_views_and_base_views(self, images: torch.Tensor, augmented: bool = True
                                 ) -> tuple[torch.Tensor, int, torch.Tensor]:
        """two_views, and which base view (InputPipeline.base_augment_with_views) each x is."""
        x, views = self.pipeline.train_batch_with_views(images, self.generator)
        x_aug = self.candidate.apply(x, self.context) if augmented else x[:0]
        return self.pipeline.normalise(torch.cat([x, x_aug])), len(x), views

    def _setup_optimisation(self, parameters) -> None:
        self.optimizer = build_optimizer(parameters, self.train_cfg)
        self.scheduler = build_scheduler(self.optimizer, self.train_cfg, len(self.train_feeder))

    def optimise(self, loss: torch.Tensor) -> None:
        """One SGD step on `loss`, then the per-step learning-rate schedule."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.parallel is not None:
            self.parallel.average_gradients(p for group in self.optimizer.param_groups for p in group["params"])
        self.optimizer.step()
        self.scheduler.step()

    def batches(self, description: str):
        """The epoch's (indices, images, labels) training batches, with a progress bar on the no-Ray path."""
        if not self.show_progress:
            return self.train_feeder.indexed()
        return progress_bar(self.train_feeder.indexed(), nested=True, desc=description, leave=False,
                            total=len(self.train_feeder))

    def make_data_parallel(self, parallel: DataParallel, sync_batchnorm: bool = True) -> None:
        """Train as one rank of `parallel` (trainables/distributed.py): rank 0's weights on every
        rank, BatchNorm synchronised on accelerators when `sync_batchnorm`."""
        self.parallel = parallel
        if sync_batchnorm:
            for module in self.modules().values():
                to_sync(module, self.device)
        parallel.broadcast(self.modules().values())

    def run_epoch(self) -> dict[str, Any]:
        if self.parallel is not None:  # this rank's own draws, reproducible from (seed, rank, epoch)
            self.generator.manual_seed(self.parallel.augmentation_seed(self.seed, self.epoch))
        self.values.before_epoch(self)
        start, cpu_start = time.perf_counter(), time.process_time()
        metrics = self.train_epoch()
        self.epoch += 1
        seconds = time.perf_counter() - start
        # CPU seconds are the process's own: trials side by side do not inflate them (tables charge them)
        metrics.update(epoch=self.epoch, epoch_seconds=seconds, epoch_cpu_seconds=time.process_time() - cpu_start,
                       images_per_second=len(self.train_feeder) * self.train_cfg.batch_size / max(seconds, 1e-9),
                       lr=self.optimizer.param_groups[0]["lr"])
        metrics.update(self.values.after_epoch(self, metrics))
        return metrics

    def apply_optimiser_settings(self) -> None:
        """The optimiser's lr (base and current), weight decay and momentum from `train_cfg`: a
        restored optimiser carries the values it was saved with, which a PBT exploit replaces."""
        self.scheduler.base_lrs = [self.train_cfg.lr for _ in self.optimizer.param_groups]
        for group, factor in zip(self.optimizer.param_groups, self.scheduler.lr_lambdas):
            group["initial_lr"] = self.train_cfg.lr
            group["lr"] = self.train_cfg.lr * factor(self.scheduler.last_epoch)
            group["weight_decay"] = self.train_cfg.weight_decay
            group["momentum"] = self.train_cfg.momentum
            group["nesterov"] = self.train_cfg.nesterov and self.train_cfg.momentum > 0

    @property
    def finished(self) -> bool:
        return self.epoch >= self.train_cfg.epochs

    @property
    def total_epochs(self) -> int:
        """Epochs of the whole run (a multi-stage runner counts every stage's)."""
        return self.train_cfg.epochs

    @property
    def epochs_done(self) -> int:
        return self.epoch

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch,
                "modules": {k: m.state_dict() for k, m in self.modules().items()},
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "generator": self.generator.get_state(),
                "feeder_generator": self.train_feeder.generator.get_state(), **self.values.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = state["epoch"]
        for name, module in self.modules().items():
            module.load_state_dict(state["modules"][name])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        self.train_feeder.generator.set_state(state["feeder_generator"])
        self.values.load_state_dict(state)
        self.apply_optimiser_settings()


RUNNER_STATE_FILE = "runner.pt"  # a runner's resumable state in a checkpoint folder or run folder


def save_runner_state(runner, folder) -> Path:
    """The runner's whole state (weights, optimiser, generators, values), written atomically."""
    return save_atomic(runner.state_dict(), Path(folder) / RUNNER_STATE_FILE)


def read_runner_state(folder, device: Union[str, torch.device] = "cpu") -> dict[str, Any]:
    """A runner state read weights-only (never unpickling code)."""
    return torch.load(Path(folder) / RUNNER_STATE_FILE, map_location=device, weights_only=True)


def load_runner_state(runner, folder) -> None:
    runner.load_state_dict(read_runner_state(folder, runner.device))


# what `epoch_result` adds to a runner's own metrics, for the loop and for Tune
EPOCH_CONTROL_KEYS = frozenset({"diverged", "done", "schedule_log", "lineage_curves"})


def runner_metrics(result: dict[str, Any]) -> dict[str, Any]:
    """An epoch result without the control keys: the runner's own metrics (for logs and tables)."""
    return {k: v for k, v in result.items() if k not in EPOCH_CONTROL_KEYS}


def epoch_result(runner) -> dict[str, Any]:
    """One epoch of `runner` with what every caller needs to know of it: a NaN or infinite
    training loss marks it diverged; `done` when the run is finished or diverged; the last
    result of a tracked run carries its lineage (PBT schedules)."""
    metrics = runner.run_epoch()
    metrics["diverged"] = not all(math.isfinite(v) for k, v in metrics.items()
                                  if k.startswith("train_") and k.endswith("loss"))
    metrics["done"] = runner.finished or metrics["diverged"]
    if metrics["done"] and runner.values.log:
        # the values and metrics of every epoch that made this network (a PBT trial's lineage)
        metrics["schedule_log"] = json.dumps(runner.values.log)
        metrics["lineage_curves"] = json.dumps(runner.values.curves)
    return metrics


def drive_epochs(runner, until: Optional[int] = None, stop_when_diverged: bool = True) -> Iterator[dict[str, Any]]:
    """The one epoch loop of every path — single runs, Tune trials (one `step` is one turn of
    it), PBT members, data-parallel ranks, the proxy's low-fidelity students, teachers: each
    epoch's `epoch_result`, until the runner is finished, has `until` epochs done, or (by
    default) diverged. A resumed runner goes on from the epoch its state holds."""
    while not runner.finished and (until is None or runner.epochs_done < until):
        metrics = epoch_result(runner)
        yield metrics
        if metrics["diverged"] and stop_when_diverged:
            return


def run_to_completion(runner, on_epoch: Optional[Callable[[dict], None]] = None,
                      progress: bool = True) -> list[dict[str, Any]]:
    """Train every remaining epoch with an epoch bar (and a batch bar inside it); a diverged
    epoch does not stop it (teachers and tables record the whole run)."""
    runner.show_progress = progress
    history = []
    bar = progress_bar(total=runner.total_epochs, initial=runner.epochs_done, desc="epochs", disable=not progress)
    for result in drive_epochs(runner, stop_when_diverged=False):
        metrics = runner_metrics(result)
        history.append(metrics)
        bar.update(1)
        bar.set_postfix({k: f"{v:.4f}" for k, v in metrics.items() if k in ("train_loss", "test_acc", "test_loss")})
        if on_epoch:
            on_epoch(metrics)
    bar.close()
    return history
