"""Which augmentation is best? Answered from MLflow alone (any tracking URI)."""
from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from statistics import mean
from typing import Optional

import yaml
from mlflow import MlflowClient

from augtune.search.results.schedule import to_steps
from augtune.search.results.tracking import BASELINE_VERDICT_TAG, DIVERGED_TAG, STAGE_TAG, Tracker
from augtune.search.results.trials import TrialRow, completed_trials, trial_rows
from augtune.search.selection.metric import lower_is_better


@dataclass
class CandidateSummary:
    candidate: str
    best: float
    mean: float
    runs: list[TrialRow]  # best first
    epochs: float  # the training length its best/mean compare at
    complete: bool  # trained as long as the longest run of the experiment


def summarise_trials(uri: str, experiment: str, metric: str = "val_loss",
                     parent_run_id: Optional[str] = None) -> list[CandidateSummary]:
    """Candidates ranked by their best comparable trial's final metric (loss: lower is better);
    candidates with runs stopped early only (ASHA) follow, compared at their own length."""
    if MlflowClient(tracking_uri=uri).get_experiment_by_name(experiment) is None:
        raise LookupError(f"no MLflow experiment named {experiment!r} at {uri}")
    rows = [r for r in trial_rows(Tracker(uri, experiment), parent_run_id) if r.usable(metric)]
    complete = {r.run_id for r in completed_trials(rows, metric)}
    lower = lower_is_better(metric)
    by_candidate: dict[str, list[TrialRow]] = {}
    for row in rows:
        by_candidate.setdefault(row.augmentation, []).append(row)
    summaries = []
    for candidate, runs in by_candidate.items():
        full = [r for r in runs if r.run_id in complete]
        length = max(r.epochs for r in runs)
        compared = full or [r for r in runs if r.epochs == length]
        values = [r.metric(metric) for r in compared]
        best = min(values) if lower else max(values)
        order = sorted(runs, key=lambda r: (-r.epochs, r.metric(metric) if lower else -r.metric(metric)))
        summaries.append(CandidateSummary(candidate, best, mean(values), order, compared[0].epochs, bool(full)))
    summaries.sort(key=lambda s: (not s.complete, s.best if lower else -s.best))
    return summaries


def left_out(uri: str, experiment: str) -> dict[str, int]:
    """Trial runs that best/report leave out: diverged (NaN/inf loss), failed, still RUNNING."""
    tracker = Tracker(uri, experiment)
    counts = {"diverged": 0, "failed": 0, "unfinished": 0}
    for run in tracker.runs(f"tags.`{STAGE_TAG}` = 'trial' and attributes.status != 'FINISHED'"):
        if run.data.tags.get(DIVERGED_TAG) == "true":
            counts["diverged"] += 1
        elif run.info.status in ("RUNNING", "SCHEDULED"):
            counts["unfinished"] += 1
        else:
            counts["failed"] += 1
    return counts


def format_left_out(counts: dict[str, int]) -> str:
    parts = [f"{n} {kind}" for kind, n in counts.items() if n]
    return f"note: left out {', '.join(parts)} trial run(s)" if parts else ""


def best_augmentation(uri: str, experiment: str, metric: str = "val_loss") -> CandidateSummary:
    summaries = summarise_trials(uri, experiment, metric)
    if not summaries:
        raise LookupError(f"experiment {experiment!r} at {uri} has no finished trial runs with final_{metric}")
    return summaries[0]


def _test_of_best(summary: CandidateSummary, metric: str) -> str:
    """Test loss of the run the candidate's best value comes from (blank when selecting on test)."""
    if metric.startswith("test_"):
        return "-"
    run = next((r for r in summary.runs if r.metric(metric) == summary.best), None)
    value = run.test_loss if run else None
    return f"{value:.4f}" if value is not None else "-"


