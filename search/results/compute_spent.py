"""What a sweep spent against training every candidate once in full (the replay benchmark's
reference, search/tables/replay.py), from the seconds per epoch the sweep itself measured."""
from __future__ import annotations

from typing import Sequence

from augtune.search.results.trials import TrialRow


def epoch_seconds_by_candidate(trials: Sequence[TrialRow]) -> dict[str, list[float]]:
    """Measured seconds per epoch of every trial that trained, by candidate."""
    out: dict[str, list[float]] = {}
    for t in trials:
        if t.seconds_per_epoch is not None:
            out.setdefault(t.augmentation, []).append(t.seconds_per_epoch)
    return out


def compute_summary(trials: Sequence[TrialRow], scores: list, survivors: list[str],
                    audit_trials: Sequence[TrialRow] = (), full_epochs: int = 0,
                    candidates: Sequence[str] = (), baseline_trials: Sequence[TrialRow] = ()) -> dict[str, float]:
    """What the sweep spent (proxy screening with its racing, audit, search and baseline trials,
    expansions included; `scores` the ProxyScores) against the replay benchmark's reference: one
    full-length run of every screened candidate, at the seconds per epoch measured in this sweep
    (a candidate never trained: the mean over those that were). `candidates`: every candidate of
    the space (default: the scored ones, else the survivors)."""
    baseline_seconds = sum(t.seconds for t in baseline_trials)
    trials = list(trials)
    trial_seconds = sum(t.seconds for t in trials)
    audit_seconds = sum(t.seconds for t in audit_trials)
    audited = {t.augmentation for t in audit_trials}
    proxy_seconds = sum(s.seconds for s in scores)
    names = list(candidates) or [s.candidate for s in scores] or list(survivors)
    measured = epoch_seconds_by_candidate([*trials, *baseline_trials, *audit_trials])
    per_epoch = {c: sum(v) / len(v) for c, v in measured.items() if v}
    fallback = sum(per_epoch.values()) / len(per_epoch) if per_epoch else 0.0
    exhaustive = full_epochs * sum(per_epoch.get(c, fallback) for c in names)
    spent = trial_seconds + proxy_seconds + audit_seconds + baseline_seconds
    trained = set(survivors) | audited
    return {"trial_seconds": trial_seconds, "proxy_seconds": proxy_seconds, "audit_seconds": audit_seconds,
            "baseline_seconds": baseline_seconds, "baseline_trials": len(baseline_trials),
            "spent_seconds": spent, "trials": len(trials),
            "audit_trials": len(audit_trials),
            "candidates": len(names), "trained_candidates": len(trained),
            "pruned_candidates": len(names) - len(trained),
            "estimated_exhaustive_seconds": exhaustive,
            "estimated_seconds_saved": exhaustive - spent,
            "compute_fraction": spent / exhaustive if exhaustive > 0 else float("nan"),
            "compute_saved_fraction": (exhaustive - spent) / exhaustive if exhaustive > 0 else 0.0}
