"""MoCo-v2's key-view augmentation, batched with per-sample draws: random resized crop
(scale 0.2-1, aspect 3/4-4/3), colour jitter (0.4, 0.4, 0.4, 0.1) with p 0.8, grayscale p 0.2,
Gaussian blur (sigma 0.1-2.0, scaled to the image side) p 0.5, horizontal flip."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from augtune.spaces import autoaugment, ops


def _u(n, low, high, generator, device):
    return low + (high - low) * torch.rand(n, generator=generator, device=device)


def random_resized_crop(x: torch.Tensor, generator: torch.Generator, scale=(0.2, 1.0),
                        ratio=(3 / 4, 4 / 3)) -> torch.Tensor:
    """A per-sample box of area fraction in `scale` and aspect in `ratio`, resized back to H x W."""
    b = x.shape[0]
    area = _u(b, *scale, generator, x.device)
    log_ratio = _u(b, math.log(ratio[0]), math.log(ratio[1]), generator, x.device)
    aspect = torch.exp(log_ratio)
    width = torch.sqrt(area * aspect).clamp(max=1.0)  # fractions of the side
    height = torch.sqrt(area / aspect).clamp(max=1.0)
    centre_x = _u(b, 0, 1, generator, x.device) * (1 - width) + width / 2
    centre_y = _u(b, 0, 1, generator, x.device) * (1 - height) + height / 2
    zero = torch.zeros_like(width)
    theta = torch.stack([torch.stack([width, zero, 2 * centre_x - 1], 1),
                         torch.stack([zero, height, 2 * centre_y - 1], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _hue_shift(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate hue by `shift` turns (per sample) in YIQ space."""
    if x.shape[1] != 3:
        return x
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
                          device=x.device, dtype=x.dtype)
    yiq = torch.einsum("ij,bjhw->bihw", to_yiq, x)
    angle = shift * 2 * math.pi
    cos, sin = torch.cos(angle).view(-1, 1, 1), torch.sin(angle).view(-1, 1, 1)
    i, q = yiq[:, 1], yiq[:, 2]
    yiq = torch.stack([yiq[:, 0], cos * i - sin * q, sin * i + cos * q], 1)
    return torch.einsum("ij,bjhw->bihw", torch.linalg.inv(to_yiq), yiq).clamp(0, 1)


def colour_jitter(x: torch.Tensor, generator: torch.Generator, strength=(0.4, 0.4, 0.4, 0.1),
                  p: float = 0.8) -> torch.Tensor:
    b, device = x.shape[0], x.device
    bright, contrast, saturation, hue = strength
    out = autoaugment.brightness(x, _u(b, 1 - bright, 1 + bright, generator, device))
    out = autoaugment.contrast(out, _u(b, 1 - contrast, 1 + contrast, generator, device))
    out = autoaugment.color(out, _u(b, 1 - saturation, 1 + saturation, generator, device))
    out = _hue_shift(out, _u(b, -hue, hue, generator, device))
    apply = torch.rand(b, generator=generator, device=device) < p
    return torch.where(apply[:, None, None, None], out, x)


def random_grayscale(x: torch.Tensor, generator: torch.Generator, p: float = 0.2) -> torch.Tensor:
    apply = torch.rand(x.shape[0], generator=generator, device=x.device) < p
    return torch.where(apply[:, None, None, None], autoaugment._grey(x).expand_as(x), x)


def gaussian_blur(x: torch.Tensor, generator: torch.Generator, p: float = 0.5,
                  sigma=(0.1, 2.0), reference_side: int = 224) -> torch.Tensor:
    """Per-sample sigma (given for 224 px, scaled to this side), separable, via grouped conv."""
    b, c, h, w = x.shape
    scale = h / reference_side
    sig = _u(b, *sigma, generator, x.device) * scale
    radius = max(1, int(math.ceil(3 * sigma[1] * scale)))
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-(offsets[None] ** 2) / (2 * sig[:, None].clamp_min(1e-3) ** 2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (b*c), k
    flat = x.reshape(1, b * c, h, w)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="reflect"), kernel[:, None, None, :], groups=b * c)
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="reflect"), kernel[:, None, :, None], groups=b * c)
    apply = torch.rand(b, generator=generator, device=x.device) < p
    return torch.where(apply[:, None, None, None], flat.view(b, c, h, w), x)


def moco_v2(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    x = random_resized_crop(x, generator)
    x = colour_jitter(x, generator)
    x = random_grayscale(x, generator)
    x = gaussian_blur(x, generator)
    return ops.random_flip(x, generator)
