"""Distillation losses of the Good-DA recipe (Wang et al., NeurIPS 2022)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def kl_at_temperature(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(t/T) || softmax(s/T)), mean over the batch (Hinton et al.)."""
    log_student = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    return F.kl_div(log_student, log_teacher, log_target=True, reduction="batchmean") * temperature**2


def good_da_kd_loss(student_x: torch.Tensor, teacher_x: torch.Tensor, labels: torch.Tensor,
                    student_aug: torch.Tensor | None, teacher_aug: torch.Tensor | None, *,
                    temperature: float = 4.0, ce_weight: float = 0.1, kd_weight: float = 0.9) -> torch.Tensor:
    """ce_weight * CE(s(x), y) + kd_weight * [KL_T(t(x) || s(x)) + KL_T(t(x') || s(x'))].
    The augmented view x' has no label term: its targets are the teacher's own outputs."""
    loss = ce_weight * F.cross_entropy(student_x.float(), labels)
    kd = kl_at_temperature(student_x, teacher_x, temperature)
    if student_aug is not None:
        kd = kd + kl_at_temperature(student_aug, teacher_aug, temperature)
    return loss + kd_weight * kd
