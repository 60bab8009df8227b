"""Datasets and batch feeding.

Every dataset is loaded as uint8 NCHW images plus int64 labels. Small ones (digits, CIFAR) are
moved to the training device once and batched by index: no per-sample Python work, no worker
processes. Large ones (ImageNet-LT, iNaturalist split lists) go through a DataLoader that decodes
and resizes to a fixed side; augmentation then happens on the device for both, per sample.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
from PIL import Image

from augtune.trainables.experiment_config import DataConfig

IN_MEMORY_LIMIT_BYTES = 2 * 1024**3  # above this, "auto" feeds through a DataLoader


@dataclass
class ImageSet:
    """uint8 images N x C x H x W (or file paths for the loader mode) and int64 labels."""

    labels: torch.Tensor
    images: Optional[torch.Tensor] = None
    paths: Optional[list[Path]] = None
    image_size: Optional[int] = None

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class DataBundle:
    train: ImageSet
    test: ImageSet
    val: Optional[ImageSet]
    num_classes: int
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_counts: list[int] = field(default_factory=list)

    def signature(self) -> dict:
        """What a checkpoint must match to be reused on this data."""
        return {"num_classes": self.num_classes, "channels": self.channels, "image_size": self.image_size}


# ---------------------------------------------------------------- class subsets

def long_tail_counts(n_max: int, num_classes: int, imbalance_factor: float) -> list[int]:
    """n_i = floor(n_max * IF^(-i/(C-1))), the CIFAR-LT rule (Cao et al. 2019, Cui et al. 2019)."""
    if num_classes == 1:
        return [n_max]
    return [int(n_max * imbalance_factor ** (-i / (num_classes - 1))) for i in range(num_classes)]


def subsample_per_class(labels: np.ndarray, counts: list[int], rng: Optional[np.random.Generator]) -> np.ndarray:
    """Indices keeping counts[c] images of class c: the first ones, or a seeded random choice."""
    keep = []
    for cls, count in enumerate(counts):
        idx = np.flatnonzero(labels == cls)
        if rng is not None:
            idx = rng.permutation(idx)
        if count > len(idx):
            raise ValueError(f"class {cls} has {len(idx)} images, {count} requested")
        keep.append(np.sort(idx[:count]))
    return np.concatenate(keep)


def _apply_class_limits(labels: np.ndarray, num_classes: int, cfg: DataConfig,
                        rng: Optional[np.random.Generator]) -> np.ndarray:
    available = np.bincount(labels, minlength=num_classes)
    n_max = int(available.min()) if cfg.samples_per_class is None else cfg.samples_per_class
    if cfg.samples_per_class is None and cfg.imbalance_factor == 1.0:
        return np.arange(len(labels))
    if n_max > int(available.max()):
        raise ValueError(f"data.samples_per_class {n_max}: no class has that many training images (the largest "
                         f"has {int(available.max())}{' after the validation hold-out' if cfg.val_per_class else ''}); "
                         "lower it")
    counts = long_tail_counts(n_max, num_classes, cfg.imbalance_factor)
    counts = [min(c, int(a)) for c, a in zip(counts, available)]
    return subsample_per_class(labels, counts, rng)


def balanced_holdout(labels: np.ndarray, per_class: int, num_classes: int,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (kept, held_out): `per_class` seeded random images of every class are
    held out, so the validation split is balanced whatever the training distribution."""
    if per_class == 0:
        return np.arange(len(labels)), np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed + 7_777)  # its own stream: independent of the subsampling draws
    held = []
    for cls in range(num_classes):
        idx = np.flatnonzero(labels == cls)
        if len(idx) <= per_class:
            raise ValueError(f"data.val_per_class {per_class}: class {cls} has only {len(idx)} training images; "
                             f"hold out fewer")
        held.append(rng.choice(idx, size=per_class, replace=False))
    held_idx = np.sort(np.concatenate(held))
    kept = np.setdiff1d(np.arange(len(labels)), held_idx, assume_unique=True)
    return kept, held_idx


# ---------------------------------------------------------------- loaders

def _resize_uint8(images: torch.Tensor, side: Optional[int]) -> torch.Tensor:
    if side is None or images.shape[-1] == side:
        return images
    resized = torch.nn.functional.interpolate(images.float(), size=(side, side), mode="bilinear",
                                              align_corners=False, antialias=side < images.shape[-1])
    return resized.round().clamp_(0, 255).to(torch.uint8)


