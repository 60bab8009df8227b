"""The training engine shared by every method: device set-up, the on-device input pipeline,
SGD with step/cosine schedules and warm-up, evaluation, and weights-only checkpoints."""
from __future__ import annotations

import contextlib
import math
import os
import random
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from augtune.spaces import ops
from augtune.trainables.checkpoint_io import CheckpointError, read_checkpoint  # noqa: F401 (re-exported)
from augtune.trainables.experiment_config import TrainConfig
from augtune.trainables.data import BatchFeeder, DataBundle
from augtune.trainables.models import Network, build_model


def resolve_device(choice: str = "auto") -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was requested but no CUDA device is visible")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def seed_everything(seed: int, device: torch.device) -> torch.Generator:
    """Seed every RNG and return a generator on `device` for augmentation draws.
    On CPU, kernels are deterministic; on CUDA cuDNN autotuning stays on, for speed."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return torch.Generator(device=device).manual_seed(seed)


def default_padding(image_size: int) -> int:
    """pad 4 at 32 px, 8 at 64 px: an eighth of the side."""
    return max(1, image_size // 8)


def row_major(x: torch.Tensor) -> torch.Tensor:
    """x with N x C x H x W row-major strides. A one-channel crop (ops.crop_at) is 'contiguous' with
    the strides of channels_last, which sends a convolution down another kernel with other low
    bits: then the network's output on an image would depend on the op that made the batch."""
    expected, step = [], 1
    for size in reversed(x.shape):
        expected.insert(0, step)
        step *= size
    return x if list(x.stride()) == expected else x.clone(memory_format=torch.contiguous_format)


