"""Ray Tune's per-trial overhead on the embedded default, with and without actor reuse, in one run.

    .venv/bin/python benchmarks/tune_overhead.py [--seeds 1] [--epochs 6] [--concurrency 2]

Both variants run the same grid (the 11 candidates of configs/digits_recipe.yaml x --seeds, the
config's hyperparameters, FIFO) through the sweep driver's own tuner on one local Ray. The
overhead per trial is (Tune wall seconds x concurrency - sum of the trials' training seconds) /
trials: actor start, imports, data loading, checkpoints, Tune's bookkeeping.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

    import ray
    import torch
    from ray import tune

    from augtune.search.sweep_config import load_config
    from augtune.search.sweep.tuners import build_grid_tuner
    from augtune.trainables.data import load_data
    from augtune.trainables.engine import save_checkpoint
    from augtune.trainables.models import build_model

    ray.init(num_cpus=args.concurrency, include_dashboard=False, log_to_driver=False)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for reuse in (False, True):
            cfg = load_config(ROOT / "configs" / "digits_recipe.yaml", {
                "output_dir": tmp, "student.train.epochs": args.epochs, "search.reuse_actors": reuse,
                "search.max_concurrent": args.concurrency, "search.storage_path": str(Path(tmp) / "ray")})
            data = load_data(cfg.data)
            torch.manual_seed(0)
            teacher = save_checkpoint(Path(tmp) / "teacher.pt", build_model(cfg.teacher.model, data.num_classes,
                                                                            data.channels), cfg.teacher.model, data)
            tuner = build_grid_tuner(cfg, [c.id for c in cfg.space.resolved()], args.seeds, teacher,
                                     tune.Callback(), f"overhead-{reuse}")
            start = time.perf_counter()
            grid = tuner.fit()
            wall = time.perf_counter() - start
            trained = sum(r.metrics.get("time_total_s", 0.0) for r in grid)
            rows.append((reuse, len(grid), wall, trained, (wall * args.concurrency - trained) / len(grid)))
    ray.shutdown()
    print(f"Tune overhead per trial, digits default, {args.epochs}-epoch KD trials, concurrency {args.concurrency}")
    print(f"{'actor reuse':<12} {'trials':>6} {'Tune wall s':>12} {'sum train s':>12} {'overhead s/trial':>17}")
    for reuse, count, wall, trained, overhead in rows:
        print(f"{'yes' if reuse else 'no':<12} {count:>6} {wall:>12.1f} {trained:>12.1f} {overhead:>17.2f}")
    print(f"ratio (no reuse / reuse): {rows[0][4] / max(rows[1][4], 1e-9):.1f}x")


if __name__ == "__main__":
    main()