def _train_val_indices(labels: np.ndarray, num_classes: int, cfg: DataConfig,
                       rng: Optional[np.random.Generator]) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """The validation images come out of the training pool first (balanced, fixed seed); the
    few-shot / long-tail rule then picks the training images from what is left."""
    pool, val = balanced_holdout(labels, cfg.val_per_class, num_classes, cfg.split_seed)
    train = pool[_apply_class_limits(labels[pool], num_classes, cfg, rng)]
    return train, (val if cfg.val_per_class else None)


def _image_set(images: torch.Tensor, labels: np.ndarray, idx: Optional[np.ndarray]) -> Optional[ImageSet]:
    if idx is None:
        return None
    return ImageSet(torch.from_numpy(labels[idx]).long(), images[idx])


def load_digits_data(cfg: DataConfig) -> DataBundle:
    """scikit-learn's 8x8 handwritten digits (1797 images, 10 classes), fixed stratified split."""
    # scikit-learn: 1.7 s of import (measured), for this dataset only
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # N,1,8,8
    labels = digits.target.astype(np.int64)
    train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=cfg.test_fraction,
                                           stratify=labels, random_state=cfg.split_seed)
    pool_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    rng = np.random.default_rng(cfg.split_seed)
    train_idx, val_idx = _train_val_indices(labels[pool_idx], 10, cfg, rng)
    side = cfg.image_size or 8
    all_images = _resize_uint8(torch.from_numpy(images), side)
    train = _image_set(all_images, labels, pool_idx[train_idx])
    val = _image_set(all_images, labels, None if val_idx is None else pool_idx[val_idx])
    test = _image_set(all_images, labels, test_idx)
    return _bundle(cfg, train, test, val, 10, 1, side)


def load_cifar_data(cfg: DataConfig) -> DataBundle:
    """CIFAR-10/100 via torchvision (download optional), CIFAR-LT when imbalance_factor > 1."""
    import torchvision  # 1.7 s of import (measured), for CIFAR only

    dataset_cls = torchvision.datasets.CIFAR10 if cfg.name == "cifar10" else torchvision.datasets.CIFAR100
    num_classes = 10 if cfg.name == "cifar10" else 100
    splits = {}
    for train in (True, False):
        ds = dataset_cls(str(cfg.root), train=train, download=cfg.download)
        splits[train] = (torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(),
                         np.asarray(ds.targets, dtype=np.int64))
    images, labels = splits[True]
    # CIFAR-LT keeps the first n_i images of each class (the LDAM/SSD convention), here of the
    # images left after the balanced validation hold-out
    train_idx, val_idx = _train_val_indices(labels, num_classes, cfg, rng=None)
    side = cfg.image_size or 32
    images = _resize_uint8(images, side)
    train, val = _image_set(images, labels, train_idx), _image_set(images, labels, val_idx)
    test = ImageSet(torch.from_numpy(splits[False][1]).long(), _resize_uint8(splits[False][0], side))
    return _bundle(cfg, train, test, val, num_classes, 3, side)


