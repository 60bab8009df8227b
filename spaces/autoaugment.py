"""AutoAugment (CIFAR-10 policy), RandAugment and TrivialAugmentWide, batched per sample.

torchvision applies one op to a whole batch (pytorch/vision#8484) and the per-image route is a
Python loop. Here each sample draws its own op and magnitude; samples that drew the same op are
processed together: geometric ops through one `grid_sample` with per-sample matrices, colour ops
by broadcasting per-sample factors. Magnitude tables follow torchvision's definitions; shears and
rotations are taken about the image centre. benchmarks/augment_ops.py compares this with the
per-image torchvision pipeline.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

# --------------------------------------------------------------- ops: (x, magnitude) -> x

def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def _matrix(x: torch.Tensor, a, b, c, d, tx, ty) -> torch.Tensor:
    rows = [torch.stack([a, b, tx], 1), torch.stack([c, d, ty], 1)]
    return _affine(x, torch.stack(rows, 1))


def shear_x(x, m):
    one, zero = torch.ones_like(m), torch.zeros_like(m)
    return _matrix(x, one, m, zero, one, zero, zero)


def shear_y(x, m):
    one, zero = torch.ones_like(m), torch.zeros_like(m)
    return _matrix(x, one, zero, m, one, zero, zero)


def translate_x(x, pixels):
    one, zero = torch.ones_like(pixels), torch.zeros_like(pixels)
    return _matrix(x, one, zero, zero, one, -2 * pixels / x.shape[-1], zero)


def translate_y(x, pixels):
    one, zero = torch.ones_like(pixels), torch.zeros_like(pixels)
    return _matrix(x, one, zero, zero, one, zero, -2 * pixels / x.shape[-2])


def rotate(x, degrees):
    rad = degrees * (math.pi / 180)
    cos, sin, zero = torch.cos(rad), torch.sin(rad), torch.zeros_like(rad)
    return _matrix(x, cos, -sin, sin, cos, zero, zero)


def _grey(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


def _blend(img, other, factor):
    return (other + factor[:, None, None, None] * (img - other)).clamp(0, 1)


def brightness(x, factor):
    return _blend(x, torch.zeros_like(x), factor)


def color(x, factor):
    return _blend(x, _grey(x).expand_as(x), factor)


def contrast(x, factor):
    return _blend(x, _grey(x).mean((1, 2, 3), keepdim=True).expand_as(x), factor)


def sharpness(x, factor):
    kernel = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]], device=x.device) / 13
    c = x.shape[1]
    smooth = F.conv2d(x, kernel.expand(c, 1, 3, 3).to(x.dtype), groups=c)
    degenerate = x.clone()
    degenerate[..., 1:-1, 1:-1] = smooth  # PIL leaves the border pixels as they are
    return _blend(x, degenerate, factor)


def posterize(x, bits):
    levels = (x * 255).round().to(torch.int32)
    shift = (8 - bits.round().to(torch.int32))[:, None, None, None]
    return ((levels >> shift) << shift).to(x.dtype) / 255


def solarize(x, threshold):
    return torch.where(x >= threshold[:, None, None, None], 1 - x, x)


def autocontrast(x, _):
    low = x.amin((2, 3), keepdim=True)
    high = x.amax((2, 3), keepdim=True)
    scale = torch.where(high > low, 1 / (high - low).clamp_min(1e-8), torch.ones_like(high))
    low = torch.where(high > low, low, torch.zeros_like(low))
    return ((x - low) * scale).clamp(0, 1)


def equalize(x, _):
    """Histogram equalisation per image and channel (PIL's lookup-table rule), batched."""
    b, c, h, w = x.shape
    levels = (x * 255).round().long().flatten(2)  # B,C,HW
    hist = torch.zeros(b, c, 256, device=x.device).scatter_add_(2, levels, torch.ones_like(levels, dtype=torch.float))
    last = hist.gather(2, levels.amax(2, keepdim=True))  # count of the brightest level present
    step = torch.div(hist.sum(2, keepdim=True) - last, 255, rounding_mode="floor")
    cumulative = torch.cumsum(hist, 2)
    lut = torch.div(cumulative + torch.div(step, 2, rounding_mode="floor"), step.clamp_min(1), rounding_mode="floor")
    lut = torch.cat([torch.zeros_like(lut[..., :1]), lut[..., :-1]], 2).clamp(0, 255)
    equalised = lut.gather(2, levels).view(b, c, h, w) / 255
    return torch.where((step == 0)[..., None], x, equalised.to(x.dtype))


def invert(x, _):
    return 1 - x


def identity(x, _):
    return x


OPS: dict[str, Callable] = {
    "Identity": identity, "ShearX": shear_x, "ShearY": shear_y, "TranslateX": translate_x,
    "TranslateY": translate_y, "Rotate": rotate, "Brightness": brightness, "Color": color,
    "Contrast": contrast, "Sharpness": sharpness, "Posterize": posterize, "Solarize": solarize,
    "AutoContrast": autocontrast, "Equalize": equalize, "Invert": invert,
}
SIGNED = {"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color",
          "Contrast", "Sharpness"}
ENHANCE = {"Brightness", "Color", "Contrast", "Sharpness"}  # magnitude m means factor 1 + m


def magnitude_table(bins: int, side: int, wide: bool = False) -> dict[str, torch.Tensor]:
    """Magnitude of each op at bin 0..bins-1 (torchvision's tables)."""
    def lin(top):
        return torch.linspace(0.0, top, bins)

    return {
        "ShearX": lin(0.99 if wide else 0.3), "ShearY": lin(0.99 if wide else 0.3),
        "TranslateX": lin(32.0 if wide else 150.0 / 331.0 * side),
        "TranslateY": lin(32.0 if wide else 150.0 / 331.0 * side),
        "Rotate": lin(135.0 if wide else 30.0),
        **{op: lin(0.99 if wide else 0.9) for op in ENHANCE},
        "Posterize": 8 - (torch.arange(bins) / ((bins - 1) / (6 if wide else 4))).round(),
        "Solarize": torch.linspace(1.0, 0.0, bins),
    }


def _signed_value(op: str, magnitude: torch.Tensor, generator, device) -> torch.Tensor:
    if op in SIGNED:
        negative = torch.rand(magnitude.shape, generator=generator, device=device) < 0.5
        magnitude = torch.where(negative, -magnitude, magnitude)
    return 1 + magnitude if op in ENHANCE else magnitude


def apply_per_sample(x: torch.Tensor, op_index: torch.Tensor, magnitude: torch.Tensor,
                     names: list[str], generator: torch.Generator) -> torch.Tensor:
    """Apply op names[op_index[i]] with magnitude[i] to sample i, grouping samples by op."""
    out = x.clone()
    for k, name in enumerate(names):
        chosen = torch.nonzero(op_index == k).flatten()
        if chosen.numel() == 0 or name == "Identity":
            continue
        value = _signed_value(name, magnitude[chosen], generator, x.device)
        out[chosen] = OPS[name](x[chosen], value)
    return out


# --------------------------------------------------------------- policies

CIFAR10_POLICY = [
    (("Invert", 0.1, None), ("Contrast", 0.2, 6)), (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
    (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)), (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.5, None), ("Equalize", 0.9, None)), (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
    (("Color", 0.4, 3), ("Brightness", 0.6, 7)), (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
    (("Equalize", 0.6, None), ("Equalize", 0.5, None)), (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
    (("Color", 0.7, 7), ("TranslateX", 0.5, 8)), (("Equalize", 0.3, None), ("AutoContrast", 0.4, None)),
    (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)), (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
    (("Solarize", 0.5, 2), ("Invert", 0.0, None)), (("Equalize", 0.2, None), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.2, None), ("Equalize", 0.6, None)), (("Color", 0.9, 9), ("Equalize", 0.6, None)),
    (("AutoContrast", 0.8, None), ("Solarize", 0.2, 8)), (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
    (("Solarize", 0.4, 5), ("AutoContrast", 0.9, None)), (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.9, None), ("Solarize", 0.8, 3)), (("Equalize", 0.8, None), ("Invert", 0.1, None)),
    (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, None)),
]
_NAMES = list(OPS)
_INDEX = {name: i for i, name in enumerate(_NAMES)}


def _lookup(table: dict[str, torch.Tensor], names: list[str], op_index: torch.Tensor,
            bins: torch.Tensor) -> torch.Tensor:
    """Magnitude of each sample's (op, bin); ops without a table get 0."""
    dense = torch.zeros(len(names), len(next(iter(table.values()))), device=op_index.device)
    for i, name in enumerate(names):
        if name in table:
            dense[i] = table[name].to(op_index.device)
    return dense[op_index, bins]


def auto_augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each sample draws one of the 25 CIFAR-10 sub-policies and applies its two steps."""
    b, device = x.shape[0], x.device
    table = magnitude_table(10, x.shape[-1])
    policy = torch.randint(0, len(CIFAR10_POLICY), (b,), generator=generator, device=device)
    for step in range(2):
        names = [CIFAR10_POLICY[p][step][0] for p in range(len(CIFAR10_POLICY))]
        probs = torch.tensor([CIFAR10_POLICY[p][step][1] for p in range(len(CIFAR10_POLICY))], device=device)
        bins = torch.tensor([CIFAR10_POLICY[p][step][2] or 0 for p in range(len(CIFAR10_POLICY))], device=device)
        op_index = torch.tensor([_INDEX[n] for n in names], device=device)[policy]
        active = torch.rand(b, generator=generator, device=device) < probs[policy]
        op_index = torch.where(active, op_index, torch.full_like(op_index, _INDEX["Identity"]))
        x = apply_per_sample(x, op_index, _lookup(table, _NAMES, op_index, bins[policy]), _NAMES, generator)
    return x


RAND_OPS = ["Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness",
            "Color", "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize"]


def rand_augment(x: torch.Tensor, generator: torch.Generator, num_ops: int = 2,
                 magnitude: int = 9, bins: int = 31) -> torch.Tensor:
    table = magnitude_table(bins, x.shape[-1])
    b = x.shape[0]
    fixed_bin = torch.full((b,), magnitude, device=x.device, dtype=torch.long)
    for _ in range(num_ops):
        op_index = torch.randint(0, len(RAND_OPS), (b,), generator=generator, device=x.device)
        x = apply_per_sample(x, op_index, _lookup(table, RAND_OPS, op_index, fixed_bin), RAND_OPS, generator)
    return x


def trivial_augment(x: torch.Tensor, generator: torch.Generator, bins: int = 31) -> torch.Tensor:
    table = magnitude_table(bins, x.shape[-1], wide=True)
    b = x.shape[0]
    op_index = torch.randint(0, len(RAND_OPS), (b,), generator=generator, device=x.device)
    bin_index = torch.randint(0, bins, (b,), generator=generator, device=x.device)
    return apply_per_sample(x, op_index, _lookup(table, RAND_OPS, op_index, bin_index), RAND_OPS, generator)


SUBPOLICY_OPS = [name for name in OPS if name != "Identity"]  # the batched op set of a sub-policy


def sub_policy(x: torch.Tensor, generator: torch.Generator, steps: list[tuple[str, float, int]]) -> torch.Tensor:
    """A PBA/AutoAugment-style sub-policy: each (op, probability, magnitude bin 0..9) step is applied
    to each sample with its own draw of the probability and of the sign, at AutoAugment's magnitude
    table for this image size."""
    b, device = x.shape[0], x.device
    table = magnitude_table(10, x.shape[-1])
    for name, probability, magnitude in steps:
        active = torch.rand(b, generator=generator, device=device) < probability
        op_index = torch.where(active, torch.full((b,), _INDEX[name], device=device),
                               torch.full((b,), _INDEX["Identity"], device=device))
        bins = torch.full((b,), magnitude, device=device, dtype=torch.long)
        x = apply_per_sample(x, op_index, _lookup(table, _NAMES, op_index, bins), _NAMES, generator)
    return x
