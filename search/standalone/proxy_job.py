"""The proxy job: teacher -> T.stddev of every candidate -> table, CSV/JSON, MLflow runs.
The sweep driver (search/sweep/driver.py) runs it as its first stage."""
from __future__ import annotations

import csv
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from augtune.search.sweep_config import ConfigError, SweepConfig, TrackingConfig
from augtune.search.selection.proxy import ProxyScore, format_table, low_fidelity_scores, rank_scores, score_candidates
from augtune.search.standalone.teacher import obtain_method_teacher
from augtune.search.results.tracking import PAIR_TAG, Tracker, log_proxy_scores
from augtune.trainables.data import DataBundle, load_data
from augtune.trainables.engine import InputPipeline, evaluate_split, load_checkpoint, resolve_device


@dataclass
class ProxyOutcome:
    scores: list[ProxyScore]
    teacher_path: Path
    csv_path: Optional[Path]  # None when only the teacher was obtained (prune mode fixed)
    json_path: Optional[Path]
    run_ids: dict[str, str]


def load_checked_data(cfg: SweepConfig, proxy: bool = True) -> DataBundle:
    """The config's data, with loading problems (missing or corrupt files, impossible counts)
    turned into ConfigErrors naming the field, and the proxy's batching checked against it."""
    try:
        data = load_data(cfg.data)
    except (ValueError, OSError, RuntimeError) as exc:
        message = str(exc)
        raise ConfigError(message if message.startswith("data.") else f"data ({cfg.data.name}): {message}") from None
    if proxy:
        p, n = cfg.proxy, len(data.train)
        if p.batch_size > n:
            raise ConfigError(f"proxy.batch_size: {p.batch_size} exceeds the {n} training images; lower it")
        groups = p.passes * (n // p.batch_size) // p.group_batches
        if groups < 2:
            raise ConfigError(f"proxy: {p.passes} passes of {n // p.batch_size} batches make {groups} group(s) of "
                              f"{p.group_batches} batches; T.stddev needs at least 2: raise proxy.passes or lower "
                              "proxy.batch_size / proxy.group_batches")
    check_teacher_weights(cfg, data)
    return data


def check_teacher_weights(cfg: SweepConfig, data: DataBundle) -> None:
    """Weights whose classifier has another class count than the data are refused (naming both)
    unless the teacher is fine-tuned from them with a new head."""
    t = cfg.teacher
    if t.checkpoint is not None or (t.weights is None and not t.pretrained) or t.fine_tune:
        return
    source = t.build(data.num_classes, data.channels).source_classes
    if source != data.num_classes:
        field = "teacher.weights" if t.weights is not None else "teacher.pretrained"
        raise ConfigError(f"{field}: the network's classifier has {source} classes and the data has "
                          f"{data.num_classes}; set teacher.fine_tune: true to train a new {data.num_classes}-class "
                          f"head from these weights (teacher.train), or give weights with {data.num_classes} classes "
                          "(teacher.model_args.num_classes sets the size the network is built with)")


def check_tracking_uri(uri: str, must_exist: bool = False) -> None:
    """Fail fast (exit 2) on a tracking store that cannot work: a scheme MLflow cannot use, a
    server that does not answer its health check within 5 s, or (for queries) a sqlite file
    that does not exist, which MLflow would otherwise create."""
    try:
        TrackingConfig(uri=uri)
    except ValueError as exc:
        raise ConfigError(f"tracking.uri {uri!r}: {str(exc).splitlines()[-1].strip()}") from None
    if uri.startswith("sqlite:///") and must_exist and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise ConfigError(f"tracking.uri {uri}: no such MLflow store (nothing has been logged there); "
                          "check --tracking-uri")
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as answer:
                answer.read(64)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise ConfigError(f"tracking.uri {uri}: the MLflow server does not answer ({exc}); start it, or "
                              "fix tracking.uri") from None


def pair_name(cfg: SweepConfig) -> str:
    return f"{cfg.teacher.model}->{cfg.student.model}"


def job_dir(cfg: SweepConfig) -> Path:
    return cfg.output_dir / cfg.name


def student_scorer(cfg: SweepConfig, data: DataBundle, device: torch.device) -> Optional[Callable]:
    path = cfg.proxy.student_checkpoint or cfg.student.checkpoint
    if path is None:
        return None
    student, _ = load_checkpoint(path, data, device)
    return InputPipeline(data, device).scorer(student, cfg.student.train.bf16)


def write_scores(scores: list[ProxyScore], folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = folder / "proxy.csv", folder / "proxy.json"
    rows = [s.as_row() for s in scores]
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    json_path.write_text(json.dumps(rows, indent=2))
    return csv_path, json_path


def screen_children(cfg: SweepConfig) -> int:
    """How many of a screened policy space's best get an MLflow child run: those pruning keeps."""
    prune = cfg.search.prune
    return len(cfg.space.resolved()) if prune.mode in ("none", "overlap") else prune.top_k


def score_with_config(cfg: SweepConfig, teacher: torch.nn.Module, data: DataBundle, device: torch.device, seed: int,
                      progress: bool = True) -> list[ProxyScore]:
    """Every candidate's teacher-only scores with the config's proxy settings, at `seed`."""
    extra = {}
    scorer = student_scorer(cfg, data, device)
    if scorer is not None:
        extra["student"] = scorer
    p = cfg.proxy
    return score_candidates(teacher, cfg.space.resolved(), data, device, passes=p.passes,
                            group_batches=p.group_batches, batch_size=p.batch_size, bootstrap=p.bootstrap,
                            confidence=p.confidence, stop_when_stable=p.stop_when_stable, min_passes=p.min_passes,
                            stable_passes=p.stable_passes, seed=seed, extra_scorers=extra, progress=progress,
                            bf16=cfg.teacher.train.bf16, forward_batches=p.forward_batches,
                            rank_by="t_stddev" if p.score == "low_fidelity" else p.score,
                            policies_per_forward=p.policies_per_forward, race_top_k=p.race_top_k,
                            race_min_passes=p.race_min_passes, race_z=p.race_z)


def run_proxy(cfg: SweepConfig, data: DataBundle, tracker: Tracker, parent_id: str,
              progress: bool = True, score: bool = True) -> ProxyOutcome:
    """The method's teacher (obtained, evaluated, logged), then, with `score`, every candidate's
    proxy scores (table files, MLflow child runs)."""
    device = resolve_device(cfg.device)
    teacher, teacher_path, trained = obtain_method_teacher(cfg, cfg.method, data, device, tracker, parent_id,
                                                           progress)
    if trained:
        print(f"trained teacher -> {teacher_path}")
    teacher_test = evaluate_split(teacher, data, device)
    print(f"teacher {cfg.teacher.model}: test accuracy {teacher_test['acc']:.4f}, test loss {teacher_test['loss']:.4f}")
    tracker.log(parent_id, metrics={"teacher_test_acc": teacher_test["acc"], "teacher_test_loss": teacher_test["loss"]},
                once=True)
    if not score:
        tracker.log(parent_id, params={"teacher_checkpoint": str(Path(teacher_path).resolve())})
        return ProxyOutcome([], teacher_path, None, None, {})
    candidates = cfg.space.resolved()
    p = cfg.proxy
    scores = score_with_config(cfg, teacher, data, device, cfg.seed, progress)
    if p.low_fidelity_epochs:
        trained = low_fidelity_scores(cfg, data, teacher_path, p.low_fidelity_epochs, candidates, progress)
        for s in scores:
            s.zoo["low_fidelity"], seconds = trained[s.candidate]
            s.seconds += seconds
        scores = rank_scores(scores, p.score)
    csv_path, json_path = write_scores(scores, job_dir(cfg))
    settings = {"proxy.score": p.score, "proxy.passes": p.passes, "proxy.group_batches": p.group_batches,
                "proxy.batch_size": p.batch_size,
                "teacher": cfg.teacher.model, "teacher_checkpoint": str(Path(teacher_path).resolve())}
    # a screened policy space: its whole table is the CSV/JSON artifact; child runs for the kept only
    logged = scores if cfg.space.policies is None else [s for s in scores if not s.raced_out][:screen_children(cfg)]
    run_ids = log_proxy_scores(tracker, parent_id, logged, pair_name(cfg), settings)
    # exported configs point at the very teacher the trials distilled from
    tracker.log(parent_id, params={"teacher_checkpoint": settings["teacher_checkpoint"]})
    tracker.log_file(parent_id, csv_path)
    tracker.log_file(parent_id, json_path)
    tracker.log(parent_id, metrics={"proxy_seconds": sum(s.seconds for s in scores),
                                    "proxy_candidates": len(scores),
                                    "proxy_raced_out": sum(s.raced_out for s in scores)}, once=True)
    return ProxyOutcome(scores, teacher_path, csv_path, json_path, run_ids)


def proxy_command(cfg: SweepConfig, progress: bool = True) -> ProxyOutcome:
    """`augtune proxy CONFIG`: one parent run (stage=proxy) holding a child per candidate."""
    data = load_checked_data(cfg)
    check_tracking_uri(cfg.tracking.uri)
    tracker = Tracker(cfg.tracking.uri, cfg.experiment_name)
    parent = tracker.start_run(f"proxy:{cfg.name}", "proxy-job", tags={PAIR_TAG: pair_name(cfg)})
    try:
        outcome = run_proxy(cfg, data, tracker, parent, progress)
    except BaseException:
        tracker.end_run(parent, "FAILED")
        raise
    tracker.end_run(parent)
    print(format_table(outcome.scores))
    print(f"\nwrote {outcome.csv_path} and {outcome.json_path}; MLflow run {parent} in "
          f"experiment {cfg.experiment_name!r} at {cfg.tracking.uri}")
    return outcome
