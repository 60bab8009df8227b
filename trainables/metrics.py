"""Accuracy by shot group (many / medium / few training images per class), for long tails."""
from __future__ import annotations

import math
from typing import Sequence

import torch


def shot_groups(class_counts: Sequence[int], many_threshold: int, few_threshold: int) -> dict[str, list[int]]:
    """many: > many_threshold training images; few: < few_threshold; medium: the rest."""
    groups = {"many": [], "medium": [], "few": []}
    for cls, count in enumerate(class_counts):
        key = "many" if count > many_threshold else "few" if count < few_threshold else "medium"
        groups[key].append(cls)
    return groups


def shot_accuracy(logits: torch.Tensor, labels: torch.Tensor, class_counts: Sequence[int],
                  many_threshold: int, few_threshold: int) -> dict[str, float]:
    """Overall accuracy and accuracy over the test images of each shot group (NaN when empty)."""
    correct = logits.argmax(1) == labels
    out = {"acc": correct.float().mean().item()}
    for name, classes in shot_groups(class_counts, many_threshold, few_threshold).items():
        member = torch.isin(labels, torch.tensor(classes, dtype=labels.dtype, device=labels.device))
        out[f"{name}_acc"] = correct[member].float().mean().item() if member.any() else math.nan
    return out
