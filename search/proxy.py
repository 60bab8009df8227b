"""T.stddev: the teacher-only score of an augmentation (Wang et al., NeurIPS 2022).

For each candidate: stream shuffled crop+flip batches of the training set through the teacher
(eval mode, T = 1), together with x' = candidate(x); collect the softmax vectors of both; every
`group_batches` batches take the mean vector of the group (official: 5 x 64 -> 320 original +
320 augmented vectors); after P passes, T.stddev = mean over classes of the unbiased std of the
group means. Lower predicts a lower student test loss.

Beyond the paper: a bootstrap interval over groups, and an early stop once the ranking of all
candidates has not changed for a few passes. Candidates are scored in lock-step pass by pass on
the same data order (common random numbers), each with its own augmentation generator; the
teacher's output on the shared original view is computed once per batch, not once per candidate.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from augtune.spaces.candidates import Candidate, Context
from augtune.trainables.data import BatchFeeder, DataBundle
from augtune.trainables.engine import InputPipeline


def t_stddev(group_means: np.ndarray) -> float:
    """(1/C) sum_c std_k(mean_k[c]) with the unbiased std over the K group means."""
    if len(group_means) < 2:
        return float("nan")
    return float(np.std(group_means, axis=0, ddof=1).mean())


def bootstrap_interval(group_means: np.ndarray, resamples: int, confidence: float,
                       seed: int = 0) -> tuple[float, float]:
    """BCa bootstrap interval of T.stddev over groups drawn with replacement (Efron 1987).
    A plain percentile interval sits low here: resampled std estimates are biased downwards;
    the bias correction z0 and the jackknife acceleration a re-centre it."""
    from scipy.stats import norm

    k = len(group_means)
    if resamples == 0 or k < 3:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, k, size=(resamples, k))
    stats = group_means[picks].std(axis=1, ddof=1).mean(axis=1)  # R resampled T.stddev values
    estimate = t_stddev(group_means)
    below = np.clip(np.mean(stats < estimate), 1 / resamples, 1 - 1 / resamples)
    z0 = norm.ppf(below)
    leave_one_out = np.array([t_stddev(np.delete(group_means, i, axis=0)) for i in range(k)])
    spread = leave_one_out.mean() - leave_one_out
    denominator = 6 * (spread**2).sum() ** 1.5
    acceleration = (spread**3).sum() / denominator if denominator > 0 else 0.0
    quantiles = []
    for alpha in ((1 - confidence) / 2, (1 + confidence) / 2):
        z = z0 + norm.ppf(alpha)
        quantiles.append(norm.cdf(z0 + z / (1 - acceleration * z)))
    return float(np.quantile(stats, quantiles[0])), float(np.quantile(stats, quantiles[1]))


@dataclass
class _Stream:
    """Per-candidate accumulator: softmax vectors of the current group, finished group means."""

    candidate: Candidate
    generator: torch.Generator
    group_sum: Optional[torch.Tensor] = None
    group_count: int = 0
    batches_in_group: int = 0
    group_means: list = field(default_factory=list)
    seconds: float = 0.0

    def add(self, probs: torch.Tensor, group_batches: int) -> None:
        total = probs.double().sum(0)
        self.group_sum = total if self.group_sum is None else self.group_sum + total
        self.group_count += len(probs)
        self.batches_in_group += 1
        if self.batches_in_group == group_batches:
            self.group_means.append((self.group_sum / self.group_count).cpu().numpy())
            self.group_sum, self.group_count, self.batches_in_group = None, 0, 0


@dataclass
class ProxyScore:
    candidate: str
    t_stddev: float
    low: float
    high: float
    groups: int
    passes: int
    seconds: float
    rank: int = 0

    def as_row(self) -> dict:
        return {"rank": self.rank, "candidate": self.candidate, "t_stddev": self.t_stddev,
                "low": self.low, "high": self.high, "groups": self.groups, "passes": self.passes,
                "seconds": self.seconds}


def _probabilities(teacher_logits: Callable, batches: list[torch.Tensor]) -> list[torch.Tensor]:
    """One teacher forward over several batches, split back into per-batch softmax vectors."""
    probs = torch.softmax(teacher_logits(torch.cat(batches)), dim=1)
    return list(probs.split([len(b) for b in batches]))


def _ranking(streams: Sequence[_Stream]) -> tuple[str, ...]:
    scores = [(t_stddev(np.asarray(s.group_means)), s.candidate.id) for s in streams]
    return tuple(cid for _, cid in sorted(scores))


def score_candidates(teacher: torch.nn.Module, candidates: Sequence[Candidate], data: DataBundle,
                     device: torch.device, *, passes: int = 10, group_batches: int = 5, batch_size: int = 64,
                     bootstrap: int = 1000, confidence: float = 0.95, stop_when_stable: bool = False,
                     min_passes: int = 2, stable_passes: int = 2, seed: int = 0,
                     extra_scorers: Optional[Mapping[str, Callable]] = None, progress: bool = True,
                     bf16: bool = True, forward_batches: Optional[int] = None) -> list[ProxyScore]:
    """Score every candidate; returns them ranked by T.stddev (lowest first). The teacher sees
    `forward_batches` batches (default: one group) per forward: the original view x once for all
    candidates, then each candidate's x'."""
    forward_batches = forward_batches or group_batches
    pipeline = InputPipeline(data, device)
    teacher_logits = pipeline.scorer(teacher, bf16)
    scorers = {"teacher": teacher_logits, **(extra_scorers or {})}
    feeder = BatchFeeder(data.train, batch_size, device, drop_last=len(data.train) > batch_size, seed=seed)
    streams = [_Stream(c, torch.Generator(device=device).manual_seed(seed * 100_003 + i))
               for i, c in enumerate(candidates)]
    contexts = [Context(stream.generator, scorers, pipeline.padding) for stream in streams]
    base_generator = torch.Generator(device=device)
    bar = tqdm(total=passes * len(candidates) * len(feeder), desc="T.stddev", unit="batch",
               disable=not progress, dynamic_ncols=True)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def flush(originals: list[torch.Tensor], augmented: list[list[torch.Tensor]]) -> None:
        """Forward the original view once for all candidates, each candidate's x' apart; the
        original view's cost is shared equally between the candidates."""
        if not originals:
            return
        start = time.perf_counter()
        original_probs = _probabilities(teacher_logits, originals)
        sync()
        shared = (time.perf_counter() - start) / len(streams)
        for stream, views in zip(streams, augmented):
            start = time.perf_counter()
            for p_x, p_aug in zip(original_probs, _probabilities(teacher_logits, views)):
                stream.add(torch.cat([p_x, p_aug]), group_batches)
            sync()
            stream.seconds += time.perf_counter() - start + shared
            views.clear()
        originals.clear()

    history: list[tuple[str, ...]] = []
    done_passes = 0
    with torch.no_grad():
        for pass_index in range(passes):
            # the same shuffled crop+flip batches for every candidate in this pass (common random numbers)
            feeder.generator.manual_seed(seed * 7919 + pass_index)
            base_generator.manual_seed(seed * 7919 + pass_index)
            originals: list[torch.Tensor] = []
            augmented: list[list[torch.Tensor]] = [[] for _ in streams]
            for images, _ in feeder:
                start = time.perf_counter()
                x = pipeline.base_augment(pipeline.to_unit(images), base_generator)
                originals.append(x)
                shared = (time.perf_counter() - start) / len(streams)
                for stream, context, views in zip(streams, contexts, augmented):
                    start = time.perf_counter()
                    views.append(stream.candidate.apply(x, context))
                    stream.seconds += time.perf_counter() - start + shared
                    bar.update(1)
                if len(originals) == forward_batches:
                    flush(originals, augmented)
            flush(originals, augmented)
            done_passes = pass_index + 1
            history.append(_ranking(streams))
            if (stop_when_stable and done_passes >= max(min_passes, stable_passes + 1)
                    and len(set(history[-(stable_passes + 1):])) == 1):
                break
    bar.close()
    scores = []
    for i, stream in enumerate(streams):
        means = np.asarray(stream.group_means)
        low, high = bootstrap_interval(means, bootstrap, confidence, seed=seed + i)
        scores.append(ProxyScore(stream.candidate.id, t_stddev(means), low, high, len(means), done_passes,
                                 stream.seconds))
    scores.sort(key=lambda s: (np.nan_to_num(s.t_stddev, nan=np.inf), s.candidate))
    for rank, score in enumerate(scores, 1):
        score.rank = rank
    return scores


def format_table(scores: Sequence[ProxyScore]) -> str:
    width = max([len(s.candidate) for s in scores] + [9])
    lines = [f"{'rank':>4}  {'candidate':<{width}}  {'T.stddev':>10}  {'interval':>23}  {'seconds':>8}"]
    for s in scores:
        interval = f"[{s.low:.6f}, {s.high:.6f}]"
        lines.append(f"{s.rank:>4}  {s.candidate:<{width}}  {s.t_stddev:>10.6f}  {interval:>23}  {s.seconds:>8.2f}")
    return "\n".join(lines)
