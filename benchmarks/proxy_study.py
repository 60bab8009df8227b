"""Does T.stddev carry information on the embedded default, and in which regime? A resumable
study without Ray (KD runs in a pool of worker processes, one thread each).

    .venv/bin/python benchmarks/proxy_study.py [--out runs/proxy-study] [--workers 2]

PROTOCOL (fixed before any result was looked at; do not change it after seeing numbers)
- Base: configs/digits_recipe.yaml (teacher resnet20, 60 epochs; KD T = 4, 0.1 CE + 0.9 KL on x and
  x'; student 30 epochs, lr 0.05, cosine; validation split 20 images per class; test split 450).
- Regimes (data x student):
    spc30-r8       30 images per class, resnet8           (the shipped default before this study)
    spc50-r8       50 per class, resnet8
    spc100-r8      100 per class, resnet8
    lt100-if10-r8  long-tailed digits, n_max 100, imbalance factor 10, resnet8
    spc30-half     30 per class, resnet8x0.5 (half width: a student well below its teacher)
    spc100-half    100 per class, resnet8x0.5
  One teacher per data setting (seed 0), its test loss reported beside the students'.
- Screen: in every regime, the 4 candidates at T.stddev ranks 1, 4, 8 and 11 of the 11 (spanning
  the proxy's range), 3 student seeds (0, 1, 2) each.
- (a) separability of each regime from the screen, on validation loss (selection data) and on
  test loss: one-way ANOVA F and p, ICC(1), reliability of the candidate means.
- Decision: the default regime is the cheapest regime (median student seconds in the screen)
  whose validation-loss ANOVA has p < 0.05; if none qualifies, the one with the largest F. The
  correlation is never consulted. Contrast regime: spc30-r8 (the old default), or, if that is
  the chosen one, the regime with the smallest F.
- Full: every candidate of the config x 3 seeds in the chosen and the contrast regime (screen
  runs are reused). For both: (a), (b) Pearson / Spearman / Kendall between T.stddev and mean
  student test loss (and validation loss) with seed-bootstrap 95% intervals and the noise
  ceiling, (c) top-k regret for k = 1..5 with the compute fraction.
Results: OUT/runs.jsonl (one line per student run, the resume log), OUT/study.json, OUT/study.md.
Compute: stated at the end of study.md (wall seconds and summed run seconds).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE_CONFIG = ROOT / "configs" / "digits_recipe.yaml"
SEEDS = (0, 1, 2)
SCREEN_RANKS = (1, 4, 8, 11)
ALPHA = 0.05
# every varied field is set explicitly, so the study does not depend on the base config's data regime
REGIMES = {
    "spc30-r8": {"data.samples_per_class": 30, "data.imbalance_factor": 1, "student.model": "resnet8"},
    "spc50-r8": {"data.samples_per_class": 50, "data.imbalance_factor": 1, "student.model": "resnet8"},
    "spc100-r8": {"data.samples_per_class": 100, "data.imbalance_factor": 1, "student.model": "resnet8"},
    "lt100-if10-r8": {"data.samples_per_class": 100, "data.imbalance_factor": 10, "student.model": "resnet8"},
    "spc30-half": {"data.samples_per_class": 30, "data.imbalance_factor": 1, "student.model": "resnet8x0.5"},
    "spc100-half": {"data.samples_per_class": 100, "data.imbalance_factor": 1, "student.model": "resnet8x0.5"},
}
OLD_DEFAULT = "spc30-r8"


def data_key(regime: str) -> str:
    overrides = REGIMES[regime]
    return f"spc{overrides['data.samples_per_class']}-if{overrides['data.imbalance_factor']}"


def regime_config(regime: str, out: Path, seed: int = 0):
    from augtune.search.sweep_config import load_config

    return load_config(BASE_CONFIG, {**REGIMES[regime], "seed": seed, "output_dir": str(out / "work"),
                                     "name": data_key(regime)})


# ---------------------------------------------------------------- teacher and proxy per data setting

def prepare(regime: str, out: Path) -> dict:
    """Teacher + T.stddev of every candidate for the regime's data (cached in OUT/proxy-KEY.json)."""
    cache = out / f"proxy-{data_key(regime)}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    from augtune.search.selection.proxy import score_candidates
    from augtune.search.standalone.teacher import obtain_teacher
    from augtune.trainables.data import load_data
    from augtune.trainables.engine import evaluate_split, resolve_device

    cfg = regime_config(regime, out)
    data = load_data(cfg.data)
    device = resolve_device(cfg.device)
    start = time.perf_counter()
    teacher, path, _ = obtain_teacher(cfg, data, device, progress=False)
    teacher_seconds = time.perf_counter() - start
    p = cfg.proxy
    scores = score_candidates(teacher, cfg.space.resolved(), data, device, passes=p.passes,
                              group_batches=p.group_batches, batch_size=p.batch_size, bootstrap=p.bootstrap,
                              confidence=p.confidence, seed=cfg.seed, progress=False)
    record = {"teacher": str(path), "teacher_seconds": teacher_seconds,
              "teacher_test": evaluate_split(teacher, data, device),
              "teacher_val": evaluate_split(teacher, data, device, "val"),
              "train_images": len(data.train),
              "scores": {s.candidate: s.t_stddev for s in scores},
              "ranked": [s.candidate for s in scores], "proxy_seconds": sum(s.seconds for s in scores)}
    cache.write_text(json.dumps(record, indent=2))
    return record


