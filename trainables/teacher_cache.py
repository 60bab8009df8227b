"""The teacher's logits on every base view of every training image, computed once per sweep and
read by every KD trial instead of forwarding the teacher on x.

x, the loader view, is a pad-crop and a flip of a training image: with padding p there are only
(2p + 1)^2 offsets x 2 flips of each (50 for the 16 px default with p = 2, 162 for CIFAR's 32 px
with p = 4), the same in every trial, epoch and candidate. x' = candidate(x) is still forwarded.

Layout: one array [images, views, classes] in a .npy file, memory-mapped by every trial of a
node (the page cache holds one copy), float32 on CPU, bfloat16 (stored as its 16 bits) where the
teacher runs under bf16 autocast. CIFAR-100: 50,000 x 162 x 100 logits = 3.24 GB in float32,
1.62 GB in bfloat16. The file is named by a key over the teacher's checkpoint bytes, the training
images and labels, the crop padding, the flip, the normalisation and the device type and
precision the logits were computed in: any change finds no file and the trial forwards as before.
A file is renamed into place only once complete, so a killed fill leaves nothing to read.

Exactness: each view is forwarded in batches of at least 2 (torch's CPU kernels give a batch of
one different low bits), in eval mode, so on CPU a cached logit equals the one the uncached step
computes over [x; x'] bit for bit (tests/test_teacher_cache.py)."""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from augtune.trainables.data import BatchFeeder, DataBundle, ImageSet, load_data
from augtune.trainables.engine import (ACCELERATED_DEVICE_TYPES, InputPipeline, autocast, load_checkpoint,
                                      progress_bar, resolve_device)

CACHE_FOLDER = "teacher_cache"
FORMAT = 1
FILL_BATCH = 512


def cache_dtype(device: torch.device, bf16: bool) -> torch.dtype:
    """What the teacher's logits come out as in a KD step: bf16 under autocast on accelerators."""
    return torch.bfloat16 if bf16 and device.type in ACCELERATED_DEVICE_TYPES else torch.float32


def cache_bytes(images: int, views: int, classes: int, dtype: torch.dtype) -> int:
    return images * views * classes * (2 if dtype == torch.bfloat16 else 4)


def _training_images_digest(train: ImageSet) -> str:
    digest = hashlib.blake2b(train.labels.numpy().tobytes(), digest_size=16)
    if train.images is not None:
        digest.update(train.images.contiguous().numpy().tobytes())
    else:
        digest.update("\n".join(str(p) for p in train.paths or []).encode())
    return digest.hexdigest()


def cache_key(teacher_checkpoint: Path, data: DataBundle, pipeline: InputPipeline, device: torch.device,
              bf16: bool) -> str:
    digest = hashlib.blake2b(Path(teacher_checkpoint).read_bytes(), digest_size=16)
    digest.update(json.dumps({
        "format": FORMAT, "images": _training_images_digest(data.train), "padding": pipeline.padding,
        "flip": pipeline.flip, "mean": list(data.mean), "std": list(data.std), "device": device.type,
        "dtype": str(cache_dtype(device, bf16)), "channels_last": pipeline.channels_last}, sort_keys=True).encode())
    return digest.hexdigest()


def cache_path(teacher_checkpoint: Path, key: str) -> Path:
    """Beside the teacher's checkpoint: shared storage wherever the trials can read the teacher."""
    return Path(teacher_checkpoint).parent / CACHE_FOLDER / f"{key}.npy"


def cache_file(teacher_checkpoint: Path, data: DataBundle, pipeline: InputPipeline, device: torch.device,
               bf16: bool) -> Path:
    """Where the cache for this teacher, data, transform and device is (or would be)."""
    return cache_path(teacher_checkpoint, cache_key(teacher_checkpoint, data, pipeline, device, bf16))


def _forward(teacher: torch.nn.Module, pipeline: InputPipeline, unit: torch.Tensor, bf16: bool) -> torch.Tensor:
    with torch.no_grad(), autocast(unit.device, bf16):
        return teacher(pipeline.normalise(unit))


