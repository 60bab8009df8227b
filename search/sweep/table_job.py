"""`augtune table CONFIG`: a learning-curve table of the user's own config, for `augtune replay`.

The students are a validation sweep (search/sweep/: every candidate of `space` -- the listed
candidates or a sample of the policy space -- x `--seeds` seeds, at the config's own
hyperparameters, full length, no early stopping) run as a Ray Tune grid with the sweep's
resources (packed trials included), resumable after a kill (`--resume`) and logged to MLflow like
any sweep. Beside them, the proxy zoo of every candidate for `--proxy-seeds` seeds: the sweep's
own scores are the first seed, each further seed one line of JOB_DIR/table-proxy.jsonl (a resumed
table scores only the seeds it lacks). The table is read back from MLflow (each trial's per-epoch
curves), written in the documented format (search/tables/learning_curves.py) and logged to the
sweep's run.
"""
from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from augtune.search.results.tracking import CANDIDATE_TAG, PHASE_TAG, SUPERSEDED_TAG, Tracker
from augtune.search.standalone.proxy_job import job_dir, load_checked_data, score_with_config
from augtune.search.sweep.driver import run_sweep
from augtune.search.sweep.state import SweepState
from augtune.search.sweep_config import ConfigError, SweepConfig
from augtune.search.tables.learning_curves import CURVE_METRICS, read_jsonl, regime_from_runs, write_table
from augtune.trainables.engine import load_checkpoint, resolve_device

MIN_SEEDS = 3  # a replay shows a search 2 seeds and keeps >= 1 as the truth
PROXY_LOG = "table-proxy.jsonl"


@dataclass
class TableOutcome:
    path: Optional[Path]  # None: the sweep was interrupted (resume with --resume)
    runs: int = 0
    expected: int = 0
    parent_run_id: Optional[str] = None


def table_overrides(seeds: int, proxy_seeds: int) -> dict[str, Any]:
    """What turns a sweep config into a table's: every candidate trained (`search.validate_proxy`)
    at `seeds` seeds to the end, full proxy passes (racing would leave some candidates with
    partial scores); the sweep's pruning, scheduler and baseline do not apply to a table, so a
    config that sets them (top_k 8 of a sample of 3, PBT, a fixed candidate) still makes one."""
    if seeds < MIN_SEEDS:
        raise ConfigError(f"--seeds: a table needs at least {MIN_SEEDS} seeds per candidate (a replay shows a search "
                          f"2 and keeps the rest as the truth); got {seeds}")
    if proxy_seeds < 1:
        raise ConfigError(f"--proxy-seeds: give at least 1, got {proxy_seeds}")
    return {"search.validate_proxy": True, "search.seeds": seeds, "proxy.race_top_k": 0,
            "search.scheduler": {"kind": "fifo"}, "search.prune": {"mode": "none"}, "search.baseline": None}


def check_table_config(cfg: SweepConfig, output: Path, resume: bool) -> None:
    """Refused before Ray starts or anything is written: a method without a teacher (no proxy to
    tabulate), an output that is a folder, a --resume of a job folder whose last job was a sweep."""
    if not cfg.method.has_teacher:
        raise ConfigError(f"search.method: {cfg.search.method} has no teacher, so no proxy to tabulate; "
                          "a table needs a method with a teacher (kd, sla, ssd)")
    if output.is_dir():
        raise ConfigError(f"--output: {output} is a folder; give a file name such as {output / 'table.json.gz'}")
    state = SweepState.load(job_dir(cfg)) if resume else None
    if state is not None and not state.validate_proxy:
        raise ConfigError(f"--resume: the last job in {job_dir(cfg)} is a sweep, not a table; run `augtune table` "
                          "without --resume (or resume the sweep with `augtune sweep CONFIG --resume`)")


def default_table_path(cfg: SweepConfig) -> Path:
    return cfg.output_dir / cfg.name / "table.json.gz"


