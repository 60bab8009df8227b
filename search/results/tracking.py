"""MLflow logging through `MlflowClient`: one parent run per invocation, child runs per proxy
candidate and per trial (linked with the `mlflow.parentRunId` tag), and queries over them.

Tags used everywhere: `augtune.stage` = sweep | proxy | trial | report, `augtune.candidate`
(the candidate id), `augtune.pair` (teacher->student), `augtune.trial_id` (Ray's id).
"""
from __future__ import annotations

import json
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

PARENT_TAG = "mlflow.parentRunId"
STAGE_TAG = "augtune.stage"
CANDIDATE_TAG = "augtune.candidate"
PAIR_TAG = "augtune.pair"
TRIAL_TAG = "augtune.trial_id"
PHASE_TAG = "augtune.phase"  # search | audit | baseline
# on a trial run Ray forgot after it finished (its work was trained again by a top-up): left out by
# best and report, kept (nothing a user logged is lost)
SUPERSEDED_TAG = "augtune.superseded"
BASELINE_TAG = "augtune.baseline"  # on a sweep's parent run: the recipe its choice was compared with
BASELINE_VERDICT_TAG = "augtune.baseline_verdict"  # the comparison's one line
DIVERGED_TAG = "augtune.diverged"  # "true" on trials whose training loss became NaN or infinite
SCHEDULE_TAG = "augtune.schedule"  # "pbt" on trials whose values changed during training (schedule.* artifacts)
# on a sweep's parent run
VALIDATE_PROXY_TAG = "augtune.validate_proxy"  # "True" when every candidate was trained (a validation sweep)
AUDIT_VERDICT_TAG = "augtune.audit_verdict"
BEST_AUGMENTATION_TAG = "augtune.best_augmentation"
SELECTED_ON_TAG = "augtune.selected_on"  # "val" or "test": the split the best trial was chosen on
REPORT_VERDICT_TAG = "augtune.report_verdict"  # on a report's run
TEACHER_CACHE_TAG = "augtune.teacher_cache"  # on a sweep's parent run: the KD teacher cache its trials read
MAX_PARAM_LENGTH = 6000


def artifact_location(uri: str, experiment: str) -> Optional[str]:
    """Artifacts next to a sqlite store (DB_DIR/mlartifacts/EXPERIMENT), never in whatever
    directory the command runs in (MLflow's default ./mlruns). Servers choose their own."""
    if not uri.startswith("sqlite:///"):
        return None
    database = Path(uri.removeprefix("sqlite:///")).resolve()
    return (database.parent / "mlartifacts" / experiment).as_uri()


class Tracker:
    def __init__(self, uri: str, experiment: str):
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(experiment)
        # the kind tag opens `mlflow ui` (3.x) on the experiment's training runs, not its GenAI traces
        self.experiment_id = found.experiment_id if found else self.client.create_experiment(
            experiment, artifact_location=artifact_location(uri, experiment),
            tags={"mlflow.experimentKind": "custom_model_development"})
        self.experiment = experiment

    # ---- runs
    def start_run(self, name: str, stage: str, parent_id: Optional[str] = None,
                  tags: Optional[Mapping[str, str]] = None) -> str:
        all_tags = {STAGE_TAG: stage, **(tags or {})}
        if parent_id:
            all_tags[PARENT_TAG] = parent_id
        return self.client.create_run(self.experiment_id, tags=all_tags, run_name=name).info.run_id

    def log(self, run_id: str, metrics: Optional[Mapping[str, float]] = None, params: Optional[Mapping[str, Any]] = None,
            tags: Optional[Mapping[str, str]] = None, step: int = 0, once: bool = False) -> None:
        """`once`: leave out metrics the run already has (a resumed stage logs its summary again)."""
        if once and metrics:
            present = self.client.get_run(run_id).data.metrics
            metrics = {k: v for k, v in metrics.items() if k not in present}
        now = int(time.time() * 1000)
        metric_list = [Metric(k, float(v), now, step) for k, v in (metrics or {}).items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool)]
        param_list = [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in (params or {}).items()]
        tag_list = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
        # MLflow caps one batch at 1000 metrics / 100 params
        for i in range(0, max(len(metric_list), len(param_list), len(tag_list), 1), 100):
            self.client.log_batch(run_id, metrics=metric_list[i:i + 100], params=param_list[i:i + 100],
                                  tags=tag_list[i:i + 100])

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    @contextmanager
    def run_status(self, run_id: str, killed_by: tuple[type[BaseException], ...] = (KeyboardInterrupt,)):
        """The one place a run's end status is decided: FINISHED when the block completes,
        KILLED when it is interrupted (`killed_by`: Ctrl-C, a stopped Tune phase), FAILED on any
        other error. The exception goes on."""
        try:
            yield run_id
        except killed_by:
            self.end_run(run_id, "KILLED")
            raise
        except BaseException:
            self.end_run(run_id, "FAILED")
            raise
        self.end_run(run_id, "FINISHED")

    def log_json(self, run_id: str, name: str, payload: Any) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_text(json.dumps(payload, indent=2, default=str))
            self.client.log_artifact(run_id, str(path))

    def log_file(self, run_id: str, path: Path, folder: Optional[str] = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path=folder)

    # ---- queries
    def runs(self, filter_string: str = "", order_by: Optional[list[str]] = None, max_results: int = 5000):
        return self.client.search_runs([self.experiment_id], filter_string=filter_string,
                                       order_by=order_by or [], max_results=max_results)

    def children(self, parent_id: str, stage: Optional[str] = None):
        query = f"tags.`{PARENT_TAG}` = '{parent_id}'"
        if stage:
            query += f" and tags.`{STAGE_TAG}` = '{stage}'"
        return self.runs(query)


def log_proxy_scores(tracker: Tracker, parent_id: str, scores: Iterable, pair: str,
                     settings: Mapping[str, Any]) -> dict[str, str]:
    """One child run per candidate: tag stage=proxy, metrics t_stddev and its bounds, and the
    zoo's scores as `proxy.NAME`."""
    run_ids = {}
    for score in scores:
        run_id = tracker.start_run(f"proxy:{score.candidate}", "proxy", parent_id,
                                   {CANDIDATE_TAG: score.candidate, PAIR_TAG: pair})
        tracker.log(run_id, metrics={"t_stddev": score.t_stddev, "t_stddev_low": score.low,
                                     "t_stddev_high": score.high, "proxy_rank": score.rank,
                                     "proxy_groups": score.groups, "proxy_passes": score.passes,
                                     "proxy_seconds": score.seconds,
                                     **{f"proxy.{name}": value for name, value in score.zoo.items()}},
                    params={"candidate": score.candidate, **settings})
        tracker.end_run(run_id)
        run_ids[score.candidate] = run_id
    return run_ids


def runs_view_url(uri: str, experiment_id: str, ui: str = "http://127.0.0.1:5000") -> str:
    """The MLflow UI page that lists a sweep and its nested trials. MLflow 3 opens an experiment on
    its GenAI overview; workflowType=machine_learning opens the runs view. A tracking server serves
    the UI itself; a sqlite store is served by `mlflow ui` (127.0.0.1:5000 by default)."""
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else ui
    return f"{base}/#/experiments/{experiment_id}?workflowType=machine_learning"
