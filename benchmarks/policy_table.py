"""The learning-curve table of the policy space: policies sampled from the default space
(spaces/policies.py) and the fixed recipes of the first table, every one x every student seed
trained in full, per-epoch curves and per-epoch seconds, the proxy zoo from several proxy seeds.
Resumable: each finished run is one line of OUT/runs.jsonl, each proxy set one line of
OUT/proxy.jsonl; `build` writes the compact table. On a machine without OUT's logs, the runs and
proxy scores the committed table holds count as done (rebuilt from it), so the study continues.

    .venv/bin/python benchmarks/policy_table.py students [--out runs/policy-table] [--workers 2]
    .venv/bin/python benchmarks/policy_table.py proxy    [--out runs/policy-table]
    .venv/bin/python benchmarks/policy_table.py build    [--out runs/policy-table] [--table FILE]
(the table: benchmarks/tables/digits-kd-policies.json.gz)

PROTOCOL (fixed before any run; do not change it after seeing numbers)
- Base: configs/digits_recipe.yaml's experiment as in benchmarks/lc_table.py (teacher resnet20 60
  epochs; KD T = 4, 0.1 CE + 0.9 KL on x and x'; student resnet8 30 epochs, lr 0.05, cosine,
  batch 32; validation 20 images per class; test 450). No search over hyperparameters.
- Regimes, with different teachers and data (each its own teacher, seed 0, on its own data):
    lt100-if10-r8  the embedded default: long-tailed digits (n_max 100, IF 10)
    spc30-r8       balanced, 30 images per class
- Policies: POLICY_COUNT = 48 drawn from spaces.policies.DEFAULT_SPACE with seed POLICY_SEED = 0
  (PolicySpace.sample), the same for both regimes; plus the 15 candidates of the first table
  (benchmarks/tables/digits-kd-lc.json.gz) as the fixed recipes (60 in all: 3 sampled policies are
  recipes). The recipes are trained again, not reused: the teacher retrained by today's code
  (seed 0) is not the first table's (default regime: test loss 0.2795 against 0.2203), so their
  curves would come from another teacher.
- Student seeds 0-3; runs ordered seed-major, so a partial table has whole seeds.
- Seconds. Every run is single-threaded (torch threads 1) and records each epoch's wall seconds and
  its process CPU seconds. CPU seconds count only the run's own work, so runs side by side or other
  load on the machine cannot inflate one candidate's (wall seconds can: the first table saw 2.5x
  outliers). The replay charges CPU seconds.
- Proxy: T.stddev and the zoo for every candidate, proxy seeds 0, 1, 2, the config's proxy settings
  (10 passes, groups of 5 batches of 32), scored together in shared passes (8 candidates per
  teacher forward), single-threaded; each candidate's seconds are its share of the call's wall
  seconds scaled to the call's own CPU seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lc_table  # noqa: E402  (the first table's regimes, teachers and logs)

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "benchmarks" / "tables" / "digits-kd-policies.json.gz"
REGIMES = ("lt100-if10-r8", "spc30-r8")
SEEDS = (0, 1, 2, 3)
PROXY_SEEDS = (0, 1, 2)
POLICY_COUNT, POLICY_SEED = 48, 0
CURVE_METRICS = ("val_loss", "val_acc", "test_loss", "test_acc", "epoch_seconds")


def recipes() -> list[str]:
    from augtune.search.tables.learning_curves import load_table

    return list(load_table(lc_table.TABLE)[REGIMES[0]].candidates)


def sampled_policies() -> list[str]:
    from augtune.spaces.policies import DEFAULT_POLICY_SPACE

    return [p.id for p in DEFAULT_POLICY_SPACE.sample(POLICY_COUNT, POLICY_SEED)]


def candidates() -> list[str]:
    """The recipes first, then the sampled policies that are not among them."""
    fixed = recipes()
    return fixed + [p for p in sampled_policies() if p not in fixed]


def regime_config(regime: str, out: Path, seed: int = 0):
    return lc_table.regime_config(regime, out, seed)


# ---------------------------------------------------------------- student runs

def _run_student(job: tuple[str, str, int, str, str]) -> dict:
    import torch

    torch.set_num_threads(1)
    regime, candidate, seed, teacher, out = job
    from augtune.trainables.kd import KDRunner
    from augtune.trainables.runner import run_to_completion

    cfg = regime_config(regime, Path(out), seed)
    cpu = []
    last = [time.process_time()]

    def on_epoch(_metrics):
        now = time.process_time()
        cpu.append(now - last[0])
        last[0] = now

    start = time.perf_counter()
    history = run_to_completion(KDRunner(cfg, candidate, teacher, seed=seed), on_epoch=on_epoch, progress=False)
    return {"regime": regime, "candidate": candidate, "seed": seed, "seconds": time.perf_counter() - start,
            "epoch_cpu_seconds": cpu, **{m: [row[m] for row in history] for m in CURVE_METRICS}}


def committed_runs(table: Optional[Path] = None) -> list[dict]:
    """The runs the committed table already holds, as log rows: a study continued on another machine
    (runs/ is not committed) picks up where the last build left it."""
    from augtune.search.tables.learning_curves import load_table

    table = table or TABLE
    if not table.is_file():
        return []
    rows = []
    for name, regime in load_table(table).items():
        ran = regime.ran()
        for c, candidate in enumerate(regime.candidates):
            for s, seed in enumerate(regime.seeds):
                if ran[c, s]:
                    rows.append({"regime": name, "candidate": candidate, "seed": seed, "from_table": True,
                                 **{m: [float(v) for v in regime.curves[m][c, s]] for m in regime.curves}})
    return rows


def logged_runs(out: Path) -> list[dict]:
    """OUT/runs.jsonl, and the committed table's runs that the log does not hold."""
    rows = lc_table.read_jsonl(out / "runs.jsonl")
    logged = {(r["regime"], r["candidate"], r["seed"]) for r in rows}
    return rows + [r for r in committed_runs() if (r["regime"], r["candidate"], r["seed"]) not in logged]


