"""T.stddev: the teacher-only score of an augmentation (Wang et al., NeurIPS 2022).

For each candidate: stream shuffled crop+flip batches of the training set through the teacher
(eval mode, T = 1), together with x' = candidate(x); collect the softmax vectors of both; every
`group_batches` batches take the mean vector of the group (official: 5 x 64 -> 320 original +
320 augmented vectors); after P passes, T.stddev = mean over classes of the unbiased std of the
group means. Lower predicts a lower student test loss.

Beyond the paper: a bootstrap interval over groups, and an early stop once the ranking of all
candidates has not changed for a few passes. Screening many policies: x' of several policies goes
through the teacher in one forward (`policies_per_forward`), and *racing* drops, after each pass,
every policy whose T.stddev interval lies wholly above the current top-k's (successive halving on
the proxy itself), so the passes go to the contenders. Each candidate draws from its own generator,
seeded by its id: its score does not depend on which other candidates are scored beside it. The proxy zoo (ZOO) is computed from the same softmax
vectors, so it costs no teacher forward of its own. Candidates are scored in lock-step pass by pass on
the same data order (common random numbers), each with its own augmentation generator; the
teacher's output on the shared original view is computed once per batch, not once per candidate.
"""
from __future__ import annotations

import math
import time
import zlib
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Sequence

import numpy as np
import torch
from scipy.stats import norm

from augtune.spaces.candidates import Candidate, Context
from augtune.trainables.data import BatchFeeder, DataBundle
from augtune.trainables.engine import InputPipeline, progress_bar
from augtune.trainables.experiment_config import DistillConfig
from augtune.trainables.runner import drive_epochs
from augtune.trainables.values import apply_trial_values


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


# The zoo: teacher-only scores from the softmax vectors T.stddev already computes (p on x, q on
# x' = candidate(x), labels y), each with the direction fixed in advance that is predicted to
# mean a better student. "lower" ranks lowest first, "higher" highest first.
ZOO = {
    "t_stddev": "lower",  # the paper's: stable mean predictions across groups
    "entropy": "higher",  # mean H(q)/log C: Good-DA / CutMixPick pick high-entropy (informative) x'
    "kl": "higher",  # mean KL(p || q): how much new information x' carries for the teacher
    "agreement": "lower",  # mean [argmax p == argmax q]: the same rationale, as a rate
    "accuracy": "higher",  # mean [argmax q == y]: the teacher's targets on x' stay correct
    "low_fidelity": "lower",  # a student's val loss after a few epochs (low_fidelity_scores; not teacher-only)
}
PROXY_SCORES = tuple(ZOO)