class InputPipeline:
    """uint8 batch -> float [0, 1] -> optional crop+flip (per sample) -> normalised, on device."""

    def __init__(self, data: DataBundle, device: torch.device, train: Optional[TrainConfig] = None):
        self.mean = torch.tensor(data.mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(data.std, device=device).view(1, -1, 1, 1)
        self.padding = default_padding(data.image_size)
        if train is not None and train.crop_padding is not None:
            self.padding = train.crop_padding
        self.flip = True if train is None else train.flip
        self.channels_last = device.type in ACCELERATED_DEVICE_TYPES and (train is None or train.channels_last)

    def to_unit(self, images: torch.Tensor) -> torch.Tensor:
        return images.float().div_(255)

    def base_augment(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.base_augment_with_views(x, generator)[0]

    @property
    def num_base_views(self) -> int:
        """How many different images crop+flip makes of one: (2 padding + 1)^2 offsets x 2 flips."""
        return (2 * self.padding + 1) ** 2 * (2 if self.flip else 1)

    def base_augment_with_views(self, x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """crop+flip, and which of the num_base_views each sample got: (row offset x (2 padding
        + 1) + column offset) x flips + flipped. The same draws as ops.random_crop then random_flip."""
        n, side = x.shape[0], 2 * self.padding + 1
        view = torch.zeros(n, dtype=torch.long, device=x.device)
        if self.padding:
            offset_y, offset_x = ops.crop_offsets(n, generator, self.padding, x.device)
            x = ops.crop_at(x, self.padding, offset_y, offset_x)
            view = offset_y * side + offset_x
        if self.flip:
            flipped = ops.flip_draws(n, generator, x.device)
            x = ops.flip_where(x, flipped)
            view = view * 2 + flipped.long()
        return x, view

    def base_view(self, x: torch.Tensor, view: int) -> torch.Tensor:
        """Every sample of x in base view number `view` (the inverse of base_augment_with_views)."""
        n, side = x.shape[0], 2 * self.padding + 1
        flipped, offset = (view % 2, view // 2) if self.flip else (0, view)
        if self.padding:
            full = lambda value: torch.full((n,), value, dtype=torch.long, device=x.device)  # noqa: E731
            x = ops.crop_at(x, self.padding, full(offset // side), full(offset % side))
        return x.flip(-1) if flipped else x

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        x = (row_major(x) - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def scorer(self, network: torch.nn.Module, bf16: bool = True) -> Callable[[torch.Tensor], torch.Tensor]:
        """A no-grad, eval-mode forward of `network` on unit images, returning float logits:
        what entropy picks and the proxy score images with. A network that is training is put
        back in training mode afterwards."""
        device = self.mean.device

        def logits(unit_images: torch.Tensor) -> torch.Tensor:
            was_training = network.training
            network.eval()
            with torch.no_grad(), autocast(device, bf16):
                out = network(self.normalise(unit_images)).float()
            network.train(was_training)
            return out

        return logits

    def train_batch(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Loader view x of the Good-DA recipe: crop+flip, still in [0, 1] (not normalised)."""
        return self.base_augment(self.to_unit(images), generator)

    def train_batch_with_views(self, images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return self.base_augment_with_views(self.to_unit(images), generator)


# Device types that get bf16 autocast and channels_last (train.bf16 / train.channels_last). Only
# CUDA by default: on CPU both are slower. The fast suite adds "cpu" to run these same branches on
# a machine without a GPU (tests/test_accelerated_paths.py); torch supports both on CPU.
ACCELERATED_DEVICE_TYPES = {"cuda"}


def autocast(device: torch.device, enabled: bool = True):
    if device.type in ACCELERATED_DEVICE_TYPES and enabled:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def full_precision(device: torch.device):
    """Leave autocast for a small fp32 computation inside an autocast region."""
    if device.type in ACCELERATED_DEVICE_TYPES:
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def build_optimizer(params: Iterable, cfg: TrainConfig) -> torch.optim.SGD:
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                           weight_decay=cfg.weight_decay)


def lr_factor(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Multiplier of the base lr at optimisation step `step` (0-based)."""
    epoch = step / steps_per_epoch
    if cfg.warmup_epochs and epoch < cfg.warmup_epochs:
        return (step + 1) / (cfg.warmup_epochs * steps_per_epoch)
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "cosine":
        start = cfg.warmup_epochs
        progress = (epoch - start) / max(cfg.epochs - start, 1e-8)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    milestones = [m * cfg.epochs if m <= 1 else m for m in cfg.milestones]
    return cfg.gamma ** sum(epoch >= m for m in milestones)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(cfg, s, steps_per_epoch))


@torch.no_grad()
def predict_logits(heads: Callable[[torch.Tensor], dict[str, torch.Tensor]], feeder, pipeline: InputPipeline,
                   device: torch.device, bf16: bool = True) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Every head's logits (fp32) over an evaluation feeder, and the labels: `heads` maps
    un-augmented images in [0, 1] to {name: logits}. The one evaluation loop of runners and jobs."""
    outputs: dict[str, list[torch.Tensor]] = {}
    labels = []
    for images, y in feeder:
        with autocast(device, bf16):
            for name, logits in heads(pipeline.to_unit(images)).items():
                outputs.setdefault(name, []).append(logits.float())
        labels.append(y)
    return {name: torch.cat(chunks) for name, chunks in outputs.items()}, torch.cat(labels)


def accuracy_and_loss(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    return {"acc": (logits.argmax(1) == labels).float().mean().item(),
            "loss": F.cross_entropy(logits, labels).item()}


def evaluate(model: torch.nn.Module, feeder, pipeline: InputPipeline, device: torch.device,
             head: str = "main", bf16: bool = True) -> dict[str, float]:
    was_training = model.training
    model.eval()
    logits, labels = predict_logits(lambda unit: {head: model(pipeline.normalise(unit), head=head)}, feeder,
                                    pipeline, device, bf16)
    model.train(was_training)
    return accuracy_and_loss(logits[head], labels)


def evaluate_split(model: torch.nn.Module, data: DataBundle, device: torch.device, split: str = "test",
                   batch_size: int = 512) -> dict[str, float]:
    """Accuracy and CE loss of a network on one split, outside any runner."""
    feeder = BatchFeeder(getattr(data, split), batch_size, device, shuffle=False)
    return evaluate(model, feeder, InputPipeline(data, device), device)


# ------------------------------------------------------------------ checkpoints

def save_checkpoint(path: Path, model: Network, model_name: str, data: DataBundle,
                    extra: Optional[dict[str, Any]] = None) -> Path:
    """Weights plus what is needed to rebuild the network; plain types only, so that
    `torch.load(weights_only=True)` reads it back."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"format": "augtune-model-1", "model_name": model_name, "model_args": dict(model.model_args),
               "heads": head_sizes(model),
               "data": data.signature(), "mean": list(data.mean), "std": list(data.std),
               "state_dict": state, "extra": extra or {}}
    return save_atomic(payload, path)


def save_atomic(payload: Any, path: Path) -> Path:
    """torch.save through a temporary file: a process killed mid-write leaves the previous file,
    never half a checkpoint."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: Path, data: Optional[DataBundle] = None,
                    device: torch.device = torch.device("cpu")) -> tuple[Network, dict]:
    """Rebuild a network saved by `save_checkpoint`; check it fits `data`."""
    payload = read_checkpoint(path)
    signature = payload["data"]
    if data is not None and signature != data.signature():
        raise CheckpointError(f"checkpoint {path} was trained on data {signature}, but this config "
                              f"gives {data.signature()}; train a new one or fix data.*")
    model = build_network(payload["model_name"], payload["heads"], signature["channels"], payload.get("model_args"))
    model.load_state_dict(payload["state_dict"])
    return model.to(device), payload


def head_sizes(model: Network) -> dict[str, int]:
    return {name: head.out_features for name, head in model.heads.items()}


def build_network(model_name: str, heads: dict[str, int], channels: int,
                  model_args: Optional[dict[str, Any]] = None) -> Network:
    """A network with the heads a checkpoint or a runner state records (`head_sizes`)."""
    heads = dict(heads)
    model = build_model(model_name, heads.pop("main"), channels, model_args)
    for name, size in heads.items():
        model.add_head(name, size)
    return model


def progress_bar(iterable=None, *, nested: bool = False, **options):
    """tqdm that suits where its output goes: on a terminal, as usual; in a log file (stderr not
    a terminal), a line at most every 30 s and no nested per-batch bars, which would print a
    line for every epoch."""
    interactive = sys.stderr.isatty()
    if not interactive:
        options["mininterval"] = max(options.get("mininterval", 0.1), 30.0)
        if nested:
            options["disable"] = True
    return tqdm(iterable, dynamic_ncols=True, **options)