def students(out: Path, workers: int) -> None:
    log = out / "runs.jsonl"
    teachers = {r: lc_table.teacher_for(r, out)["path"] for r in REGIMES}
    jobs = [(r, c, seed, teachers[r], str(out)) for seed in SEEDS for r in REGIMES for c in candidates()]
    lc_table.run_missing(_run_student, jobs, logged_runs(out), log, workers)


# ---------------------------------------------------------------- proxy scores

def proxy(out: Path) -> None:
    import torch

    from augtune.search.selection.proxy import score_candidates
    from augtune.spaces.candidates import parse_candidate
    from augtune.trainables.data import load_data
    from augtune.trainables.engine import load_checkpoint, resolve_device

    torch.set_num_threads(1)
    log = out / "proxy.jsonl"
    done = {(row["regime"], row["proxy_seed"]) for row in lc_table.read_jsonl(log)}
    ids = candidates()
    for regime in REGIMES:
        cfg = regime_config(regime, out)
        data, device = load_data(cfg.data), resolve_device(cfg.device)
        teacher, _ = load_checkpoint(lc_table.teacher_for(regime, out)["path"], data, device)
        p = cfg.proxy
        for seed in PROXY_SEEDS:
            if (regime, seed) in done:
                continue
            cpu_before = time.process_time()
            scores = score_candidates(teacher, [parse_candidate(c) for c in ids], data, device, passes=p.passes,
                                      group_batches=p.group_batches, batch_size=p.batch_size, bootstrap=0,
                                      seed=seed, progress=False, policies_per_forward=p.policies_per_forward)
            cpu = time.process_time() - cpu_before
            wall = sum(s.seconds for s in scores)
            # each candidate's share of the wall seconds, scaled to the call's own CPU seconds
            row = {"regime": regime, "proxy_seed": seed, "commit": lc_table.git_commit(),
                   "scores": {s.candidate: {"t_stddev": s.t_stddev, **s.zoo} for s in scores},
                   "seconds": {s.candidate: s.seconds * cpu / wall for s in scores},
                   "wall_seconds": {s.candidate: s.seconds for s in scores}, "cpu_seconds": cpu}
            with open(log, "a") as sink:
                sink.write(json.dumps(row) + "\n")
            print(f"proxy {regime} seed {seed}: {sum(row['seconds'].values()):.1f} s", flush=True)


