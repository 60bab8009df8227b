"""Get a teacher: load the configured checkpoint, reuse one this experiment trained before,
or train one (the single-run path, no Ray)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from augtune.search.sweep_config import SweepConfig
from augtune.trainables.data import DataBundle
from augtune.trainables.engine import CheckpointError, load_checkpoint, save_checkpoint
from augtune.trainables.method import OwnTeacher
from augtune.trainables.models import Network
from augtune.trainables.runner import run_to_completion
from augtune.trainables.supervised import SupervisedRunner


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
    t = cfg.teacher
    if t.checkpoint is None and (t.weights is not None or t.pretrained) and not t.fine_tune:
        # the given weights are the teacher: saved once in augtune's format for the trials
        path = save_checkpoint(default_teacher_path(cfg), t.build(data.num_classes, data.channels), t.model, data,
                               extra={"weights": str(t.weights) if t.weights else "pretrained"})
        model, _ = load_checkpoint(path, data, device)
        return model.eval(), path, False
    if cfg.teacher.checkpoint is not None:
        model, _ = load_checkpoint(cfg.teacher.checkpoint, data, device)
        return model.eval(), cfg.teacher.checkpoint, False
    path = default_teacher_path(cfg)
    if path.is_file():
        try:
            model, payload = load_checkpoint(path, data, device)
            if payload["model_name"] == cfg.teacher.model and payload.get("model_args", {}) == cfg.teacher.model_args:
                return model.eval(), path, False
        except CheckpointError:
            pass  # stale checkpoint from another data setting: train a fresh one over it
    path, _ = train_teacher(cfg, data, progress=progress, path=path)
    model, _ = load_checkpoint(path, data, device)
    return model.eval(), path, True


def obtain_own_teacher(cfg: SweepConfig, own: OwnTeacher, data: DataBundle, device: torch.device, tracker=None,
                       parent_id: Optional[str] = None, progress: bool = True) -> tuple[Network, Path, bool]:
    """The teacher a method trains itself (`own`, e.g. SSD's stages I-II), run once in the driver:
    the configured checkpoint, else the one a previous run left in the job folder, else trained
    now, every epoch logged to a child run (stage `own.stage`) when a tracker is given."""
    if cfg.teacher.checkpoint is not None:
        model, _ = load_checkpoint(cfg.teacher.checkpoint, data, device)
        return model.eval(), cfg.teacher.checkpoint, False
    folder = cfg.output_dir / cfg.name
    path = own.checkpoint(folder)
    if path.is_file():
        try:
            model, _ = load_checkpoint(path, data, device)
            return model.eval(), path, False
        except CheckpointError:
            pass  # from another data setting: train it again
    run_id = tracker.start_run(own.stage, own.stage, parent_id) if tracker else None
    step = 0

    def log(metrics: dict) -> None:
        nonlocal step
        step += 1
        if tracker:
            tracker.log(run_id, metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)

    path = own.train(cfg, data, folder, on_epoch=log, progress=progress)
    if tracker:
        tracker.end_run(run_id)
    model, _ = load_checkpoint(path, data, device)
    return model.eval(), path, True


def obtain_method_teacher(cfg: SweepConfig, method, data: DataBundle, device: torch.device, tracker=None,
                          parent_id: Optional[str] = None, progress: bool = True) -> tuple[Network, Path, bool]:
    """The teacher a registered method distils from, by its teacher source (Method.teacher)."""
    if isinstance(method.teacher, OwnTeacher):
        return obtain_own_teacher(cfg, method.teacher, data, device, tracker, parent_id, progress)
    if method.teacher == "supervised":
        return obtain_teacher(cfg, data, device, progress=progress)
    raise ValueError(f"method {method.name} has no teacher")