# ---------------------------------------------------------------- student runs

def _run_one(job: tuple[str, str, int, str, str]) -> dict:
    import torch

    torch.set_num_threads(1)
    regime, candidate, seed, teacher, out = job
    from augtune.trainables.kd import KDRunner
    from augtune.trainables.runner import run_to_completion

    cfg = regime_config(regime, Path(out), seed)
    start = time.perf_counter()
    final = run_to_completion(KDRunner(cfg, candidate, teacher, seed=seed), progress=False)[-1]
    return {"regime": regime, "candidate": candidate, "seed": seed, "seconds": time.perf_counter() - start,
            **{k: final[k] for k in ("val_loss", "val_acc", "test_loss", "test_acc")}}


def run_jobs(jobs: list[tuple], log: Path, workers: int) -> None:
    done = {(r["regime"], r["candidate"], r["seed"]) for r in read_log(log)}
    todo = [j for j in jobs if (j[0], j[1], j[2]) not in done]
    if not todo:
        return
    print(f"  {len(todo)} student runs ({len(jobs) - len(todo)} already logged)", flush=True)
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers) as pool, open(log, "a") as sink:
        for i, row in enumerate(pool.imap_unordered(_run_one, todo), 1):
            sink.write(json.dumps(row) + "\n")
            sink.flush()
            print(f"  [{i}/{len(todo)}] {row['regime']} {row['candidate']} seed {row['seed']}: "
                  f"val {row['val_loss']:.4f} test {row['test_loss']:.4f} ({row['seconds']:.0f} s)", flush=True)


def read_log(log: Path) -> list[dict]:
    if not log.is_file():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------- statistics

def regime_stats(regime: str, rows: list[dict], proxy: dict, full: bool) -> dict:
    from augtune.search.selection.trust import noise_ceiling, seed_bootstrap, separability, topk_regret

    by_candidate: dict[str, list[dict]] = {}
    for r in rows:
        if r["regime"] == regime:
            by_candidate.setdefault(r["candidate"], []).append(r)
    candidates = [c for c in proxy["ranked"] if c in by_candidate]
    out = {"regime": regime, "candidates": len(candidates), "runs": sum(len(by_candidate[c]) for c in candidates),
           "teacher_test_loss": proxy["teacher_test"]["loss"], "teacher_test_acc": proxy["teacher_test"]["acc"],
           "train_images": proxy["train_images"],
           "median_run_seconds": statistics.median(r["seconds"] for c in candidates for r in by_candidate[c]),
           "mean_student_test_loss": statistics.mean(r["test_loss"] for c in candidates for r in by_candidate[c])}
    for split in ("val", "test"):
        groups = [[r[f"{split}_loss"] for r in by_candidate[c]] for c in candidates]
        sep = separability(groups)
        out[f"{split}_anova_f"], out[f"{split}_anova_p"] = sep.f, sep.p
        out[f"{split}_icc1"], out[f"{split}_reliability"] = sep.icc1, sep.reliability
        out[f"{split}_noise_ceiling"] = noise_ceiling(sep)
        out[f"{split}_between_sd"], out[f"{split}_within_sd"] = sep.between_sd, sep.within_sd
        if full or len(candidates) >= 4:
            from augtune.search.results.report import correlate

            t = [proxy["scores"][c] for c in candidates]
            means = [statistics.mean(g) for g in groups]
            corr = correlate(t, means, f"{split}_loss")
            intervals = seed_bootstrap(t, groups, resamples=2000, seed=0)
            for name in ("pearson", "spearman", "kendall"):
                out[f"{split}_{name}"] = getattr(corr, name)
                out[f"{split}_{name}_p"] = getattr(corr, f"{name}_p")
                out[f"{split}_{name}_interval"] = intervals[name]
            out[f"{split}_regret"] = topk_regret(candidates, t, means)
            out[f"{split}_means"] = dict(zip(candidates, means))
    return out


def choose_regime(screen: dict[str, dict]) -> tuple[str, str, str]:
    """The protocol's rule: cheapest distinguishable regime (validation-loss ANOVA), else max F."""
    distinguishable = [r for r, s in screen.items() if s["val_anova_p"] < ALPHA]
    if distinguishable:
        chosen = min(distinguishable, key=lambda r: screen[r]["median_run_seconds"])
        why = (f"cheapest of the regimes whose students separate the candidates (validation ANOVA p < {ALPHA}): "
               f"{', '.join(sorted(distinguishable))}")
    else:
        chosen = max(screen, key=lambda r: screen[r]["val_anova_f"])
        why = f"no regime reached validation ANOVA p < {ALPHA}; largest F"
    contrast = OLD_DEFAULT if chosen != OLD_DEFAULT else min(screen, key=lambda r: screen[r]["val_anova_f"])
    return chosen, contrast, why


