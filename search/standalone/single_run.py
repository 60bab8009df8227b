"""`augtune train {kd,sla,ssd} CONFIG`: one run of a method without Ray, for debugging and for
reproducing a trial. The same runners and checkpoints as the trials; an epoch bar; the runner's
state saved after every epoch (weights-only) so `--resume` continues; optional MLflow logging.

Outputs in OUTPUT_DIR/NAME/train-METHOD/: runner.pt (resumable state), student.pt (the trained
network, augtune's checkpoint format), summary.json, and mlflow_run_id when `--track` is given.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from augtune.search.sweep_config import ConfigError, SweepConfig
from augtune.search.standalone.proxy_job import check_tracking_uri, load_checked_data, pair_name
from augtune.search.standalone.teacher import obtain_method_teacher
from augtune.search.results.tracking import CANDIDATE_TAG, PAIR_TAG, Tracker
from augtune.spaces.candidates import parse_candidate
from augtune.trainables.engine import progress_bar, resolve_device, save_checkpoint
from augtune.trainables.builtin_methods import REGISTRY, get_method
from augtune.trainables.runner import (RUNNER_STATE_FILE, drive_epochs, load_runner_state, runner_metrics,
                                        save_runner_state)


def run_folder(cfg: SweepConfig, method: str) -> Path:
    return cfg.output_dir / cfg.name / f"train-{method}"


def _check_augmentation(method, augmentation: str) -> None:
    try:
        candidate = parse_candidate(augmentation)
    except ValueError as exc:
        raise ConfigError(f"--augmentation: {exc}") from None
    reason = method.refuses(candidate)
    if reason:
        raise ConfigError(f"--augmentation: {reason}")


def build_runner(cfg: SweepConfig, method_name: str, augmentation: str, seed: int, data, progress: bool):
    """The method's runner (from the registry), its teacher obtained (loaded, or trained once)
    where it needs one."""
    method = get_method(method_name)
    section = cfg.section(method_name)
    if hasattr(section, "augmentation"):
        section.augmentation = augmentation
    teacher_path = None
    if method.has_teacher and method.uses_teacher(cfg):
        _, teacher_path, _ = obtain_method_teacher(cfg, method, data, resolve_device(cfg.device), progress=progress)
    return method.runner(cfg, data=data, seed=seed, teacher_checkpoint=str(teacher_path) if teacher_path else None,
                         work_dir=run_folder(cfg, method_name))


def train_single(cfg: SweepConfig, method: str, augmentation: Optional[str] = None, seed: Optional[int] = None,
                 resume: bool = False, track: bool = False, progress: bool = True,
                 on_epoch: Optional[Callable[[dict], None]] = None) -> dict[str, Any]:
    """Train to the end (or from runner.pt with `resume`); returns the summary. `on_epoch` sees
    each epoch's metrics after its state is saved."""
    if method not in REGISTRY:
        raise ConfigError(f"method {method!r}: choose one of {', '.join(sorted(REGISTRY))}")
    if cfg.schedule and not REGISTRY[method].schedulable:
        raise ConfigError(f"schedule: a schedule is replayed in single-stage runs; {method} runs are multi-stage: "
                          "remove schedule: from the config")
    if augmentation and any("augmentation" in step.values for step in cfg.schedule):
        raise ConfigError("--augmentation: this config's schedule sets the augmentation epoch by epoch; "
                          "drop --augmentation (or the schedule)")
    augmentation = augmentation or getattr(cfg.section(method), "augmentation", "identity")
    _check_augmentation(REGISTRY[method], augmentation)
    seed = cfg.seed if seed is None else seed
    folder = run_folder(cfg, method)
    if resume and not (folder / RUNNER_STATE_FILE).is_file():
        raise ConfigError(f"--resume: no run to resume in {folder} (no {RUNNER_STATE_FILE}); run without --resume")
    data = load_checked_data(cfg, proxy=False)
    if track:
        check_tracking_uri(cfg.tracking.uri)
    folder.mkdir(parents=True, exist_ok=True)
    runner = build_runner(cfg, method, augmentation, seed, data, progress)
    if resume:
        load_runner_state(runner, folder)
    tracker = run_id = None
    if track:
        tracker = Tracker(cfg.tracking.uri, cfg.experiment_name)
        id_file = folder / "mlflow_run_id"
        if resume and id_file.is_file():
            run_id = id_file.read_text().strip()
            tracker.client.update_run(run_id, status="RUNNING")
        else:
            run_id = tracker.start_run(f"train:{method}:{augmentation}", "single",
                                       tags={CANDIDATE_TAG: augmentation, PAIR_TAG: pair_name(cfg)})
            tracker.log(run_id, params={"method": method, "augmentation": augmentation, "seed": seed,
                                        "threads": torch.get_num_threads()})
            id_file.write_text(run_id)
    total = runner.total_epochs
    runner.show_progress = progress
    bar = progress_bar(total=total, initial=runner.epochs_done, desc=f"{method} {augmentation}",
                       disable=not progress)
    metrics: dict[str, Any] = {}
    try:
        for result in drive_epochs(runner):  # a diverged epoch ends the run, as it ends a trial
            metrics = runner_metrics(result)
            save_runner_state(runner, folder)
            if tracker:
                tracker.log(run_id, metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float))},
                            step=runner.epochs_done)
            bar.update(1)
            if on_epoch:
                on_epoch(metrics)
            bar.set_postfix({k: f"{v:.4f}" for k, v in metrics.items() if k in ("train_loss", "val_loss", "test_acc")})
    except BaseException:
        if tracker:
            tracker.end_run(run_id, "KILLED")
        raise
    finally:
        bar.close()
    model = getattr(runner, "model", None)
    summary = {"method": method, "augmentation": augmentation, "seed": seed, "epochs": runner.epochs_done,
               "threads": torch.get_num_threads(),
               **{k: v for k, v in metrics.items() if k.startswith(("val_", "test_")) and isinstance(v, float)}}
    if model is not None and REGISTRY[method].student_artifact:
        summary["student_checkpoint"] = str(save_checkpoint(folder / "student.pt", model, cfg.student.model, data))
    (folder / "summary.json").write_text(json.dumps(summary, indent=2))
    if tracker:
        tracker.log(run_id, metrics={f"final_{k}": v for k, v in summary.items()
                                     if k.startswith(("val_", "test_"))}, once=True)
        tracker.end_run(run_id)
        summary["mlflow_run_id"] = run_id
    return summary
