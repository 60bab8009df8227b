"""Tune phases on a local Ray whose workers import a trial actor's modules before they take work
(`preload_python_modules`, what `augtune sweep` started from 2026-12-03 to 2026-12-04), against a
plain local Ray, in one run. Re-measured on 2026-12-04 it gained nothing (benchmarks/README.md):
Tune's actors carry a runtime env and never land in the workers Ray starts ahead.

    .venv/bin/python benchmarks/worker_preload.py [--phases 3] [--epochs 3] [--repeats 2] [--idle 5]

Each variant runs in its own process (Ray's system config is fixed when Ray starts), alternating
off/on `--repeats` times. A process starts Ray the way the sweep's `init_ray` does, waits `--idle`
seconds (the driver's work between starting Ray and its first Tune phase: the teacher cache fill
on the default), then runs `--phases` grids one after another, each 2 candidates x 1 seed of
configs/digits_recipe.yaml on 2 slots, as the sweep's search, audit and baseline phases do. Per
phase: (Tune wall x slots - the trials' training seconds) / trials.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SLOTS = 2
# what a fresh trial actor imports before its first epoch: torch, Ray Tune and augtune's methods,
# and torch's compiler stack, which every torch optimiser's constructor imports
PRELOAD_MODULES = ("augtune.trainables.tune_trainables", "torch._dynamo")


def one_variant(preload: bool, phases: int, epochs: int, idle: float) -> list[dict[str, float]]:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    import ray
    import torch
    from ray import tune

    from augtune.search.sweep.tuners import build_grid_tuner
    from augtune.search.sweep_config import load_config
    from augtune.trainables.data import load_data
    from augtune.trainables.engine import save_checkpoint
    from augtune.trainables.models import build_model

    warm = {"_system_config": {"preload_python_modules": list(PRELOAD_MODULES)}} if preload else {}
    ray.init(num_cpus=SLOTS, include_dashboard=False, log_to_driver=False, **warm)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(ROOT / "configs" / "digits_recipe.yaml", {
            "output_dir": tmp, "student.train.epochs": epochs, "search.max_concurrent": SLOTS,
            "search.storage_path": str(Path(tmp) / "ray")})
        data = load_data(cfg.data)
        torch.manual_seed(0)
        teacher = save_checkpoint(Path(tmp) / "teacher.pt", build_model(cfg.teacher.model, data.num_classes,
                                                                        data.channels), cfg.teacher.model, data)
        candidates = [c.id for c in cfg.space.resolved()]
        time.sleep(idle)
        for phase in range(phases):
            chosen = candidates[2 * phase % len(candidates):][:2]
            tuner = build_grid_tuner(cfg, chosen, 1, teacher, tune.Callback(), f"phase-{phase}")
            start = time.perf_counter()
            grid = tuner.fit()
            wall = time.perf_counter() - start
            trained = sum(r.metrics.get("time_total_s", 0.0) for r in grid)
            rows.append({"phase": phase, "trials": len(grid), "wall": wall, "trained": trained,
                         "overhead": (wall * SLOTS - trained) / len(grid)})
    ray.shutdown()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phases", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--idle", type=float, default=5.0)
    parser.add_argument("--variant", choices=("off", "on"), help=argparse.SUPPRESS)  # one child process
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(one_variant(args.variant == "on", args.phases, args.epochs, args.idle)))
        return
    runs: dict[str, list[list[dict[str, float]]]] = {"off": [], "on": []}
    for repeat in range(args.repeats):
        for variant in ("off", "on"):
            done = subprocess.run([sys.executable, __file__, "--variant", variant, "--phases", str(args.phases),
                                   "--epochs", str(args.epochs), "--idle", str(args.idle)],
                                  capture_output=True, text=True, check=True)
            runs[variant].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"repeat {repeat + 1}/{args.repeats} preload {variant}: "
                  + ", ".join(f"{r['overhead']:.2f}" for r in runs[variant][-1]) + " s/trial", flush=True)
    print(f"\nTune overhead per trial (s), {args.phases} phases of 2 trials on {SLOTS} slots, {args.epochs}-epoch KD "
          f"trials, median of {args.repeats} runs per variant")
    print(f"{'phase':<8} {'no preload':>11} {'preload':>9} {'ratio':>7}")
    for phase in range(args.phases):
        off = statistics.median(run[phase]["overhead"] for run in runs["off"])
        on = statistics.median(run[phase]["overhead"] for run in runs["on"])
        print(f"{phase + 1:<8} {off:>11.2f} {on:>9.2f} {off / max(on, 1e-9):>6.1f}x")
    off = statistics.median(sum(r["overhead"] for r in run) / args.phases for run in runs["off"])
    on = statistics.median(sum(r["overhead"] for r in run) / args.phases for run in runs["on"])
    print(f"{'all':<8} {off:>11.2f} {on:>9.2f} {off / max(on, 1e-9):>6.1f}x")


if __name__ == "__main__":
    main()