def format_summary(summaries: list[CandidateSummary], metric: str) -> str:
    width = max([len(s.candidate) for s in summaries] + [12])
    lines = [f"{'rank':>4}  {'augmentation':<{width}}  {'best ' + metric:>15}  {'mean':>8}  "
             f"{'its test_loss':>13}  {'at epoch':>8}  runs"]
    for rank, s in enumerate(summaries, 1):
        lines.append(f"{rank:>4}  {s.candidate:<{width}}  {s.best:>15.4f}  {s.mean:>8.4f}  "
                     f"{_test_of_best(s, metric):>13}  {s.epochs:>8.0f}  "
                     f"{len(s.runs)}{'' if s.complete else '  (stopped early only)'}")
    return "\n".join(lines)


def export_best(uri: str, experiment: str, path: Path, metric: str = "val_loss") -> dict:
    """Write the best trial's full resolved config (its sweep's config, the trial's sampled
    hyperparameters, candidate and seed, the teacher it distilled from) to `path` as YAML, and
    fetch its final student weights beside it when the sweep logged them. Returns what it wrote."""
    # the trainables load torch: 2.6 s that ranking (`augtune best` without --export) does not need
    from augtune.trainables.builtin_methods import REGISTRY
    from augtune.trainables.values import apply_trial_values

    best = best_augmentation(uri, experiment, metric)
    tracker = Tracker(uri, experiment)
    run = tracker.client.get_run(best.runs[0].run_id)
    parent_id = run.data.tags.get("mlflow.parentRunId")
    with tempfile.TemporaryDirectory() as tmp:
        config = json.loads(Path(tracker.client.download_artifacts(parent_id, "config.json", tmp)).read_text())
        artifacts = {a.path for a in tracker.client.list_artifacts(run.info.run_id)}
        if "final_config.json" in artifacts:  # a PBT member: its values changed after they were logged as params
            params = json.loads(Path(tracker.client.download_artifacts(run.info.run_id, "final_config.json",
                                                                       tmp)).read_text())
        else:
            params = {k: yaml.safe_load(v) for k, v in run.data.params.items()}
        seed = params.pop("seed", None)
        sampled = {k: v for k, v in params.items() if k != "augmentation_kind" and not k.endswith(".variant")}
        method = config["search"]["method"]  # a sweep's config.json: its SweepConfig, complete
        config = apply_trial_values(config, sampled, method)
        augmentation = config[method]["augmentation"]
        if seed is not None:
            config["seed"] = seed
        if "schedule.json" in artifacts:  # replayed epoch by epoch by augtune train
            rows = json.loads(Path(tracker.client.download_artifacts(run.info.run_id, "schedule.json",
                                                                     tmp)).read_text())
            config["schedule"] = to_steps(rows)
        teacher = tracker.client.get_run(parent_id).data.params.get("teacher_checkpoint")
        if teacher and REGISTRY[method].teacher == "supervised":
            config.setdefault("teacher", {})["checkpoint"] = teacher
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = (f"# The best trial of MLflow experiment {experiment!r} (run {run.info.run_id}, {metric} "
                  f"{best.best:.4f}).\n# Reproduce it without Ray, with the trial's thread count:\n"
                  f"#   augtune train {method} {path.name} --threads 1\n")
        path.write_text(header + yaml.safe_dump(config, sort_keys=False))
        out = {"config": path, "run_id": run.info.run_id, "method": method, "augmentation": augmentation}
        if "student.pt" in artifacts:
            weights = path.with_name(path.stem + ".student.pt")
            shutil.copy(tracker.client.download_artifacts(run.info.run_id, "student.pt", tmp), weights)
            out["student"] = weights
    return out


def baseline_lines(uri: str, experiment: str) -> list[str]:
    """Each sweep's recipe-baseline line (the comparison it printed), newest first."""
    tracker = Tracker(uri, experiment)
    sweeps = tracker.runs(f"tags.`{STAGE_TAG}` = 'sweep'", order_by=["attributes.start_time DESC"])
    return [f"sweep {run.info.run_id}: {run.data.tags[BASELINE_VERDICT_TAG]}" for run in sweeps
            if BASELINE_VERDICT_TAG in run.data.tags]
