"""Does the search pay for itself? Candidate-search strategies replayed against the learning-curve
table (benchmarks/lc_table.py), through the project's own decision code and Ray's ASHA scheduler.

    .venv/bin/python benchmarks/replay_study.py [--table benchmarks/tables/digits-kd-lc.json.gz]
                                                [--out benchmarks/results/replay] [--replays 200]

PROTOCOL (fixed before any replay was run; do not change it after seeing numbers)
- Table: every regime of the table; a regime is replayed only with >= 3 seeds for every candidate
  (2 seen by a search, >= 1 held out); the report says how many seeds each regime had.
- Replays: 200 per strategy and regime. In each, every candidate's seeds are shuffled: a search
  sees the first 2 (one-seed strategies the first only), the rest are the truth; the proxy seed
  is drawn from the table's proxy seeds. Regret = true mean test loss (held-out seeds) of the
  chosen candidate minus the lowest true mean test loss. Choices are made on validation loss.
- Compute = epochs trained x the candidate's mean per-epoch seconds (+ the proxy's seconds for
  every candidate when a proxy is used), as a fraction of one full run of every candidate. The
  hyperparameter search that follows the choice of candidates (Optuna over lr, temperature) is
  the same for every strategy and not counted; the table holds the config's hyperparameters.
- Strategies (STRATEGIES below): exhaustive; random k (k = 1..5); no search (trivialaugment,
  cutmix_pick keep 0.5); synchronous successive halving over all candidates (eta 3, min 1, 2, 3, 6
  epochs); ASHA over all candidates, random arrival, 2 workers (Ray's AsyncHyperBandScheduler,
  reduction factor 3, grace 1, 3, 6); T.stddev top-k (k = 1..5); today's default (T.stddev top 3
  + 1 sentinel, 2 audit seeds, expansion up to 2); each zoo proxy top-1 and top-3 and with the
  audit; proxy-ordered successive halving (the T.stddev top 5 and top 9 enter, min 3 epochs);
  proxy-ordered ASHA (arrival in T.stddev order, grace 3); the low-fidelity student (every
  candidate 3 epochs, top 3 to full length).
- Seed noise of a regime: the pooled within-candidate standard deviation of final test loss.
- Decision: a strategy is *within seed noise* in a regime when the upper end of the 95% bootstrap
  interval of its mean regret is at most that regime's seed noise. The default is the strategy
  within seed noise in every replayed regime with the lowest mean compute fraction over regimes
  (ties: lower mean regret). If none qualifies: the lowest mean of (mean regret / seed noise).
Outputs: OUT/replay.json (every number), OUT/replay.md (tables, decision), OUT/REGIME.png
(regret against compute, one point per strategy, 95% intervals).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "benchmarks" / "tables" / "digits-kd-lc.json.gz"
REPLAYS = 200
SEARCH_SEEDS = 2
ZOO_OTHERS = ("entropy", "kl", "agreement", "accuracy")
TODAY = "audit t_stddev top3"


def strategies(regime) -> dict:
    from augtune.search.tables import replay as r

    out = {"exhaustive": r.exhaustive()}
    out.update({f"random {k}": r.random_k(k) for k in range(1, 6)})
    for fixed in ("trivialaugment", "cutmix_pick(entropy=teacher,pool=2,keep=0.5)"):
        if fixed in regime.candidates:
            out[f"fixed {fixed.split('(')[0]}"] = r.fixed(fixed)
    out.update({f"SH min{m}": r.successive_halving(m, 3) for m in (1, 2, 3, 6)})
    out.update({f"ASHA grace{g}": r.asha(g, 3, workers=2) for g in (1, 3, 6)})
    if regime.proxy:
        out.update({f"t_stddev top{k}": r.proxy_top_k(k) for k in range(1, 6)})
        out[TODAY] = r.proxy_audit(3, 1, 2, expand=True, max_extra=2)
        for score in ZOO_OTHERS:
            if score in regime.proxy:
                out[f"{score} top1"] = r.proxy_top_k(1, score)
                out[f"{score} top3"] = r.proxy_top_k(3, score)
                out[f"audit {score} top3"] = r.proxy_audit(3, 1, 2, expand=True, max_extra=2, score=score)
        out.update({f"t_stddev SH enter{m}": r.successive_halving(3, 3, enter=m, score="t_stddev") for m in (5, 9)})
        out["t_stddev-ordered ASHA grace3"] = r.asha(3, 3, workers=2, order="proxy")
    out["low-fidelity 3ep top3"] = r.low_fidelity_top_k(3, 3)
    return out


def replayable(regime) -> tuple[bool, int]:
    seeds = int(regime.ran().sum(axis=1).min())
    return seeds > SEARCH_SEEDS, seeds


def run(table: Path, out: Path, replays: int) -> dict:
    from augtune.search.tables.learning_curves import load_table
    from augtune.search.tables.replay import replay

    regimes = load_table(table)
    results: dict = {"table": str(table.relative_to(ROOT) if table.is_relative_to(ROOT) else table),
                     "replays": replays, "regimes": {}}
    for name, regime in regimes.items():
        ok, seeds = replayable(regime)
        if not ok:
            print(f"{name}: {seeds} seeds for some candidate; not replayed (needs > {SEARCH_SEEDS})")
            results["regimes"][name] = {"replayed": False, "seeds": seeds}
            continue
        start = time.perf_counter()
        sd = regime.seed_sd()
        rows = {}
        for label, strategy in strategies(regime).items():
            result = replay(regime, label, strategy, replays=replays, seed=0, search_seeds=SEARCH_SEEDS)
            low, high = result.interval()
            rows[label] = {"mean_regret": result.mean_regret(), "interval": [low, high],
                           "p_regret_above_sd": result.exceed(sd), "compute": float(result.compute.mean()),
                           "compute_max": float(result.compute.max()),
                           "chosen": {c: result.chosen.count(c) for c in sorted(set(result.chosen))}}
        final = regime.final("test_loss")
        results["regimes"][name] = {
            "replayed": True, "seeds": seeds, "seed_sd": sd, "candidates": regime.candidates,
            "true_mean_test_loss": dict(zip(regime.candidates, np.nanmean(final, axis=1).tolist())),
            "exhaustive_seconds": regime.exhaustive_seconds(), "strategies": rows,
            "replay_seconds": time.perf_counter() - start}
        print(f"{name}: {len(rows)} strategies x {replays} replays in {time.perf_counter() - start:.0f} s", flush=True)
    results["decision"] = decide(results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "replay.json").write_text(json.dumps(results, indent=1))
    (out / "replay.md").write_text(markdown(results) + "\n")
    plot(results, out)
    return results


def decide(results: dict) -> dict:
    """The protocol's rule, over the replayed regimes."""
    replayed = {n: r for n, r in results["regimes"].items() if r.get("replayed")}
    if not replayed:
        return {"chosen": None, "why": "no regime has enough seeds to replay"}
    common = set.intersection(*(set(r["strategies"]) for r in replayed.values()))
    within = sorted(s for s in common
                    if all(r["strategies"][s]["interval"][1] <= r["seed_sd"] for r in replayed.values()))

    def mean_compute(s):
        return float(np.mean([r["strategies"][s]["compute"] for r in replayed.values()]))

    def mean_regret(s):
        return float(np.mean([r["strategies"][s]["mean_regret"] for r in replayed.values()]))

    if within:
        chosen = min(within, key=lambda s: (mean_compute(s), mean_regret(s)))
        why = (f"the cheapest strategy (mean compute fraction {mean_compute(chosen):.2f}) whose mean regret's 95% "
               f"upper bound stays within one seed sd in all {len(replayed)} replayed regimes; "
               f"{len(within)} of {len(common)} strategies qualified")
    else:
        chosen = min(common, key=lambda s: np.mean([r["strategies"][s]["mean_regret"] / r["seed_sd"]
                                                   for r in replayed.values()]))
        why = "no strategy stayed within seed noise in every regime; lowest mean regret in seed sds"
    return {"chosen": chosen, "why": why, "within_noise": within, "regimes": sorted(replayed),
            "mean_compute": {s: mean_compute(s) for s in sorted(common)}}


