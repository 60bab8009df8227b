"""Self-supervised label augmentation (Lee, Hwang & Shin, ICML 2020): joint labels over
(class, transform) pairs, aggregated inference, and self-distillation into a single head."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from augtune.trainables.losses.kd import kl_at_temperature


def joint_labels(labels: torch.Tensor, num_transforms: int) -> torch.Tensor:
    """Labels of the B*M expanded batch, transform-major: row j*B + b is t_j(x_b), label y_b*M + j."""
    m = num_transforms
    j = torch.arange(m, device=labels.device).repeat_interleave(len(labels))
    return labels.repeat(m) * m + j


def aggregate_logits(joint_logits: torch.Tensor, num_transforms: int) -> torch.Tensor:
    """s_i(x) = (1/M) sum_j z_{i,j}(t_j(x)). `joint_logits` is (M*B) x (C*M), transform-major rows;
    column i*M + j is unit (class i, transform j). Each copy is read only through its own columns."""
    m = num_transforms
    b = joint_logits.shape[0] // m
    c = joint_logits.shape[1] // m
    per_copy = joint_logits.view(m, b, c, m)  # copy j, sample, class i, transform column k
    own = per_copy.diagonal(dim1=0, dim2=3)  # b, c, m: copy j read through column k = j
    return own.mean(-1)


def single_logits(joint_logits_identity: torch.Tensor, num_transforms: int) -> torch.Tensor:
    """SLA+SI: the identity copy through the identity columns z_{i,1}."""
    return joint_logits_identity[:, ::num_transforms]


def sla_loss(joint_logits: torch.Tensor, labels: torch.Tensor, num_transforms: int,
             large_loss: bool = False) -> torch.Tensor:
    """Mean CE over the B*M rows (= the paper's 1/M sum_j); times M with `large_loss`."""
    loss = F.cross_entropy(joint_logits.float(), joint_labels(labels, num_transforms))
    return loss * num_transforms if large_loss else loss


def self_distillation_loss(single_head_logits: torch.Tensor, aggregated: torch.Tensor, labels: torch.Tensor,
                           temperature: float = 1.0, beta: float = 1.0) -> torch.Tensor:
    """beta * CE(u(f(x)), y) + T^2 KL(softmax(s/T).detach() || softmax(u/T)); the aggregated
    target is detached, so no gradient reaches the joint head through it."""
    return (beta * F.cross_entropy(single_head_logits.float(), labels)
            + kl_at_temperature(single_head_logits, aggregated.detach(), temperature))
