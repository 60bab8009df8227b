"""The KD teacher's base-view cache (trainables/teacher_cache.py), filled once per sweep before
its trials, where the trials run (the key holds the device): in the driver on a local Ray, as a
Ray task on one trial's resources on a cluster (a GPU on a GPU cluster); beside the teacher
checkpoint the trials already read. A resumed sweep reuses a complete file and refills one a
kill left partial."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import ray
import torch

from augtune.search.sweep_config import SweepConfig
from augtune.trainables.data import DataBundle
from augtune.trainables.engine import InputPipeline
from augtune.trainables.experiment_config import DistillConfig
from augtune.trainables.teacher_cache import cache_bytes, ensure_cache

AUTO_MAX_BYTES = 16 * 1024**3  # "auto" leaves bigger caches to "on"


def why_not(cfg: SweepConfig, data: DataBundle) -> Optional[str]:
    """None when the sweep fills the cache; otherwise why it does not, in words."""
    if cfg.search.method != "kd":
        return f"{cfg.search.method} trials do not forward a teacher on x"
    mode = cfg.section("kd").teacher_cache
    if mode == "off":
        return "kd.teacher_cache: off"
    if cfg.search.resources.workers_per_trial > 1:
        return "data-parallel trials shard their batches; each rank forwards the teacher on its x"
    if mode == "on":
        return None
    views = InputPipeline(data, torch.device("cpu"), cfg.student.train).num_base_views  # the trials' crop+flip
    epochs = cfg.search.num_samples * cfg.student.train.epochs
    if epochs < views:
        return (f"auto: {cfg.search.num_samples} trials x {cfg.student.train.epochs} epochs forward x {epochs} times "
                f"per image, fewer than the cache's {views} views (kd.teacher_cache: on fills it anyway)")
    size = cache_bytes(len(data.train), views, data.num_classes, torch.float32)  # the larger of the two: a bound
    if size > AUTO_MAX_BYTES:
        return f"auto: {size / 1024**3:.1f} GiB in float32, above {AUTO_MAX_BYTES / 1024**3:.0f} GiB (kd.teacher_cache: on)"
    return None


@ray.remote
def _fill(experiment: dict, teacher_checkpoint: str) -> dict:
    return ensure_cache(DistillConfig.model_validate(experiment), Path(teacher_checkpoint))


def fill_for_sweep(cfg: SweepConfig, data: DataBundle, teacher_path: Optional[Path],
                   progress: bool = False) -> Optional[dict]:
    """Fill (or find) the cache the sweep's KD trials read; prints one line either way."""
    reason = why_not(cfg, data) if teacher_path is not None else "no teacher"
    if reason is not None:
        if cfg.search.method == "kd":
            print(f"teacher cache: not used ({reason}); trials forward the teacher on x")
        return None
    if cfg.search.ray_address is None:  # a local Ray: the trials' device is this machine's
        info = ensure_cache(DistillConfig.model_validate(cfg.distill_dict()), Path(teacher_path), progress)
    else:
        wanted = cfg.search.resources
        info = ray.get(_fill.options(num_cpus=wanted.cpu, num_gpus=wanted.gpu).remote(
            cfg.distill_dict(), str(Path(teacher_path).resolve())))
    done = f"filled in {info['seconds']:.1f} s" if info["filled"] else "complete already, reused"
    print(f"teacher cache: {info['images']} images x {info['views']} views on {info['device']}, "
          f"{info['bytes'] / 1024**2:.1f} MiB, {done}: {info['path']}")
    return info
