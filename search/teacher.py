"""Get a teacher: load the configured checkpoint, reuse one this experiment trained before,
or train one (the single-run path, no Ray)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from search.config import SweepConfig
from trainables.data import DataBundle
from trainables.engine import CheckpointError, load_checkpoint
from trainables.models import Network
from trainables.runner import run_to_completion
from trainables.supervised import SupervisedRunner


def default_teacher_path(cfg: SweepConfig) -> Path:
    return cfg.output_dir / cfg.name / "teacher.pt"


def train_teacher(cfg: SweepConfig, data: Optional[DataBundle] = None, progress: bool = True,
                  path: Optional[Path] = None) -> tuple[Path, dict]:
    runner = SupervisedRunner(cfg, cfg.teacher, data)
    history = run_to_completion(runner, progress=progress)
    final = history[-1]
    path = runner.save(path or default_teacher_path(cfg), final)
    return path, final


def obtain_teacher(cfg: SweepConfig, data: DataBundle, device: torch.device,
                   progress: bool = True) -> tuple[Network, Path, bool]:
    """(teacher in eval mode, its checkpoint path, whether it was trained now)."""
    if cfg.teacher.checkpoint is not None:
        model, _ = load_checkpoint(cfg.teacher.checkpoint, data, device)
        return model.eval(), cfg.teacher.checkpoint, False
    path = default_teacher_path(cfg)
    if path.is_file():
        try:
            model, payload = load_checkpoint(path, data, device)
            if payload["model_name"] == cfg.teacher.model:
                return model.eval(), path, False
        except CheckpointError:
            pass  # stale checkpoint from another data setting: train a fresh one over it
    path, _ = train_teacher(cfg, data, progress=progress, path=path)
    model, _ = load_checkpoint(path, data, device)
    return model.eval(), path, True