def committed_teacher(regime: str, table: Optional[Path] = None) -> dict:
    """The teacher record the committed table holds (a continued study retrains the teacher, seed 0,
    and its own record then sits in OUT: compare the two test losses to see that it is the same)."""
    from augtune.search.tables.learning_curves import load_table

    table = table or TABLE
    if not table.is_file():
        return {}
    return dict(load_table(table)[regime].meta.get("teacher") or {})


def committed_proxy_rows(table: Optional[Path] = None) -> list[dict]:
    from augtune.search.tables.learning_curves import load_table

    rows = []
    for name, regime in load_table(table or TABLE).items():
        for p, proxy_seed in enumerate(regime.meta.get("proxy_seeds", [])):
            rows.append({"regime": name, "proxy_seed": proxy_seed,
                         "scores": {c: {k: float(v[i, p]) for k, v in regime.proxy.items()}
                                    for i, c in enumerate(regime.candidates)},
                         "seconds": {c: float(regime.proxy_seconds[i, p]) for i, c in enumerate(regime.candidates)}})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=("students", "proxy", "build", "list"))
    parser.add_argument("--out", default="runs/policy-table", help="results folder (resumable)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--table", default=str(TABLE))
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.part == "students":
        students(out, args.workers)
    elif args.part == "proxy":
        proxy(out)
    elif args.part == "list":
        print("\n".join(candidates()))
    else:
        build(out, Path(args.table))


def build(out: Path, table: Path) -> None:
    """OUT's logs -> the compact table (format: augtune/search/tables/learning_curves.py, version 2)."""
    from augtune.search.tables.learning_curves import write_table
    from augtune.search.tables.learning_curves import regime_from_runs

    runs, proxies = logged_runs(out), lc_table.read_jsonl(out / "proxy.jsonl")
    if not proxies and TABLE.is_file():  # the committed table's proxy scores, when this machine has no log
        proxies = committed_proxy_rows()
    ids = candidates()
    fixed = recipes()
    regimes = {}
    for regime in REGIMES:
        epochs = regime_config(regime, out).student.train.epochs
        own = {(row["candidate"], row["seed"]): row for row in runs if row["regime"] == regime}  # the last log wins
        teacher_file = out / f"teacher-{lc_table.data_key(regime)}.json"
        teacher = json.loads(teacher_file.read_text()) if teacher_file.is_file() else committed_teacher(regime)
        meta = {"overrides": lc_table.REGIMES[regime],
                "teacher": {k: teacher.get(k) for k in ("seconds", "train_images", "test", "val")},
                "fixed_recipes": fixed, "policy_sample": {"count": POLICY_COUNT, "seed": POLICY_SEED},
                "run_workers": sorted({r.get("workers") for r in own.values()} - {None}),
                "commits": sorted({r.get("commit") for r in own.values()} - {None})}
        regimes[regime] = regime_from_runs(regime, ids, list(SEEDS), epochs, list(own.values()),
                                           [r for r in proxies if r["regime"] == regime], meta)
    write_table(table, regimes, protocol="benchmarks/policy_table.py",
                machine=f"{platform.machine()}, {os.cpu_count()} cores, cpu, torch threads 1 per run; "
                        "epoch_cpu_seconds: each run's own CPU seconds")
    filled = sum(int(r.ran().sum()) for r in regimes.values())
    total = sum(len(r.candidates) * len(SEEDS) for r in regimes.values())
    print(f"{table}: {filled}/{total} runs, {table.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
