"""Batched augmentation ops with per-sample randomness, on whatever device the batch lives.

Functional core: each op takes float images B x C x H x W in [0, 1] and a `torch.Generator` on
the same device, draws an independent random setting for every sample, and returns new images.
Mixing ops also return the partner index and the weight kept from each original image, so a loss
can use mixed labels (the KD recipe of Wang et al. 2022 ignores them).

torchvision's v2 transforms draw one setting per batch; the official Good-DA code does too. Here
every sample gets its own flip, crop offset, hole, box and lambda.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class Mixed:
    images: torch.Tensor
    partner: torch.Tensor  # index of the image mixed into each sample
    lam: torch.Tensor  # fraction of each sample that is still its own image


def _uniform(n: int, generator: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=device)


def flip_draws(n: int, generator: torch.Generator, device, p: float = 0.5) -> torch.Tensor:
    """Which of n samples random_flip mirrors (one uniform draw each)."""
    return _uniform(n, generator, device) < p


def flip_where(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def random_flip(x: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    return flip_where(x, flip_draws(x.shape[0], generator, x.device, p))


def crop_offsets(n: int, generator: torch.Generator, padding: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The (row, column) offsets in [0, 2 padding] random_crop cuts n samples at."""
    offset_y = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=device)
    offset_x = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=device)
    return offset_y, offset_x


def crop_at(x: torch.Tensor, padding: int, offset_y: torch.Tensor, offset_x: torch.Tensor) -> torch.Tensor:
    """Zero-pad by `padding` and cut each sample's H x W window at its own offset."""
    b, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    rows = (offset_y[:, None] + torch.arange(h, device=x.device))[:, :, None]  # B,H,1
    cols = (offset_x[:, None] + torch.arange(w, device=x.device))[:, None, :]  # B,1,W
    batch = torch.arange(b, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


def random_crop(x: torch.Tensor, generator: torch.Generator, padding: int) -> torch.Tensor:
    """Zero-pad by `padding` and cut an H x W window at a per-sample offset."""
    if padding == 0:
        return x
    return crop_at(x, padding, *crop_offsets(x.shape[0], generator, padding, x.device))


def _box_mask(h: int, w: int, top, bottom, left, right) -> torch.Tensor:
    """Boolean B x H x W masks of the boxes [top, bottom) x [left, right), per sample."""
    ys = torch.arange(h, device=top.device)[None, :, None]
    xs = torch.arange(w, device=top.device)[None, None, :]
    return ((ys >= top[:, None, None]) & (ys < bottom[:, None, None])
            & (xs >= left[:, None, None]) & (xs < right[:, None, None]))


def cutout(x: torch.Tensor, generator: torch.Generator, size: int) -> torch.Tensor:
    """One size x size hole of zeros per sample, centred anywhere, clipped at the borders."""
    b, _, h, w = x.shape
    top = torch.randint(0, h, (b,), generator=generator, device=x.device) - size // 2
    left = torch.randint(0, w, (b,), generator=generator, device=x.device) - size // 2
    mask = _box_mask(h, w, top, top + size, left, left + size)
    return x.masked_fill(mask[:, None], 0.0)


def derangement(n: int, generator: torch.Generator, device) -> torch.Tensor:
    """A random permutation without fixed points: each sample is paired with another one."""
    if n < 2:
        return torch.zeros(n, dtype=torch.long, device=device)
    order = torch.randperm(n, generator=generator, device=device)
    partner = torch.empty_like(order)
    partner[order] = order.roll(-1)  # follow a random cycle through all samples
    return partner


def _beta(alpha: float, n: int, generator: torch.Generator, device) -> torch.Tensor:
    # Beta(a, a) from two Gammas; torch's Gamma sampler takes no generator, so use the
    # inverse-CDF-free route via uniforms for alpha == 1 (the recipe's value) and Gamma otherwise.
    if alpha == 1.0:
        return _uniform(n, generator, device)
    u = torch.distributions.Gamma(torch.full((n,), alpha, device=device), 1.0)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=device))
    with torch.random.fork_rng(devices=[device] if torch.device(device).type == "cuda" else []):
        torch.manual_seed(seed)
        a, b = u.sample(), u.sample()
    return a / (a + b)


def mixup(x: torch.Tensor, generator: torch.Generator, alpha: float = 1.0) -> Mixed:
    lam = _beta(alpha, x.shape[0], generator, x.device)
    partner = derangement(x.shape[0], generator, x.device)
    weight = lam[:, None, None, None]
    return Mixed(weight * x + (1 - weight) * x[partner], partner, lam)


def cutmix(x: torch.Tensor, generator: torch.Generator, alpha: float = 1.0) -> Mixed:
    """Paste a box of a partner image into each sample. lambda ~ Beta(a, a); the box side ratio
    is sqrt(1 - lambda), its centre uniform, the box clipped; lambda is then reset to the exact
    fraction of the sample's own pixels that survive."""
    b, _, h, w = x.shape
    lam = _beta(alpha, b, generator, x.device)
    ratio = torch.sqrt(1.0 - lam)
    cut_h, cut_w = (h * ratio).floor(), (w * ratio).floor()
    centre_y = torch.randint(0, h, (b,), generator=generator, device=x.device).float()
    centre_x = torch.randint(0, w, (b,), generator=generator, device=x.device).float()
    top = (centre_y - cut_h / 2).floor().clamp(0, h)
    bottom = (centre_y + cut_h / 2).floor().clamp(0, h)
    left = (centre_x - cut_w / 2).floor().clamp(0, w)
    right = (centre_x + cut_w / 2).floor().clamp(0, w)
    box = _box_mask(h, w, top, bottom, left, right)
    partner = derangement(b, generator, x.device)
    mixed = torch.where(box[:, None], x[partner], x)
    exact_lam = 1.0 - box.flatten(1).float().mean(1)
    return Mixed(mixed, partner, exact_lam)


def normalised_entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of softmax(logits / T) divided by log C, in [0, 1]."""
    log_p = torch.log_softmax(logits.float() / temperature, dim=1)
    entropy = -(log_p.exp() * log_p).sum(1)
    return entropy / torch.log(torch.tensor(float(logits.shape[1]), device=logits.device))


def select_by_entropy(entropy: torch.Tensor, keep: Optional[int] = None,
                      threshold: Optional[float] = None) -> torch.Tensor:
    """Indices of the `keep` highest-entropy samples, or of all with entropy >= threshold
    (the single highest one if none passes, so a batch never comes out empty)."""
    if (keep is None) == (threshold is None):
        raise ValueError("give exactly one of keep and threshold")
    if keep is not None:
        return torch.topk(entropy, min(keep, entropy.numel())).indices
    chosen = torch.nonzero(entropy >= threshold).flatten()
    return chosen if chosen.numel() else entropy.argmax().reshape(1)
