"""Plain supervised training (CE on crop+flip): how teachers are made."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F

from trainables.config import ExperimentConfig, ModelConfig
from trainables.data import DataBundle
from trainables.engine import autocast, save_checkpoint
from trainables.models import build_model
from trainables.runner import EpochRunner


class SupervisedRunner(EpochRunner):
    def __init__(self, cfg: ExperimentConfig, model_cfg: Optional[ModelConfig] = None,
                 data: Optional[DataBundle] = None, seed: Optional[int] = None):
        self.model_cfg = model_cfg or cfg.teacher
        super().__init__(cfg, self.model_cfg.train, data, seed)
        self.model = build_model(self.model_cfg.model, self.data.num_classes, self.data.channels).to(self.device)
        if self.pipeline.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self._setup_optimisation(self.model.parameters())

    def train_epoch(self) -> dict[str, float]:
        self.model.train()
        total, count = torch.zeros((), device=self.device), 0
        for images, labels in self.batches(f"epoch {self.epoch + 1}"):
            x = self.pipeline.normalise(self.pipeline.train_batch(images, self.generator))
            with autocast(self.device, self.train_cfg.bf16):
                loss = F.cross_entropy(self.model(x), labels)
            self.optimise(loss)
            total += loss.detach() * len(labels)
            count += len(labels)
        metrics = {"train_loss": (total / count).item()}
        metrics.update(self.evaluate_all())
        return metrics

    def save(self, path: Path, metrics: dict[str, Any]) -> Path:
        return save_checkpoint(path, self.model, self.model_cfg.model, self.data,
                               extra={k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))})
