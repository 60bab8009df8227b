"""An epoch-at-a-time training run, usable with or without Ray.

Each method implements `EpochRunner`: build everything in `__init__`, train one epoch in
`train_epoch` (returning its metrics), expose its resumable state. `run_to_completion` is the
no-Ray path (`augtune train teacher`), `trainables.tune.as_trainable` the Ray Tune path; both
drive the same object.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Optional

import torch
from tqdm.auto import tqdm

from trainables.config import ExperimentConfig, TrainConfig
from trainables.data import BatchFeeder, DataBundle, load_data
from trainables.engine import (InputPipeline, build_optimizer, build_scheduler, evaluate, resolve_device,
                               seed_everything)


class EpochRunner:
    """Shared state: config, device, data, feeders, pipeline, generator, epoch counter.
    Subclasses set `self.model`, `self.optimizer`, `self.scheduler` and implement `train_epoch`."""

    show_progress = False

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

    # -- to implement
    def train_epoch(self) -> dict[str, float]:
        raise NotImplementedError

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"model": self.model}

    # -- shared
    def _setup_optimisation(self, parameters) -> None:
        self.optimizer = build_optimizer(parameters, self.train_cfg)
        self.scheduler = build_scheduler(self.optimizer, self.train_cfg, len(self.train_feeder))

    def evaluate_all(self, head: str = "main") -> dict[str, float]:
        """test_acc/test_loss (and val_* when there is a validation split) of `self.model`."""
        out = {}
        for split, feeder in (("test", self.test_feeder), ("val", self.val_feeder)):
            if feeder is not None:
                scores = evaluate(self.model, feeder, self.pipeline, self.device, head, self.train_cfg.bf16)
                out.update({f"{split}_{k}": v for k, v in scores.items()})
        return out

    def optimise(self, loss: torch.Tensor) -> None:
        """One SGD step on `loss`, then the per-step learning-rate schedule."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()

    def batches(self, description: str):
        """The epoch's training batches, with a progress bar on the no-Ray path."""
        if not self.show_progress:
            return iter(self.train_feeder)
        return tqdm(self.train_feeder, desc=description, leave=False, dynamic_ncols=True)

    def run_epoch(self) -> dict[str, Any]:
        start = time.perf_counter()
        metrics = self.train_epoch()
        self.epoch += 1
        seconds = time.perf_counter() - start
        metrics.update(epoch=self.epoch, epoch_seconds=seconds,
                       images_per_second=len(self.train_feeder) * self.train_cfg.batch_size / max(seconds, 1e-9),
                       lr=self.optimizer.param_groups[0]["lr"])
        return metrics

    @property
    def finished(self) -> bool:
        return self.epoch >= self.train_cfg.epochs

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch,
                "modules": {k: m.state_dict() for k, m in self.modules().items()},
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "generator": self.generator.get_state(),
                "feeder_generator": self.train_feeder.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = state["epoch"]
        for name, module in self.modules().items():
            module.load_state_dict(state["modules"][name])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        self.train_feeder.generator.set_state(state["feeder_generator"])


def run_to_completion(runner: EpochRunner, on_epoch: Optional[Callable[[dict], None]] = None,
                      progress: bool = True) -> list[dict[str, Any]]:
    """Train every remaining epoch with an epoch bar (and a batch bar inside it)."""
    runner.show_progress = progress
    history = []
    epochs = range(runner.epoch, runner.train_cfg.epochs)
    bar = tqdm(epochs, desc="epochs", disable=not progress, dynamic_ncols=True)
    for _ in bar:
        metrics = runner.run_epoch()
        history.append(metrics)
        shown = {k: f"{v:.4f}" for k, v in metrics.items() if k in ("train_loss", "test_acc", "test_loss")}
        bar.set_postfix(shown)
        if on_epoch:
            on_epoch(metrics)
    return history
