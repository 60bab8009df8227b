"""Where a finished sweep's Tune seconds go, read from Ray's own files (no re-run): per Tune phase
(search, audit batches, baseline) the wall seconds x slots against the trials' own training
seconds, and the difference per trial broken down.

    .venv/bin/python benchmarks/sweep_overhead.py configs/digits_sweep.yaml   # after `make run`
    .venv/bin/python benchmarks/sweep_overhead.py CONFIG [--set key=value ...]

Figures per phase (one Tune experiment), all from RUNS/NAME/ray/EXPERIMENT/:
- wall: first trial start (Tune's experiment `_start_time`) to the last result of any trial;
- slots: trials Tune runs side by side (search.max_concurrent, at most the trials);
- trained: each trial's epochs as the runner timed them (`epoch_seconds`: training + evaluation);
- overhead per trial = (wall x slots - trained) / trials: what the issue counts, split into
  in-trial  the trial's own span (Tune's start to its last result) beyond its epochs: Tune's step
            wrapper, results, checkpoints, the runner's set-up on a reused actor,
  gaps      slots idle while trials were still waiting to start (a phase's fresh actors starting,
            Tune's scheduling),
  tail      slots idle after the last trial started (nothing left to start: ASHA's shape);
  and, beside them (not a part of the sum), set-up: the trial's runner built on its actor
  (`trial_setup_seconds`: config, data from the actor's cache, networks, teacher, augmentation),
  which on a fresh actor runs before Tune marks the trial started (then it is inside "gaps").
"""
from __future__ import annotations

import argparse
import glob
import json
import re
from pathlib import Path

COLUMNS = ("phase", "trials", "slots", "wall s", "trained s", "overhead/trial", "in-trial", "gaps", "tail", "set-up")


def latest_state(experiment: Path) -> dict:
    files = sorted(glob.glob(str(experiment / "experiment_state-*.json")))
    return json.loads(Path(files[-1]).read_text()) if files else {}


def trial_records(experiment: Path, state: dict) -> list[dict]:
    """Per trial: start and last-result times (Tune's runtime data) and the result file's sums."""
    out = []
    for config_json, runtime_json in state.get("trial_data", []):
        config, runtime = json.loads(config_json), json.loads(runtime_json)
        rows = []
        results = experiment / config["relative_logdir"] / "result.json"
        if results.is_file():
            rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
        if not rows or runtime.get("last_result_time") is None:
            continue
        out.append({"start": runtime["start_time"], "end": runtime["last_result_time"],
                    "trained": sum(r.get("epoch_seconds", 0.0) for r in rows),
                    "stepped": rows[-1].get("time_total_s", 0.0),
                    "setup": sum(r.get("trial_setup_seconds", 0.0) for r in rows)})
    return out


def idle(records: list[dict], slots: int, start: float, end: float) -> tuple[float, float]:
    """Slot-seconds idle before the last trial start (gaps) and after it (tail)."""
    last_start = max(r["start"] for r in records)
    events = sorted({start, end, last_start, *(r["start"] for r in records), *(r["end"] for r in records)})
    gaps = tail = 0.0
    for a, b in zip(events, events[1:]):
        running = sum(r["start"] <= a and r["end"] >= b for r in records)
        free = max(0, slots - running) * (b - a)
        if b <= last_start:
            gaps += free
        else:
            tail += free
    return gaps, tail


def phase_row(name: str, experiment: Path, max_concurrent: int) -> dict:
    state = latest_state(experiment)
    records = trial_records(experiment, state)
    if not records:
        return {}
    start = min(state.get("runner_data", {}).get("_start_time", float("inf")), min(r["start"] for r in records))
    end = max(r["end"] for r in records)
    slots = min(max_concurrent, len(records))
    wall, trained = end - start, sum(r["trained"] for r in records)
    gaps, tail = idle(records, slots, start, end)
    n = len(records)
    setup = sum(r["setup"] for r in records)
    in_trial = sum((r["end"] - r["start"]) - r["trained"] for r in records)
    return {"phase": name, "trials": n, "slots": slots, "wall s": wall, "trained s": trained,
            "overhead/trial": (wall * slots - trained) / n, "set-up": setup / n, "in-trial": in_trial / n,
            "gaps": gaps / n, "tail": tail / n}


def phase_name(experiment: str) -> str:
    """sweep-DATE-TIME is the search; -audit-N, -baseline, -topupN (and -again) follow it."""
    match = re.match(r"sweep-\d{8}-\d{6}-?(.*)$", experiment)
    return (match.group(1) if match else experiment) or "search"


def sweep_rows(job: Path, max_concurrent: int) -> list[dict]:
    rows = []
    for experiment in sorted((job / "ray").iterdir()) if (job / "ray").is_dir() else []:
        if experiment.is_dir() and glob.glob(str(experiment / "experiment_state-*.json")):
            row = phase_row(phase_name(experiment.name), experiment, max_concurrent)
            if row:
                rows.append(row)
    if rows:  # all phases together: per trial over the whole sweep
        n = sum(r["trials"] for r in rows)
        total = {"phase": "all", "trials": n, "slots": max(r["slots"] for r in rows),
                 "wall s": sum(r["wall s"] for r in rows), "trained s": sum(r["trained s"] for r in rows)}
        for key in ("overhead/trial", "set-up", "in-trial", "gaps", "tail"):
            total[key] = sum(r[key] * r["trials"] for r in rows) / n
        rows.append(total)
    return rows


def format_rows(rows: list[dict]) -> str:
    lines = ["  ".join(f"{c:>14}" if i else f"{c:<10}" for i, c in enumerate(COLUMNS))]
    for row in rows:
        cells = [f"{row['phase']:<10}", f"{row['trials']:>14}", f"{row['slots']:>14}"]
        cells += [f"{row[c]:>14.2f}" for c in COLUMNS[3:]]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def main() -> None:
    from augtune.search.cli import _overrides
    from augtune.search.standalone.proxy_job import job_dir
    from augtune.search.sweep_config import load_config

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE")
    args = parser.parse_args()
    cfg = load_config(args.config, _overrides(args))
    job = job_dir(cfg)
    rows = sweep_rows(job, cfg.search.max_concurrent)
    if not rows:
        raise SystemExit(f"no finished Tune experiment under {job / 'ray'}: run the sweep first")
    print(f"Tune seconds of the sweep in {job} (slots = search.max_concurrent = {cfg.search.max_concurrent}); "
          "seconds per trial unless marked s")
    print(format_rows(rows))


if __name__ == "__main__":
    main()