def _interval(s: dict, key: str) -> str:
    low, high = s[f"{key}_interval"]
    return f"{s[key]:+.2f} [{low:+.2f}, {high:+.2f}]"


def markdown(screen: dict, full: dict, chosen: str, contrast: str, why: str, compute: dict) -> str:
    lines = ["## Screen: can students tell the candidates apart? (4 candidates spanning the proxy, 3 seeds)", "",
             "| regime | train images | teacher test loss | mean student test loss | val ANOVA F (p) | val ICC(1) | "
             "test ANOVA F (p) | test ICC(1) | seed sd (test) | spread of means (test) | s / run |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in screen.items():
        lines.append(f"| {name} | {s['train_images']} | {s['teacher_test_loss']:.4f} | {s['mean_student_test_loss']:.4f} | "
                     f"{s['val_anova_f']:.2f} ({s['val_anova_p']:.2g}) | {s['val_icc1']:.2f} | "
                     f"{s['test_anova_f']:.2f} ({s['test_anova_p']:.2g}) | {s['test_icc1']:.2f} | "
                     f"{s['test_within_sd']:.4f} | {s['test_between_sd']:.4f} | {s['median_run_seconds']:.1f} |")
    lines += ["", f"Chosen regime: **{chosen}** ({why}). Contrast: **{contrast}**.", "",
              "## Full: every candidate, 3 seeds", "",
              "| regime | target | Pearson | Spearman | Kendall | noise ceiling | ANOVA p |",
              "|---|---|---|---|---|---|---|"]
    for name, s in full.items():
        for split in ("test", "val"):
            lines.append(f"| {name} | {split} loss | {_interval(s, split + '_pearson')} | "
                         f"{_interval(s, split + '_spearman')} | {_interval(s, split + '_kendall')} | "
                         f"{s[split + '_noise_ceiling']:.2f} | {s[split + '_anova_p']:.2g} |")
    lines += ["", "Top-k regret (test loss of the best kept candidate minus the exhaustive winner's):", "",
              "| regime | " + " | ".join(f"k={k}" for k in range(1, 6)) + " |", "|---|" + "---|" * 5]
    for name, s in full.items():
        cells = [f"{r['regret']:.4f} ({r['compute_fraction']:.0%})" for r in s["test_regret"]]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"Compute: {compute['wall_seconds'] / 60:.1f} min wall with {compute['workers']} workers; "
                  f"{compute['run_seconds'] / 60:.1f} min of student runs ({compute['runs']} runs), "
                  f"{compute['prepare_seconds'] / 60:.1f} min of teachers + proxy."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/proxy-study", help="results folder (resumable)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--regimes", nargs="*", default=list(REGIMES), choices=list(REGIMES))
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    log = out / "runs.jsonl"
    start = time.perf_counter()

    print("teachers and T.stddev per data setting", flush=True)
    t0 = time.perf_counter()
    proxies = {r: prepare(r, out) for r in args.regimes}
    prepare_seconds = sum(p["teacher_seconds"] + p["proxy_seconds"] for p in
                          {data_key(r): proxies[r] for r in args.regimes}.values())
    print(f"  done in {time.perf_counter() - t0:.0f} s", flush=True)

    print("screen", flush=True)
    jobs = [(r, proxies[r]["ranked"][rank - 1], seed, proxies[r]["teacher"], str(out))
            for r in args.regimes for rank in SCREEN_RANKS for seed in SEEDS]
    run_jobs(jobs, log, args.workers)
    rows = read_log(log)
    screen_sets = {r: {proxies[r]["ranked"][rank - 1] for rank in SCREEN_RANKS} for r in args.regimes}
    screen = {r: regime_stats(r, [x for x in rows if x["candidate"] in screen_sets[r]], proxies[r], full=False)
              for r in args.regimes}
    chosen, contrast, why = choose_regime(screen)
    if contrast not in args.regimes:
        contrast = chosen
    print(f"chosen regime: {chosen} ({why}); contrast: {contrast}", flush=True)

    print("full", flush=True)
    full_regimes = list(dict.fromkeys([chosen, contrast]))
    jobs = [(r, c, seed, proxies[r]["teacher"], str(out)) for r in full_regimes for c in proxies[r]["ranked"]
            for seed in SEEDS]
    run_jobs(jobs, log, args.workers)
    rows = read_log(log)
    full = {r: regime_stats(r, rows, proxies[r], full=True) for r in full_regimes}
    compute = {"wall_seconds": time.perf_counter() - start, "workers": args.workers,
               "run_seconds": sum(r["seconds"] for r in rows), "runs": len(rows), "prepare_seconds": prepare_seconds}
    (out / "study.json").write_text(json.dumps({"screen": screen, "full": full, "chosen": chosen,
                                                "contrast": contrast, "why": why, "compute": compute,
                                                "proxies": proxies}, indent=2))
    text = markdown(screen, full, chosen, contrast, why, compute)
    (out / "study.md").write_text(text + "\n")
    print("\n" + text)


if __name__ == "__main__":
    main()
