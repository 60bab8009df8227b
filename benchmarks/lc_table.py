"""The learning-curve table of augmentation in KD: every candidate x every student seed, trained
in full at the config's hyperparameters, with per-epoch validation / test loss and accuracy and
per-epoch seconds; beside it every candidate's proxy scores (T.stddev and the zoo) from several
proxy seeds. Searches are then replayed against the table (benchmarks/replay_study.py) instead of
training. Resumable: every finished run is one line of OUT/runs.jsonl, every proxy score set one
line of OUT/proxy.jsonl; `build` writes the compact table that the repository keeps.

    .venv/bin/python benchmarks/lc_table.py students [--out runs/lc-table] [--workers 2]
    .venv/bin/python benchmarks/lc_table.py proxy    [--out runs/lc-table]
    .venv/bin/python benchmarks/lc_table.py build    [--out runs/lc-table] [--table FILE]
(the table: benchmarks/tables/digits-kd-lc.json.gz)

PROTOCOL (fixed before any run; do not change it after seeing numbers)
- Base: configs/digits_recipe.yaml as of this script (teacher resnet20 60 epochs; KD T = 4,
  0.1 CE + 0.9 KL on x and x'; student 30 epochs, lr 0.05, cosine, batch 32; validation 20 images
  per class; test 450). Hyperparameters are the config's; no search over them in the table.
- Regimes:
    lt100-if10-r8    the embedded default: long-tailed digits (n_max 100, IF 10), resnet8
    spc30-r8         balanced, 30 images per class, resnet8
    spc50-r8         balanced, 50 images per class, resnet8
    lt100-if10-half  the default's data with the half-width student resnet8x0.5
  One teacher per data setting (seed 0), shared by the regimes on the same data.
- Candidates: the config's 11 plus the CutMixPick variants a user would try next to keep 0.5 and
  tau 0.6: keep 0.25 and 0.75, tau 0.4 and 0.8 (15 in all).
- Student seeds 0-4 (5 per candidate); runs are ordered seed-major, so a partial table has
  whole seeds of every candidate of every regime.
- Proxy: T.stddev and the zoo for every candidate, proxy seeds 0, 1, 2 (batch order and
  augmentation draws), the config's proxy settings (10 passes, groups of 5 batches of 32).
- Timing: each run's per-epoch seconds (training + evaluation of val and test) as measured, with
  `--workers` runs side by side on this machine (recorded in the table).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import subprocess
import time
from pathlib import Path

from augtune.search.tables.learning_curves import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
BASE_CONFIG = ROOT / "configs" / "digits_recipe.yaml"
TABLE = ROOT / "benchmarks" / "tables" / "digits-kd-lc.json.gz"
SEEDS = (0, 1, 2, 3, 4)
PROXY_SEEDS = (0, 1, 2)
CURVE_METRICS = ("val_loss", "val_acc", "test_loss", "test_acc", "epoch_seconds")
EXTRA_CANDIDATES = [{"name": "cutmix_pick", "keep": [0.25, 0.75]}, {"name": "cutmix_pick", "tau": [0.4, 0.8]}]
REGIMES = {
    "lt100-if10-r8": {"data.samples_per_class": 100, "data.imbalance_factor": 10, "student.model": "resnet8"},
    "spc30-r8": {"data.samples_per_class": 30, "data.imbalance_factor": 1, "student.model": "resnet8"},
    "spc50-r8": {"data.samples_per_class": 50, "data.imbalance_factor": 1, "student.model": "resnet8"},
    "lt100-if10-half": {"data.samples_per_class": 100, "data.imbalance_factor": 10, "student.model": "resnet8x0.5"},
}


def data_key(regime: str) -> str:
    overrides = REGIMES[regime]
    return f"spc{overrides['data.samples_per_class']}-if{overrides['data.imbalance_factor']}"


def regime_config(regime: str, out: Path, seed: int = 0):
    import yaml

    from augtune.search.sweep_config import load_config

    base = yaml.safe_load(BASE_CONFIG.read_text())
    candidates = base["space"]["candidates"] + EXTRA_CANDIDATES
    return load_config(BASE_CONFIG, {**REGIMES[regime], "seed": seed, "output_dir": str(out / "work"),
                                     "name": data_key(regime), "space.candidates": candidates})


def candidate_ids(regime: str, out: Path) -> list[str]:
    return [c.id for c in regime_config(regime, out).space.resolved()]


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# ---------------------------------------------------------------- teachers

def teacher_for(regime: str, out: Path) -> dict:
    """The data setting's teacher (trained once, seed 0), cached in OUT/teacher-KEY.json."""
    cache = out / f"teacher-{data_key(regime)}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    from augtune.search.standalone.teacher import obtain_teacher
    from augtune.trainables.data import load_data
    from augtune.trainables.engine import evaluate_split, resolve_device

    cfg = regime_config(regime, out)
    data = load_data(cfg.data)
    device = resolve_device(cfg.device)
    start = time.perf_counter()
    teacher, path, _ = obtain_teacher(cfg, data, device, progress=False)
    record = {"path": str(path), "seconds": time.perf_counter() - start, "train_images": len(data.train),
              "test": evaluate_split(teacher, data, device), "val": evaluate_split(teacher, data, device, "val")}
    cache.write_text(json.dumps(record, indent=2))
    return record


# ---------------------------------------------------------------- student runs

def _run_student(job: tuple[str, str, int, str, str]) -> dict:
    import torch

    torch.set_num_threads(1)
    regime, candidate, seed, teacher, out = job
    from augtune.trainables.kd import KDRunner
    from augtune.trainables.runner import run_to_completion

    cfg = regime_config(regime, Path(out), seed)
    start = time.perf_counter()
    history = run_to_completion(KDRunner(cfg, candidate, teacher, seed=seed), progress=False)
    return {"regime": regime, "candidate": candidate, "seed": seed, "seconds": time.perf_counter() - start,
            **{m: [row[m] for row in history] for m in CURVE_METRICS}}


