"""The SLA transform sets t_1..t_M (t_1 = identity), applied to whole batches on the device.
The expanded batch is transform-major: rows j*B..(j+1)*B-1 hold t_j of every sample."""
from __future__ import annotations

import torch

# channel orders in the SLA paper's order: RGB, RBG, GRB, GBR, BRG, BGR
COLOUR_ORDERS = [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)]


def _rotations(x: torch.Tensor) -> list[torch.Tensor]:
    return [torch.rot90(x, k, dims=(2, 3)) for k in range(4)]


def _colour_permutations(x: torch.Tensor) -> list[torch.Tensor]:
    if x.shape[1] != 3:
        raise ValueError(f"colour permutation needs 3-channel images, got {x.shape[1]}; use sla.transforms: rotation")
    return [x[:, list(order)] for order in COLOUR_ORDERS]


def expand(x: torch.Tensor, transforms: str) -> torch.Tensor:
    """(M*B) x C x H x W, transform-major. `transforms`: rotation (M=4), colour (M=6),
    rotation_colour (M=24: rotation k outer, colour order inner)."""
    if transforms == "rotation":
        copies = _rotations(x)
    elif transforms == "colour":
        copies = _colour_permutations(x)
    elif transforms == "rotation_colour":
        copies = [c for r in _rotations(x) for c in _colour_permutations(r)]
    else:
        raise ValueError(f"unknown SLA transform set {transforms!r}; use rotation, colour or rotation_colour")
    return torch.cat(copies)


NUM_TRANSFORMS = {"rotation": 4, "colour": 6, "rotation_colour": 24}
