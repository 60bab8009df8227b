"""Accuracy of the SLA and SSD methods on the embedded default, over seeds, without Ray.

    .venv/bin/python benchmarks/methods_digits.py [--seeds 3] [--only sla|ssd]

SLA (configs/digits_sla.yaml, and its long-tailed variant): a CE baseline with the same network,
data, schedule and crop+flip, against SLA+SI, SLA+AG and SLA+SD from one SLA+SD run per seed.
SSD (configs/digits_ssd.yaml, all four stages per seed): stage-I classifier, stage-II LWS,
stage-III hard and soft heads, stage-IV LWS, overall and per shot group.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from augtune.search.sweep_config import load_config
from augtune.trainables.runner import run_to_completion
from augtune.trainables.sla import SLARunner
from augtune.trainables.ssd import SSDChainRunner
from augtune.trainables.supervised import SupervisedRunner

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def sla_study(seeds: int) -> None:
    variants = {"few-shot (30/class)": {},
                "long-tailed (n_max 60, IF 10)": {"data.samples_per_class": 60, "data.imbalance_factor": 10}}
    print("SLA on digits (resnet8, rotation M=4, 100 epochs for every column); test accuracy %, mean ± std over seeds")
    print(f"{'data':<30} {'baseline CE':>13} {'SLA+SI':>13} {'SLA+AG':>13} {'SLA+SD':>13}")
    for label, overrides in variants.items():
        rows = {"baseline": [], "si": [], "agg": [], "sd": []}
        for seed in range(seeds):
            cfg = load_config(CONFIGS / "digits_sla.yaml", {**overrides, "seed": seed})
            baseline = SupervisedRunner(cfg, cfg.student)
            rows["baseline"].append(run_to_completion(baseline, progress=False)[-1]["test_acc"])
            final = run_to_completion(SLARunner(cfg), progress=False)[-1]
            for key in ("si", "agg", "sd"):
                rows[key].append(final[f"test_{key}_acc"])
        print(f"{label:<30} " + " ".join(f"{_fmt(rows[k]):>13}" for k in ("baseline", "si", "agg", "sd")))


def ssd_study(seeds: int) -> None:
    heads = [("stage-I classifier", "stage1_classifier"), ("stage-II LWS", "stage2_lws"),
             ("stage-III hard head", "stage3_hard"), ("stage-III soft head", "stage3_soft"),
             ("stage-IV LWS (hard)", "stage4_lws")]
    results = {key: {g: [] for g in ("acc", "many_acc", "medium_acc", "few_acc")} for _, key in heads}
    for seed in range(seeds):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = load_config(CONFIGS / "digits_ssd.yaml", {"seed": seed, "ssd.start_stage": 1, "output_dir": tmp})
            chain = SSDChainRunner(cfg, work_dir=Path(tmp))
            while not chain.finished:
                final = chain.run_epoch()
        for _, key in heads:
            for group in results[key]:
                results[key][group].append(final[f"test_{key}_{group}"])
    counts = chain.data.class_counts
    print(f"\nSSD on long-tailed digits (class counts {counts}; many > {cfg.data.many_shot_threshold}, "
          f"few < {cfg.data.few_shot_threshold}); test accuracy %, mean ± std over {seeds} seeds")
    print(f"{'model':<22} {'overall':>13} {'many':>13} {'medium':>13} {'few':>13}")
    for label, key in heads:
        print(f"{label:<22} " + " ".join(f"{_fmt(results[key][g]):>13}"
                                         for g in ("acc", "many_acc", "medium_acc", "few_acc")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--only", choices=["sla", "ssd"])
    args = parser.parse_args()
    if args.only in (None, "sla"):
        sla_study(args.seeds)
    if args.only in (None, "ssd"):
        ssd_study(args.seeds)


if __name__ == "__main__":
    main()