def zoo_sums(p: torch.Tensor, q: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-batch sums of the zoo's per-image terms (float64 on the device; no sync)."""
    p, q = p.double(), q.double()
    log_p, log_q = p.clamp_min(1e-12).log(), q.clamp_min(1e-12).log()
    classes = q.shape[1]
    return {"entropy": (-(q * log_q).sum(1) / math.log(classes)).sum(),
            "kl": (p * (log_p - log_q)).sum(1).sum(),
            "agreement": (p.argmax(1) == q.argmax(1)).double().sum(),
            "accuracy": (q.argmax(1) == labels).double().sum()}


@dataclass
class _Stream:
    """Per-candidate accumulator: softmax vectors of the current group, finished group means."""

    candidate: Candidate
    generator: torch.Generator
    passes: int = 0
    raced_out: bool = False
    group_sum: Optional[torch.Tensor] = None
    group_count: int = 0
    batches_in_group: int = 0
    group_means: list = field(default_factory=list)
    seconds: float = 0.0
    zoo_totals: dict = field(default_factory=dict)
    zoo_count: int = 0

    def add_zoo(self, p: torch.Tensor, q: torch.Tensor, labels: torch.Tensor) -> None:
        for name, total in zoo_sums(p, q, labels).items():
            self.zoo_totals[name] = self.zoo_totals.get(name, 0) + total
        self.zoo_count += len(q)

    def zoo(self) -> dict[str, float]:
        return {name: float(total) / self.zoo_count for name, total in self.zoo_totals.items()}

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
    zoo: dict = field(default_factory=dict)  # the other ZOO scores, by name
    raced_out: bool = False  # dropped by racing after `passes` passes (its score is from those)

    def value(self, name: str) -> float:
        return self.t_stddev if name == "t_stddev" else self.zoo.get(name, float("nan"))

    @classmethod
    def from_row(cls, row: dict) -> "ProxyScore":
        """The inverse of `as_row` (the sweep state and the proxy's JSON keep rows)."""
        return cls(**row)

    def as_row(self) -> dict:
        return {"rank": self.rank, "candidate": self.candidate, "t_stddev": self.t_stddev,
                "low": self.low, "high": self.high, "groups": self.groups, "passes": self.passes,
                "seconds": self.seconds, "zoo": dict(self.zoo), "raced_out": self.raced_out}


def rank_scores(scores: list[ProxyScore], by: str = "t_stddev") -> list[ProxyScore]:
    """Best first by the proxy `by` in its ZOO direction (NaN last, ties by name); sets `rank`."""
    sign = 1.0 if ZOO[by] == "lower" else -1.0
    scores = sorted(scores, key=lambda s: (math.isnan(s.value(by)), sign * np.nan_to_num(s.value(by)),
                                           s.candidate))
    for rank, score in enumerate(scores, 1):
        score.rank = rank
    return scores


def _probabilities(teacher_logits: Callable, batches: list[torch.Tensor]) -> list[torch.Tensor]:
    """One teacher forward over several batches, split back into per-batch softmax vectors."""
    probs = torch.softmax(teacher_logits(torch.cat(batches)), dim=1)
    return list(probs.split([len(b) for b in batches]))


@dataclass
class ForwardCounts:
    """What the teacher was asked to do during a screen: forwards and images, on x and on x'."""

    forwards_on_x: int = 0
    images_on_x: int = 0
    forwards_on_augmented: int = 0
    images_on_augmented: int = 0
    batches: int = 0  # training batches drawn (each one's x is forwarded once, for every candidate)


def stream_seed(seed: int, candidate_id: str) -> int:
    """A candidate's own augmentation seed: the same whichever candidates are scored beside it."""
    return (seed * 1_000_003 + zlib.crc32(candidate_id.encode())) % 2**62


def jackknife_interval(group_means: np.ndarray, z: float) -> tuple[float, float]:
    """T.stddev +- z jackknife standard errors over groups: cheap enough to race hundreds of
    candidates after every pass (the BCa bootstrap is kept for the reported interval)."""
    k = len(group_means)
    estimate = t_stddev(group_means)
    if k < 3:
        return -math.inf, math.inf
    leave_one_out = np.array([t_stddev(np.delete(group_means, i, axis=0)) for i in range(k)])
    se = math.sqrt((k - 1) / k * ((leave_one_out - leave_one_out.mean()) ** 2).sum())
    return estimate - z * se, estimate + z * se


def race(streams: Sequence["_Stream"], keep: int, z: float) -> list["_Stream"]:
    """The streams to drop: those whose interval's low end lies above the high end of the
    `keep`-th best (by T.stddev) still running. Never drops one of the current top `keep`."""
    running = [s for s in streams if not s.raced_out]
    if len(running) <= keep:
        return []
    intervals = {id(s): jackknife_interval(np.asarray(s.group_means), z) for s in running}
    by_estimate = sorted(running, key=lambda s: t_stddev(np.asarray(s.group_means)))
    bar = max(intervals[id(s)][1] for s in by_estimate[:keep])
    return [s for s in by_estimate[keep:] if intervals[id(s)][0] > bar]


def _ranking(streams: Sequence[_Stream]) -> tuple[str, ...]:
    scores = [(t_stddev(np.asarray(s.group_means)), s.candidate.id) for s in streams]
    return tuple(cid for _, cid in sorted(scores))


def score_candidates(teacher: torch.nn.Module, candidates: Sequence[Candidate], data: DataBundle,
                     device: torch.device, *, passes: int = 10, group_batches: int = 5, batch_size: int = 64,
                     bootstrap: int = 1000, confidence: float = 0.95, stop_when_stable: bool = False,
                     min_passes: int = 2, stable_passes: int = 2, seed: int = 0,
                     extra_scorers: Optional[Mapping[str, Callable]] = None, progress: bool = True,
                     bf16: bool = True, forward_batches: Optional[int] = None,
                     rank_by: str = "t_stddev", policies_per_forward: int = 1, race_top_k: int = 0,
                     race_min_passes: int = 2, race_z: float = 2.0,
                     counts: Optional[ForwardCounts] = None) -> list[ProxyScore]:
    """Score every candidate; returns them ranked by `rank_by` (a ZOO name; default T.stddev,
    lowest first), the zoo's other scores in each ProxyScore.zoo. The teacher sees
    `forward_batches` batches (default: one group) per forward: the original view x once for all
    candidates, then the candidates' x', `policies_per_forward` candidates in one forward.
    `race_top_k` > 0: after each pass from `race_min_passes` on, drop every candidate whose
    T.stddev interval (+- `race_z` jackknife errors) lies wholly above the top `race_top_k`'s.
    `counts`, when given, receives the teacher's forwards and images."""
    forward_batches = forward_batches or group_batches
    counts = counts if counts is not None else ForwardCounts()
    pipeline = InputPipeline(data, device)
    teacher_logits = pipeline.scorer(teacher, bf16)
    scorers = {"teacher": teacher_logits, **(extra_scorers or {})}
    feeder = BatchFeeder(data.train, batch_size, device, drop_last=len(data.train) > batch_size, seed=seed)
    streams = [_Stream(c, torch.Generator(device=device).manual_seed(stream_seed(seed, c.id))) for c in candidates]
    contexts = [Context(stream.generator, scorers, pipeline.padding, sources=[]) for stream in streams]
    base_generator = torch.Generator(device=device)
    bar = progress_bar(total=passes * len(candidates) * len(feeder), desc="T.stddev", unit="batch",
                       disable=not progress)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def forward(views: list[torch.Tensor], to_x: bool) -> list[torch.Tensor]:
        if to_x:
            counts.forwards_on_x += 1
            counts.images_on_x += sum(len(v) for v in views)
        else:
            counts.forwards_on_augmented += 1
            counts.images_on_augmented += sum(len(v) for v in views)
        return _probabilities(teacher_logits, views)

    def flush(originals: list[torch.Tensor], labels: list[torch.Tensor], augmented: list[list[tuple]]) -> None:
        """Forward the original view once for all candidates, then the candidates' x' in forwards
        of `policies_per_forward` candidates; the original view's cost is shared equally between
        the running candidates, a shared forward's cost by images."""
        if not originals:
            return
        running = [(stream, views) for stream, views in zip(streams, augmented) if views]
        start = time.perf_counter()
        original_probs = forward(originals, to_x=True)
        sync()
        shared = (time.perf_counter() - start) / max(len(running), 1)
        for first in range(0, len(running), policies_per_forward):
            chunk = running[first:first + policies_per_forward]
            start = time.perf_counter()
            probs = forward([view for _, views in chunk for view, _ in views], to_x=False)
            sync()
            images = sum(len(view) for _, views in chunk for view, _ in views)
            seconds_per_image = (time.perf_counter() - start) / max(images, 1)
            for stream, views in chunk:
                start = time.perf_counter()
                own, probs = probs[:len(views)], probs[len(views):]
                for p_x, p_aug, y, (view, source) in zip(original_probs, own, labels, views):
                    stream.add(torch.cat([p_x, p_aug]), group_batches)
                    # x'_i is paired with the x it was made from (a pick draws some x more than once)
                    stream.add_zoo(p_x if source is None else p_x[source], p_aug, y if source is None else y[source])
                sync()
                stream.seconds += (time.perf_counter() - start + shared
                                   + seconds_per_image * sum(len(view) for view, _ in views))
                views.clear()
        originals.clear()
        labels.clear()

    history: list[tuple[str, ...]] = []
    done_passes = 0
    with torch.no_grad():
        for pass_index in range(passes):
            # the same shuffled crop+flip batches for every candidate in this pass (common random numbers)
            feeder.generator.manual_seed(seed * 7919 + pass_index)
            base_generator.manual_seed(seed * 7919 + pass_index)
            originals: list[torch.Tensor] = []
            labels: list[torch.Tensor] = []
            augmented: list[list[tuple]] = [[] for _ in streams]  # (x', the x index of each, or None)
            running = [(stream, context, views) for stream, context, views in zip(streams, contexts, augmented)
                       if not stream.raced_out]
            for images, y in feeder:
                start = time.perf_counter()
                x = pipeline.base_augment(pipeline.to_unit(images), base_generator)
                originals.append(x)
                labels.append(y)
                counts.batches += 1
                shared = (time.perf_counter() - start) / len(running)
                for stream, context, views in running:
                    start = time.perf_counter()
                    context.sources.clear()
                    views.append((stream.candidate.apply(x, context), context.sources[-1] if context.sources else None))
                    stream.seconds += time.perf_counter() - start + shared
                    bar.update(1)
                if len(originals) == forward_batches:
                    flush(originals, labels, augmented)
            flush(originals, labels, augmented)
            done_passes = pass_index + 1
            for stream, _, _ in running:
                stream.passes = done_passes
            if race_top_k and done_passes >= race_min_passes and done_passes < passes:
                dropped = race(streams, race_top_k, race_z)
                for stream in dropped:
                    stream.raced_out = True
                bar.update(len(dropped) * (passes - done_passes) * len(feeder))  # work no longer to do
            history.append(_ranking(streams))
            if (stop_when_stable and done_passes >= max(min_passes, stable_passes + 1)
                    and len(set(history[-(stable_passes + 1):])) == 1):
                break
    bar.close()
    scores = []
    for i, stream in enumerate(streams):
        means = np.asarray(stream.group_means)
        low, high = bootstrap_interval(means, bootstrap, confidence, seed=seed + i)
        scores.append(ProxyScore(stream.candidate.id, t_stddev(means), low, high, len(means), stream.passes,
                                 stream.seconds, zoo=stream.zoo(), raced_out=stream.raced_out))
    return rank_scores(scores, rank_by)


TABLE_ROWS = 25  # a longer table (a screened policy space) shows its top rows; the CSV holds all


def format_table(scores: Sequence[ProxyScore]) -> str:
    """Ranked rows: T.stddev with its interval, then the zoo side by side (the same passes); the
    top TABLE_ROWS of a longer table, and how many racing dropped."""
    hidden = max(0, len(scores) - TABLE_ROWS - 5)  # never hide just a handful
    raced = sum(s.raced_out for s in scores)
    scores = scores[:len(scores) - hidden]
    width = max([len(s.candidate) for s in scores] + [9])
    zoo = [name for name in ZOO if name != "t_stddev" and any(name in s.zoo for s in scores)]
    lines = [f"{'rank':>4}  {'candidate':<{width}}  {'T.stddev':>10}  {'interval':>23}  "
             + "".join(f"{name + ('+' if ZOO[name] == 'higher' else '-'):>11}" for name in zoo) + f"{'seconds':>9}"]
    for s in scores:
        interval = f"[{s.low:.6f}, {s.high:.6f}]"
        lines.append(f"{s.rank:>4}  {s.candidate:<{width}}  {s.t_stddev:>10.6f}  {interval:>23}  "
                     + "".join(f"{s.zoo.get(name, float('nan')):>11.4f}" for name in zoo) + f"{s.seconds:>9.2f}"
                     + (f"  raced out after {s.passes} passes" if s.raced_out else ""))
    if hidden:
        lines.append(f"... {hidden} more rows in proxy.csv")
    if raced:
        lines.append(f"racing dropped {raced} candidates before the last pass (clearly worse than the top's)")
    if zoo:
        lines.append("zoo (same forward passes): + higher predicts a better student, - lower")
    return "\n".join(lines)


def low_fidelity_scores(cfg, data: DataBundle, teacher_path, epochs: int, candidates: Sequence[Candidate],
                        progress: bool = True) -> dict[str, tuple[float, float]]:
    """The zoo's one student score: each candidate's student (the config's method, seed and
    hyperparameters) trained `epochs` epochs of its full schedule, scored by its validation loss
    there (test loss without a validation split) — what the first rung of successive halving
    sees. Returns {candidate: (score, seconds)}."""
    method = cfg.method
    out = {}
    bar = progress_bar(total=epochs * len(candidates), desc="low-fidelity students", unit="epoch",
                       disable=not progress)
    for candidate in candidates:
        trial_cfg = DistillConfig.model_validate(apply_trial_values(cfg.distill_dict(), {"augmentation": candidate.id},
                                                                    method.name))
        start = time.perf_counter()
        runner = method.runner(trial_cfg, data=data, seed=cfg.seed, teacher_checkpoint=str(teacher_path))
        for metrics in drive_epochs(runner, until=epochs):
            bar.update(1)
        out[candidate.id] = (float(metrics.get("val_loss", metrics["test_loss"])), time.perf_counter() - start)
    bar.close()
    return out
