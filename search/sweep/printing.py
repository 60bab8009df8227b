"""What the sweep prints: the trial table, the audit table, the compute line, the best trial."""
from __future__ import annotations

import math
from typing import Optional

from augtune.search.selection.metric import metric_sign
from augtune.search.selection.prune import AuditOutcome
from augtune.search.results.tracking import Tracker, runs_view_url
from augtune.search.results.trials import TrialRow


def _cell(value: Optional[float]) -> str:
    return f"{value:.4f}" if value is not None and math.isfinite(value) else "-"


def format_trials(trials: list[TrialRow], scores: dict[str, float], metric: str = "val_loss") -> str:
    """The trial table, best first by the selection metric; test columns shown beside it."""
    width = max([len(t.augmentation or "") for t in trials] + [12])
    lines = [f"{'augmentation':<{width}}  {'T.stddev':>9}  {'epochs':>6}  {'val_loss':>8}  {'val_acc':>7}  "
             f"{'test_loss':>9}  {'test_acc':>8}  hyperparameters"]
    sign = metric_sign(metric)
    for t in sorted(trials, key=lambda t: (t.metric(metric) is None, sign * (t.metric(metric) or 0))):
        hyper = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.hyperparameters.items())
        score = scores.get(t.augmentation)  # none when nothing was scored (prune mode fixed)
        lines.append(f"{t.augmentation:<{width}}  {'-' if score is None else f'{score:.6f}':>9}  "
                     f"{t.epochs:>6}  {_cell(t.val_loss):>8}  {_cell(t.val_acc):>7}  "
                     f"{_cell(t.test_loss):>9}  {_cell(t.test_acc):>8}  {hyper or '-'}"
                     + ("  (diverged)" if t.diverged else ""))
    return "\n".join(lines)


def describe_best(best: TrialRow, metric: str) -> str:
    trained = "; an audit trial at the config's hyperparameters" if best.phase == "audit" else ""
    line = f"best augmentation: {best.augmentation}  (chosen by {metric} = {best.metric(metric):.4f}{trained}"
    if metric.startswith("val_"):
        tests = [f"{k} = {best.metric(k):.4f}" for k in ("test_loss", "test_acc") if best.metric(k) is not None]
        return line + (f"; held-out test: {', '.join(tests)})" if tests else ")")
    return line + ")\n" + TEST_SELECTION_WARNING


TEST_SELECTION_WARNING = ("warning: trials were chosen by a test metric (search.select_on_test); the reported best "
                          "score is optimistically biased. Choose by val_loss for an unbiased test figure.")


def format_audit(outcome: AuditOutcome) -> str:
    width = max([len(c) for c in outcome.values] + [9])
    sign = metric_sign(outcome.metric)
    lines = [f"{'candidate':<{width}}  {'role':<8}  {'proxy rank':>10}  {'mean ' + outcome.metric:>13}  seeds"]
    for c in sorted(outcome.values, key=lambda c: sign * outcome.mean(c)):
        role = "kept" if c in outcome.kept else ("sentinel" if c in outcome.sentinels else "expanded")
        values = ", ".join(f"{v:.4f}" for v in outcome.values[c])
        lines.append(f"{c:<{width}}  {role:<8}  {outcome.proxy_rank[c]:>10}  {outcome.mean(c):>13.4f}  {values}")
    return "\n".join(lines + ["", outcome.verdict()])


def format_compute(compute: dict[str, float]) -> str:
    """What the sweep spent against training every candidate once in full (the replay
    benchmark's reference), from the per-epoch seconds this sweep measured."""
    parts = [f"proxy {compute['proxy_seconds']:.0f} s"] if compute["proxy_seconds"] else []
    if compute.get("audit_trials"):
        parts.append(f"audit {compute['audit_seconds']:.0f} s over {compute['audit_trials']:.0f} trials")
    parts.append(f"search {compute['trial_seconds']:.0f} s over {compute['trials']:.0f} trials")
    if compute.get("baseline_trials"):
        parts.append(f"baseline {compute['baseline_seconds']:.0f} s over {compute['baseline_trials']:.0f} trials")
    spent = compute.get("spent_seconds", compute["trial_seconds"] + compute["proxy_seconds"] + compute["audit_seconds"])
    line = f"compute: {spent:.0f} s spent ({', '.join(parts)})"
    if compute.get("estimated_exhaustive_seconds"):
        line += (f" = {compute['compute_fraction']:.0%} of training each of the {compute['candidates']:.0f} candidates "
                 f"once in full (an estimated {compute['estimated_exhaustive_seconds']:.0f} s at the seconds per "
                 f"epoch measured here); {compute['pruned_candidates']:.0f} candidates never trained")
    return line


def print_outcome(cfg, outcome) -> None:
    """The end of a sweep (`cfg` a SweepConfig, `outcome` a SweepOutcome)."""
    score_of = {s.candidate: s.t_stddev for s in outcome.scores}
    print("\n" + format_trials(outcome.trials, score_of, cfg.search.metric))
    diverged = [t for t in outcome.trials if t.diverged]
    if diverged:
        print(f"note: {len(diverged)} trial(s) diverged (NaN/inf loss), stopped at that epoch and left out of the best")
    print("\n" + format_compute(outcome.compute))
    if outcome.best is not None:
        print("\n" + describe_best(outcome.best, cfg.search.metric))
    if outcome.baseline is not None:
        print(outcome.baseline["line"])
    experiment_id = Tracker(cfg.tracking.uri, cfg.experiment_name).experiment_id
    serve = "" if cfg.tracking.uri.startswith(("http://", "https://")) else \
        f"  mlflow ui --backend-store-uri {cfg.tracking.uri}   # then open:\n"
    print(f"MLflow: experiment {cfg.experiment_name!r}, parent run {outcome.parent_run_id}\n{serve}"
          f"  {runs_view_url(cfg.tracking.uri, experiment_id)}\n"
          f"  augtune best --experiment {cfg.experiment_name} --tracking-uri {cfg.tracking.uri}")