def markdown(results: dict) -> str:
    lines = []
    for name, r in results["regimes"].items():
        if not r.get("replayed"):
            lines += [f"### {name}: not replayed ({r['seeds']} seeds for some candidate)", ""]
            continue
        lines += [f"### {name} ({r['seeds']} seeds per candidate; seed sd of test loss {r['seed_sd']:.4f}; "
                  f"{results['replays']} replays)", "",
                  "| strategy | compute | mean regret [95% CI] | P(regret > sd) | within noise |",
                  "|---|---|---|---|---|"]
        for label, s in sorted(r["strategies"].items(), key=lambda kv: kv[1]["compute"]):
            low, high = s["interval"]
            lines.append(f"| {label} | {s['compute']:.2f} | {s['mean_regret']:.4f} [{low:.4f}, {high:.4f}] | "
                         f"{s['p_regret_above_sd']:.2f} | {'yes' if high <= r['seed_sd'] else 'no'} |")
        lines.append("")
    d = results["decision"]
    lines += [f"**Decision**: {d['chosen']} — {d['why']}."]
    return "\n".join(lines)


def plot(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for name, r in results["regimes"].items():
        if not r.get("replayed"):
            continue
        fig, ax = plt.subplots(figsize=(10, 6.5))
        families = sorted({label.split()[0] for label in r["strategies"]})
        colours = {f: plt.cm.tab20(i % 20) for i, f in enumerate(families)}
        for label, s in r["strategies"].items():
            low, high = s["interval"]
            ax.errorbar(s["compute"], s["mean_regret"], yerr=[[s["mean_regret"] - low], [high - s["mean_regret"]]],
                        fmt="o", ms=4, capsize=2, color=colours[label.split()[0]])
            ax.annotate(label, (s["compute"], s["mean_regret"]), fontsize=5.5, xytext=(3, 2),
                        textcoords="offset points")
        # regrets span three orders of magnitude: linear near 0, logarithmic above a tenth of the seed sd
        ax.set_yscale("symlog", linthresh=r["seed_sd"] / 10)
        ax.axhline(r["seed_sd"], color="grey", ls="--", lw=1)
        ax.text(ax.get_xlim()[1], r["seed_sd"], " seed sd", va="bottom", ha="right", fontsize=7, color="grey")
        ax.set_xlabel("compute (fraction of one full run of every candidate)")
        ax.set_ylabel("regret: true test loss of the choice − the best's")
        ax.set_title(f"{name}: {results['replays']} replays per strategy (mean, 95% bootstrap interval)")
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=120)
        plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", default=str(TABLE))
    parser.add_argument("--out", default="runs/replay-study")
    parser.add_argument("--replays", type=int, default=REPLAYS)
    args = parser.parse_args()
    results = run(Path(args.table).resolve(), Path(args.out), args.replays)
    print(markdown(results))


if __name__ == "__main__":
    main()