def run_table(cfg: SweepConfig, proxy_seeds: int, output: Path, resume: bool = False,
              progress: bool = True) -> TableOutcome:
    """The grid (a validation sweep), the further proxy seeds, the table written and logged."""
    outcome = run_sweep(cfg, resume=resume, progress=progress)
    if outcome.interrupted:
        return TableOutcome(None)
    state = SweepState.load(job_dir(cfg))
    seeds = [cfg.seed + i for i in range(proxy_seeds)]
    proxy_rows = [{"proxy_seed": cfg.seed, **score_row(outcome.scores)}]
    proxy_rows += further_proxy_rows(cfg, Path(state.teacher_path), outcome.parent_run_id, seeds[1:], progress)
    tracker = Tracker(cfg.tracking.uri, cfg.experiment_name)
    runs = trial_curves(tracker, outcome.parent_run_id)
    candidates = [c.id for c in cfg.space.resolved()]
    regime = regime_from_runs(cfg.name, candidates, [cfg.seed + i for i in range(cfg.search.seeds)],
                              cfg.student.train.epochs, runs, proxy_rows,
                              {"config": cfg.model_dump(mode="json"), "sweep_run": outcome.parent_run_id,
                               "run_workers": [cfg.search.max_concurrent]})
    write_table(output, {cfg.name: regime}, protocol="augtune table",
                machine=f"{platform.machine()}, {os.cpu_count()} cores, {cfg.device}; {cfg.search.max_concurrent} "
                        "trials side by side; epoch_cpu_seconds: each trial process's own CPU seconds")
    tracker.log_file(outcome.parent_run_id, output)
    return TableOutcome(output, int(regime.ran().sum()), len(candidates) * cfg.search.seeds, outcome.parent_run_id)


def score_row(scores) -> dict[str, Any]:
    """One proxy seed's scores as a log row: every zoo score and the seconds, by candidate."""
    return {"scores": {s.candidate: {"t_stddev": s.t_stddev, **s.zoo} for s in scores},
            "seconds": {s.candidate: s.seconds for s in scores}}


def further_proxy_rows(cfg: SweepConfig, teacher_path: Path, parent_run_id: str, seeds: list[int],
                       progress: bool) -> list[dict[str, Any]]:
    """The proxy zoo at each further seed, with the sweep's proxy settings (the sweep's own scoring
    call; a low-fidelity student score is the first seed's only); the seeds logged in
    JOB_DIR/table-proxy.jsonl for this sweep run are read, not scored again."""
    log = job_dir(cfg) / PROXY_LOG
    done = {row["proxy_seed"]: row for row in read_jsonl(log) if row.get("sweep_run") == parent_run_id}
    todo = [seed for seed in seeds if seed not in done]
    if todo:
        data = load_checked_data(cfg, proxy=True)
        device = resolve_device(cfg.device)
        teacher, _ = load_checkpoint(teacher_path, data, device)
        for seed in todo:
            print(f"proxy seed {seed} of the table ({len(seeds) + 1} seeds in all)")
            scores = score_with_config(cfg, teacher, data, device, seed, progress)
            done[seed] = {"sweep_run": parent_run_id, "proxy_seed": seed, **score_row(scores)}
            with open(log, "a") as sink:
                sink.write(json.dumps(done[seed]) + "\n")
    return [done[seed] for seed in seeds]


def trial_curves(tracker, parent_run_id: str) -> list[dict[str, Any]]:
    """Every finished trial of the sweep as {candidate, seed, run_id, METRIC: per-epoch values},
    from MLflow: the durable record (a resumed sweep's trials are there once, superseded runs left out)."""
    rows = []
    for run in tracker.children(parent_run_id, "trial"):
        tags = run.data.tags
        if run.info.status != "FINISHED" or tags.get(SUPERSEDED_TAG) or tags.get(PHASE_TAG, "search") != "search":
            continue
        row = {"candidate": tags[CANDIDATE_TAG], "seed": int(run.data.params["seed"]), "run_id": run.info.run_id}
        for metric in CURVE_METRICS:
            history = sorted((m.step, m.value) for m in tracker.client.get_metric_history(run.info.run_id, metric))
            row[metric] = [value for _, value in history]
        rows.append(row)
    return rows