def fill_cache(teacher: torch.nn.Module, data: DataBundle, pipeline: InputPipeline, device: torch.device,
               bf16: bool, path: Path, progress: bool = False) -> Path:
    """Forward the teacher on every base view of every training image and write the array to
    `path` (a temporary name first, renamed when complete)."""
    teacher.eval()
    views, dtype = pipeline.num_base_views, cache_dtype(device, bf16)
    feeder = BatchFeeder(data.train, FILL_BATCH, device, shuffle=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.stem}.partial.npy")  # a killed fill's is overwritten by the next
    storage = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint16 if dtype == torch.bfloat16 else np.float32,
                                        shape=(len(data.train), views, data.num_classes))
    batches = progress_bar(feeder.indexed(), desc="teacher cache", total=len(feeder)) if progress else feeder.indexed()
    for indices, images, _ in batches:
        unit = pipeline.to_unit(images)
        if len(unit) == 1:  # a lone image: forwarded beside itself (see the module's note on exactness)
            unit = unit.repeat(2, 1, 1, 1)
        for view in range(views):
            logits = _forward(teacher, pipeline, pipeline.base_view(unit, view), bf16)[:len(indices)]
            storage[indices.numpy(), view] = _to_storage(logits.to(dtype))
    storage.flush()
    del storage
    os.replace(partial, path)
    return path


def _to_storage(logits: torch.Tensor) -> np.ndarray:
    if logits.dtype == torch.bfloat16:
        return logits.cpu().view(torch.int16).numpy().view(np.uint16)
    return logits.cpu().numpy()


class TeacherCache:
    """A complete cache file, memory-mapped read-only; `lookup` gives a batch's teacher logits."""

    def __init__(self, path: Path, device: torch.device, dtype: torch.dtype):
        self.path, self.device, self.dtype = Path(path), device, dtype
        self.logits = np.load(self.path, mmap_mode="r")

    def lookup(self, indices: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        rows = torch.from_numpy(np.ascontiguousarray(self.logits[indices.numpy(), views.cpu().numpy()]))
        if self.dtype == torch.bfloat16:
            rows = rows.view(torch.bfloat16)
        return rows.to(self.device, non_blocking=True)

    @staticmethod
    def find(teacher_checkpoint: Path, data: DataBundle, pipeline: InputPipeline, device: torch.device,
             bf16: bool) -> Optional["TeacherCache"]:
        """The complete cache for this teacher, data and transform, if one was filled."""
        path = cache_file(teacher_checkpoint, data, pipeline, device, bf16)
        return TeacherCache(path, device, cache_dtype(device, bf16)) if path.is_file() else None


def ensure_cache(cfg, teacher_checkpoint: Path, progress: bool = False) -> dict:
    """The cache a KD trial of `cfg` (a DistillConfig) looks up: filled unless a complete one
    exists. Run where the trials run (their device decides the key). Returns what was done."""
    device = resolve_device(cfg.device)
    data = load_data(cfg.data)
    pipeline = InputPipeline(data, device, cfg.student.train)
    bf16 = cfg.student.train.bf16
    path = cache_file(teacher_checkpoint, data, pipeline, device, bf16)
    info = {"path": str(path), "views": pipeline.num_base_views, "images": len(data.train),
            "bytes": cache_bytes(len(data.train), pipeline.num_base_views, data.num_classes, cache_dtype(device, bf16)),
            "device": device.type, "filled": False, "seconds": 0.0}
    if path.is_file():
        return info
    start = time.perf_counter()
    teacher, _ = load_checkpoint(teacher_checkpoint, data, device)
    if pipeline.channels_last:  # as KDRunner runs it
        teacher = teacher.to(memory_format=torch.channels_last)
    fill_cache(teacher.eval(), data, pipeline, device, bf16, path, progress)
    return {**info, "filled": True, "seconds": time.perf_counter() - start}