def read_split_list(list_file: Path, root: Path) -> tuple[list[Path], np.ndarray]:
    """Parse 'relative/path label' lines (ImageNet-LT / iNaturalist split files)."""
    paths, labels = [], []
    for number, line in enumerate(Path(list_file).read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise ValueError(f"{list_file}:{number}: expected 'relative/path label', got {line!r}")
        paths.append(Path(root) / parts[0])
        labels.append(int(parts[1]))
    return paths, np.asarray(labels, dtype=np.int64)


def _decode_image(path: Path, side: int) -> torch.Tensor:
    with Image.open(path) as img:
        img = img.convert("RGB")
        # shorter side to `side`, then centre crop: a fixed-size uint8 tensor for device batching
        scale = side / min(img.size)
        img = img.resize((max(side, round(img.width * scale)), max(side, round(img.height * scale))),
                         Image.BILINEAR)
        left, top = (img.width - side) // 2, (img.height - side) // 2
        img = img.crop((left, top, left + side, top + side))
        return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()


class _FileDataset(torch.utils.data.Dataset):
    def __init__(self, images: ImageSet):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return _decode_image(self.images.paths[i], self.images.image_size), self.images.labels[i]


def load_imagefolder_data(cfg: DataConfig) -> DataBundle:
    side = cfg.image_size or 224
    sets = {}
    for split in ("train", "test", "val"):
        list_file = getattr(cfg, f"{split}_list")
        if list_file is not None:
            paths, labels = read_split_list(list_file, cfg.root)
            missing = [p for p in paths[:1000] if not p.is_file()]
            if missing:
                raise FileNotFoundError(f"data.{split}_list names {missing[0]}, which does not exist")
            sets[split] = (paths, labels)
    num_classes = cfg.num_classes or int(max(l.max() for _, l in sets.values())) + 1
    train_paths, train_labels = sets["train"]
    keep, val_idx = _train_val_indices(train_labels, num_classes, cfg, np.random.default_rng(cfg.split_seed))
    if val_idx is not None:
        sets["val"] = ([train_paths[i] for i in val_idx], train_labels[val_idx])
    sets["train"] = ([train_paths[i] for i in keep], train_labels[keep])
    est_bytes = len(keep) * 3 * side * side
    in_memory = cfg.in_memory == "device" or (cfg.in_memory == "auto" and est_bytes < IN_MEMORY_LIMIT_BYTES)

    def make(split: str) -> Optional[ImageSet]:
        if split not in sets:
            return None
        paths, labels = sets[split]
        label_tensor = torch.from_numpy(labels).long()
        if in_memory:
            return ImageSet(label_tensor, torch.stack([_decode_image(p, side) for p in paths]))
        return ImageSet(label_tensor, paths=paths, image_size=side)

    return _bundle(cfg, make("train"), make("test"), make("val"), num_classes, 3, side)


def _bundle(cfg: DataConfig, train, test, val, num_classes, channels, side) -> DataBundle:
    if cfg.mean is not None:  # set in the config, or from the teacher's weights (experiment_config.inputs_follow_the_network)
        mean, std = cfg.mean, cfg.std
    elif train.images is not None:
        pixels = train.images.float().div_(255).transpose(0, 1).reshape(channels, -1)
        mean, std = pixels.mean(1).tolist(), pixels.std(1).clamp_min(1e-3).tolist()
    else:  # ImageNet statistics for file-backed data, to avoid a full decoding pass
        mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    counts = torch.bincount(train.labels, minlength=num_classes).tolist()
    return DataBundle(train, test, val, num_classes, channels, side, tuple(mean), tuple(std), counts)


def load_data(cfg: DataConfig) -> DataBundle:
    loaders = {"digits": load_digits_data, "cifar10": load_cifar_data, "cifar100": load_cifar_data,
               "imagefolder": load_imagefolder_data}
    return loaders[cfg.name](cfg)


# ---------------------------------------------------------------- sampling and batching

def sample_order(labels: torch.Tensor, sampler: str, generator: torch.Generator) -> torch.Tensor:
    """One epoch of indices: a permutation, or class-balanced draws with replacement
    (each class equally likely, then uniform within the class)."""
    n = len(labels)
    if sampler == "instance":
        return torch.randperm(n, generator=generator)
    if sampler == "class_balanced":
        counts = torch.bincount(labels).double()
        weights = (1.0 / counts)[labels]
        return torch.multinomial(weights, n, replacement=True, generator=generator)
    raise ValueError(f"unknown sampler {sampler!r}")


class BatchFeeder:
    """Yields (uint8 images, labels) batches on `device` for one epoch per iteration."""

    def __init__(self, images: ImageSet, batch_size: int, device: torch.device, *,
                 sampler: str = "instance", shuffle: bool = True, drop_last: bool = False,
                 seed: int = 0, num_workers: int = 2):
        self.set, self.batch_size, self.device = images, batch_size, torch.device(device)
        self.sampler, self.shuffle, self.drop_last = sampler, shuffle, drop_last
        self.generator = torch.Generator().manual_seed(seed)
        self.num_workers = num_workers
        self.labels_on_device = images.labels.to(self.device)
        self.images_on_device = images.images.to(self.device) if images.images is not None else None

    def __len__(self) -> int:
        n = len(self.set)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(len(self.set))
        return sample_order(self.set.labels, self.sampler, self.generator)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return ((images, labels) for _, images, labels in self.indexed())

    def indexed(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The epoch's batches with the set's index of every image (CPU), in the same order."""
        order = self._order()
        starts = range(0, len(order) - (self.batch_size - 1 if self.drop_last else 0), self.batch_size)
        if self.images_on_device is not None:
            on_device = order.to(self.device)
            for start in starts:
                idx = on_device[start:start + self.batch_size]
                yield order[start:start + self.batch_size], self.images_on_device[idx], self.labels_on_device[idx]
            return
        loader = torch.utils.data.DataLoader(
            _FileDataset(self.set), batch_size=self.batch_size, sampler=order.tolist(),
            num_workers=self.num_workers, drop_last=self.drop_last,
            pin_memory=self.device.type == "cuda", persistent_workers=False)
        for start, (images, labels) in zip(starts, loader):
            yield (order[start:start + self.batch_size], images.to(self.device, non_blocking=True),
                   labels.to(self.device, non_blocking=True))
