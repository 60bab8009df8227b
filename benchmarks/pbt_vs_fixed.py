"""PBT schedules against the best fixed augmentation of the same budget, on the embedded default.

    .venv/bin/python benchmarks/pbt_vs_fixed.py [--out runs/pbt-vs-fixed] [--seeds 0 1 2]

PROTOCOL (fixed before any result was looked at)
- Base: configs/digits_pbt.yaml (long-tailed digits, KD resnet20 -> resnet8, 30 student epochs;
  the proxy keeps its 3 best candidates; the same hyperparameter and kind.param domains).
- Arms, same budget (8 trials x 30 epochs = 240 trial-epochs, same teacher, same survivors):
    pbt    search.scheduler.kind pbt (population 8, interval 5, quantile 0.25, resample 0.25)
    fixed  search.scheduler.kind fifo + search.algorithm random: 8 trials, each one candidate
           and one draw of the same domains, held for the whole run
- Each arm picks its best trial by validation loss (what a user gets); reported: that trial's
  held-out test loss and accuracy. One sweep per search seed (0, 1, 2) and arm.
- Statistics: per-seed table, mean of each arm, the paired difference pbt - fixed of the test
  loss with a t 95% interval over the seeds. Published whatever it shows.
Results: OUT/results.jsonl (one line per sweep, resumable), printed as a table at the end.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE_CONFIG = ROOT / "configs" / "digits_pbt.yaml"
ARMS = {"pbt": {}, "fixed": {"search.scheduler.kind": "fifo", "search.algorithm": "random"}}


def run_arm(arm: str, seed: int, out: Path) -> dict:
    from augtune.search.sweep_config import load_config
    from augtune.search.sweep.driver import run_sweep

    overrides = {"output_dir": str(out / "runs"), "tracking.uri": f"sqlite:///{out / 'mlflow.db'}",
                 "tracking.experiment": f"{arm}-seed{seed}", "search.seed": seed, **ARMS[arm]}
    cfg = load_config(BASE_CONFIG, overrides)
    start = time.perf_counter()
    outcome = run_sweep(cfg, progress=False)
    best = outcome.best
    return {"arm": arm, "seed": seed, "augmentation": best.augmentation, "val_loss": best.val_loss,
            "test_loss": best["test_loss"], "test_acc": best["test_acc"],
            "trial_epochs": sum(t.epochs for t in outcome.trials), "wall_seconds": time.perf_counter() - start}


def t_interval(values: list[float]) -> tuple[float, float, float]:
    from scipy import stats

    m = statistics.mean(values)
    if len(values) < 2:
        return m, float("nan"), float("nan")
    half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5
    return m, m - half, m + half


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "pbt-vs-fixed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "results.jsonl"
    done = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    for seed in args.seeds:
        for arm in ARMS:
            if any(r["arm"] == arm and r["seed"] == seed for r in done):
                continue
            row = run_arm(arm, seed, args.out)
            done.append(row)
            with open(log, "a") as handle:
                handle.write(json.dumps(row) + "\n")
    print(f"\n{'seed':>4}  {'arm':<6}  {'chosen (val)':<40}  {'val_loss':>8}  {'test_loss':>9}  {'test_acc':>8}  "
          f"{'trial-epochs':>12}  {'wall s':>6}")
    for r in sorted(done, key=lambda r: (r["seed"], r["arm"])):
        print(f"{r['seed']:>4}  {r['arm']:<6}  {r['augmentation']:<40}  {r['val_loss']:>8.4f}  {r['test_loss']:>9.4f}  "
              f"{r['test_acc']:>8.3f}  {r['trial_epochs']:>12}  {r['wall_seconds']:>6.0f}")
    seeds = sorted({r["seed"] for r in done})
    by = {(r["arm"], r["seed"]): r for r in done}
    paired = [s for s in seeds if ("pbt", s) in by and ("fixed", s) in by]
    for arm in ARMS:
        losses = [by[(arm, s)]["test_loss"] for s in paired]
        m, low, high = t_interval(losses)
        print(f"{arm:<6} mean test loss {m:.4f} [{low:.4f}, {high:.4f}]  "
              f"mean test acc {statistics.mean(by[(arm, s)]['test_acc'] for s in paired):.3f}")
    m, low, high = t_interval([by[("pbt", s)]["test_loss"] - by[("fixed", s)]["test_loss"] for s in paired])
    print(f"pbt - fixed test loss: {m:+.4f}, t 95% interval [{low:+.4f}, {high:+.4f}] over {len(paired)} seeds")


if __name__ == "__main__":
    main()
