"""MoCo instance discrimination with same-class queue negatives masked out (SSD, stage I)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_contrastive_loss(query: torch.Tensor, key: torch.Tensor, queue: torch.Tensor,
                            queue_labels: torch.Tensor, labels: torch.Tensor,
                            temperature: float = 0.2) -> torch.Tensor:
    """InfoNCE over [q.k+, q.queue] / tau with target 0; a queue entry whose label equals the
    query's label is not a negative (its logit is -inf, so it contributes nothing).
    `query`, `key` (B x D) and `queue` (K x D) are L2-normalised; `key` carries no gradient."""
    positive = (query * key).sum(1, keepdim=True)
    negatives = query @ queue.t()
    negatives = negatives.masked_fill(queue_labels[None, :] == labels[:, None], float("-inf"))
    logits = torch.cat([positive, negatives], 1).float() / temperature
    return F.cross_entropy(logits, torch.zeros(len(query), dtype=torch.long, device=query.device))