def students(out: Path, workers: int, regimes: list[str]) -> None:
    log = out / "runs.jsonl"
    teachers = {r: teacher_for(r, out)["path"] for r in regimes}
    jobs = [(r, c, seed, teachers[r], str(out)) for seed in SEEDS for r in regimes for c in candidate_ids(r, out)]
    run_missing(_run_student, jobs, read_jsonl(log), log, workers)


def run_missing(run_one, jobs: list[tuple], logged: list[dict], log: Path, workers: int) -> None:
    """Runs the jobs whose (regime, candidate, seed) no logged row has, `workers` processes side by
    side, appending each finished row to `log` with the commit and the worker count."""
    done = {(row["regime"], row["candidate"], row["seed"]) for row in logged}
    todo = [job for job in jobs if job[:3] not in done]
    print(f"{len(todo)} student runs to do ({len(jobs) - len(todo)} of {len(jobs)} logged)", flush=True)
    if not todo:
        return
    context = multiprocessing.get_context("spawn")
    start = time.perf_counter()
    with context.Pool(workers) as pool, open(log, "a") as sink:
        for i, row in enumerate(pool.imap(run_one, todo), 1):
            row.update(commit=git_commit(), workers=workers)
            sink.write(json.dumps(row) + "\n")
            sink.flush()
            eta = (time.perf_counter() - start) / i * (len(todo) - i)
            cpu = f", {sum(row['epoch_cpu_seconds']):.0f} CPU s" if "epoch_cpu_seconds" in row else ""
            print(f"[{i}/{len(todo)}] {row['regime']} {row['candidate']} seed {row['seed']}: val "
                  f"{row['val_loss'][-1]:.4f} test {row['test_loss'][-1]:.4f} ({row['seconds']:.0f} s{cpu}; "
                  f"{eta / 60:.0f} min left)", flush=True)


# ---------------------------------------------------------------- proxy scores

def proxy(out: Path, regimes: list[str]) -> None:
    """Every proxy of the zoo for every candidate and proxy seed, from the config's proxy settings."""
    import torch

    from augtune.search.selection.proxy import score_candidates
    from augtune.trainables.data import load_data
    from augtune.trainables.engine import load_checkpoint, resolve_device

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    log = out / "proxy.jsonl"
    done = {(row["regime"], row["proxy_seed"]) for row in read_jsonl(log)}
    for regime in regimes:
        cfg = regime_config(regime, out)
        data, device = load_data(cfg.data), resolve_device(cfg.device)
        teacher, _ = load_checkpoint(teacher_for(regime, out)["path"], data, device)
        p = cfg.proxy
        for seed in PROXY_SEEDS:
            if (regime, seed) in done:
                continue
            scores = score_candidates(teacher, cfg.space.resolved(), data, device, passes=p.passes,
                                      group_batches=p.group_batches, batch_size=p.batch_size, bootstrap=0,
                                      seed=seed, progress=False)
            row = {"regime": regime, "proxy_seed": seed, "commit": git_commit(),
                   "scores": {s.candidate: {"t_stddev": s.t_stddev, **s.zoo} for s in scores},
                   "seconds": {s.candidate: s.seconds for s in scores}}
            with open(log, "a") as sink:
                sink.write(json.dumps(row) + "\n")
            print(f"proxy {regime} seed {seed}: {sum(row['seconds'].values()):.1f} s", flush=True)


# ---------------------------------------------------------------- the compact table

def build(out: Path, table: Path) -> None:
    """OUT's logs -> the compact table (format: augtune/search/tables/learning_curves.py)."""
    from augtune.search.tables.learning_curves import regime_from_runs, write_table

    runs, proxies = read_jsonl(out / "runs.jsonl"), read_jsonl(out / "proxy.jsonl")
    regimes = {}
    for regime in REGIMES:
        cfg = regime_config(regime, out)
        own = {(row["candidate"], row["seed"]): row for row in runs if row["regime"] == regime}  # the last log wins
        teacher_file = out / f"teacher-{data_key(regime)}.json"
        teacher = json.loads(teacher_file.read_text()) if teacher_file.is_file() else {}
        meta = {"overrides": REGIMES[regime],
                "teacher": {k: teacher.get(k) for k in ("seconds", "train_images", "test", "val")},
                "run_workers": sorted({r.get("workers") for r in own.values()} - {None}),
                "commits": sorted({r.get("commit") for r in own.values()} - {None})}
        regimes[regime] = regime_from_runs(regime, [c.id for c in cfg.space.resolved()], list(SEEDS),
                                           cfg.student.train.epochs, list(own.values()),
                                           [r for r in proxies if r["regime"] == regime], meta)
    write_table(table, regimes, protocol="benchmarks/lc_table.py",
                machine=f"{platform.machine()}, {os.cpu_count()} cores, cpu, torch threads 1 per run")
    filled = sum(int(r.ran().sum()) for r in regimes.values())
    total = sum(len(r.candidates) * len(SEEDS) for r in regimes.values())
    print(f"{table}: {filled}/{total} runs, {table.stat().st_size / 1024:.0f} KiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=("students", "proxy", "build"))
    parser.add_argument("--out", default="runs/lc-table", help="results folder (resumable)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--table", default=str(TABLE))
    parser.add_argument("--regimes", nargs="*", default=list(REGIMES), choices=list(REGIMES))
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.part == "students":
        students(out, args.workers, args.regimes)
    elif args.part == "proxy":
        proxy(out, args.regimes)
    else:
        build(out, Path(args.table))


if __name__ == "__main__":
    main()
