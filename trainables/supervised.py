"""Plain supervised training (CE on crop+flip): how teachers are made."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F

from augtune.trainables.experiment_config import ExperimentConfig, ModelConfig
from augtune.trainables.data import DataBundle
from augtune.trainables.engine import save_checkpoint
from augtune.trainables.runner import EpochRunner


class SupervisedRunner(EpochRunner):
    def __init__(self, cfg: ExperimentConfig, model_cfg: Optional[ModelConfig] = None,
                 data: Optional[DataBundle] = None, seed: Optional[int] = None):
        self.model_cfg = model_cfg or cfg.teacher
        super().__init__(cfg, self.model_cfg.train, data, seed)
        self.model = self.model_cfg.build(self.data.num_classes, self.data.channels).to(self.device)
        if self.pipeline.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self._setup_optimisation(self.model.parameters())

    def loss(self, images, labels):
        x = self.pipeline.normalise(self.pipeline.train_batch(images, self.generator))
        return F.cross_entropy(self.model(x).float(), labels), {}

    def save(self, path: Path, metrics: dict[str, Any]) -> Path:
        return save_checkpoint(path, self.model, self.model_cfg.model, self.data,
                               extra={k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))})
