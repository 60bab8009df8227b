"""Replay protocol v2: does a search of the *policy space* pay, against the recipe one would use?
Strategies replayed against the policy table (benchmarks/policy_table.py) through the project's
own decision code, Ray's ASHA scheduler object and Optuna's TPE.

    .venv/bin/python benchmarks/replay_v2.py [--table benchmarks/tables/digits-kd-policies.json.gz]
                                             [--out benchmarks/results/replay-v2]

PROTOCOL v2 (fixed in this script before any replay was run; do not change it after seeing numbers)
- Table: both regimes of the policy table (different teachers and data). A regime is replayed
  with the seeds every candidate has (>= 3: 2 seen by a search, >= 1 held out); the report says
  how many. Candidates: the fixed recipes and the policies sampled from the default space.
- Replays: 200 per strategy and regime for the point estimates; cross-fitting as in v1 (every
  candidate's seeds shuffled, a search sees the first 2, the rest are the truth; the proxy seed
  drawn from the table's). Regret = true mean test loss of the choice minus the lowest true mean.
  Choices are made on validation loss.
- Noise of a regime (the rule, stated before looking): the pooled within-candidate seed sd of
  final test loss over the candidates that did not fail, where a candidate failed when its mean
  final test loss exceeds twice the best candidate's. The all-candidate figure is reported beside.
- Intervals: two-level bootstrap (search/replay.py two_level_bootstrap): 40 resamples of every
  candidate's seeds, in each 25 replays resampled; 95% percentile interval of the mean regret.
- P(regret > noise) over the 200 replays; and the share of replays in which the chosen candidate
  beats the better of the two fixed recipes (CutMixPick keep 0.5, TrivialAugment) by more than the
  noise on the held-out seeds.
- Compute: epochs trained x the candidate's mean per-epoch CPU seconds (+ every candidate's proxy
  CPU seconds when a proxy is used), as a fraction of one full run of every candidate.
- Strategies (STRATEGIES below). Fixed: CutMixPick keep 0.5, TrivialAugment. Reference:
  exhaustive. Search: random k (3, 6, 12); T.stddev top k (1, 3, 6); T.stddev top 9 and top 18
  then successive halving (eta 3, min 3 epochs); T.stddev order into ASHA (top 18, grace 3,
  2 workers); ASHA over a random sample of 18 (grace 3, 2 workers); successive halving over a
  random sample of 9 (min 3); Optuna TPE over the tabulated candidates with ASHA (18 trials,
  grace 3); the low-fidelity student screen (every candidate 3 epochs, top 3 to full length);
  rank average of T.stddev and KL top 3; a least-squares combination of the five teacher proxies
  learned on the *other* regime, top 3.
- Decision: among the search strategies, the cheapest (mean compute fraction over both regimes)
  whose two-level 95% upper bound of mean regret is at most the regime's noise in both regimes
  (ties: lower mean regret); if none qualifies, the one with the lowest mean (mean regret / noise).
  Beside it, the same rule over the fixed recipes, and whether the chosen search beats the
  better recipe by more than the noise in the majority of replays of either regime.
- Descriptive, beside the decision: each proxy's Spearman with the candidates' mean test loss
  (proxy means over proxy seeds; low-fidelity = 3-epoch validation loss), 95% seed bootstrap.
Outputs: OUT/replay.json (every number), OUT/replay.md (tables and decision), OUT/REGIME.png.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "benchmarks" / "tables" / "digits-kd-policies.json.gz"
REPLAYS, OUTER, INNER = 200, 40, 25
SEARCH_SEEDS = 2
RECIPES = ("cutmix_pick(entropy=teacher,pool=2,keep=0.5)", "trivialaugment")
TEACHER_PROXIES = ("t_stddev", "entropy", "kl", "agreement", "accuracy")
FAILED_FACTOR = 2.0


def strategies(regime, other) -> dict:
    from augtune.search import replay as r

    out = {f"fixed {c.split('(')[0]}": r.fixed(c) for c in RECIPES}
    out["exhaustive"] = r.exhaustive()
    out.update({f"random {k}": r.random_k(k) for k in (3, 6, 12)})
    out.update({f"T.stddev top{k}": r.proxy_top_k(k) for k in (1, 3, 6)})
    out.update({f"T.stddev top{n} + SH": r.successive_halving(3, 3, enter=n, score="t_stddev") for n in (9, 18)})
    out["T.stddev top18 -> ASHA"] = r.asha(3, 3, workers=2, order="proxy", enter=18)
    out["ASHA random 18"] = r.asha(3, 3, workers=2, order="random", enter=18)
    out["SH random 9"] = _random_sh(9)
    out["TPE + ASHA 18"] = r.tpe_asha(18, 3)
    out["low-fidelity 3ep top3"] = r.low_fidelity_top_k(3, 3)
    out["rank avg T.stddev+KL top3"] = r.combined_top_k(3, {"t_stddev": 1.0, "kl": 1.0}, ranks=True)
    if other is not None:
        out["learned combo top3"] = r.combined_top_k(3, r.learn_proxy_weights(other, TEACHER_PROXIES))
    return out


def _random_sh(n: int):
    """Synchronous successive halving (min 3 epochs, eta 3) over a random sample of n candidates."""
    from augtune.search.metric import metric_sign

    def run(world):
        pool = [str(c) for c in world.rng.choice(world.regime.candidates, size=n, replace=False)]
        epochs, full = 3, world.regime.epochs
        while epochs < full and len(pool) > 1:
            values = {c: world.train(c, epochs) for c in pool}
            pool = sorted(pool, key=lambda c: (metric_sign(world.metric) * values[c], c))[:math.ceil(len(pool) / 3)]
            epochs *= 3
        return world.best_of({c: world.train(c) for c in pool})
    return run


def noise(regime) -> dict:
    """The protocol's noise: pooled seed sd of final test loss over the candidates that did not fail."""
    final = regime.final("test_loss")
    means = np.nanmean(final, axis=1)
    ok = means <= FAILED_FACTOR * np.nanmin(means)

    def pooled(rows):
        squares, dof = 0.0, 0
        for row in rows:
            row = row[~np.isnan(row)]
            if len(row) > 1:
                squares += float(((row - row.mean()) ** 2).sum())
                dof += len(row) - 1
        return math.sqrt(squares / dof) if dof else float("nan")

    return {"noise": pooled(final[ok]), "all_candidates": pooled(final), "failed": [c for c, good in
                                                                                zip(regime.candidates, ok) if not good]}


def proxy_correlations(regime, resamples: int = 1000, seed: int = 0) -> dict:
    """Spearman between each proxy (mean over proxy seeds, oriented so + means the predicted
    direction held) and the candidates' mean final test loss, with a 95% seed-bootstrap interval
    (every candidate's seeds resampled); the low-fidelity score is the 3-epoch validation loss."""
    from scipy.stats import spearmanr

    from augtune.search.proxy import ZOO

    final = regime.final("test_loss")
    predictors = {name: (-1.0 if ZOO[name] == "lower" else 1.0) * np.nanmean(values, axis=1)
                  for name, values in regime.proxy.items() if name in ZOO}
    predictors["low_fidelity"] = -np.nanmean(regime.curves["val_loss"][:, :, 2], axis=1)
    rng = np.random.default_rng(seed)
    out = {}
    for name, predicted in predictors.items():
        point = -spearmanr(predicted, np.nanmean(final, axis=1)).statistic  # + : better predicted, lower loss
        draws = []
        for _ in range(resamples):
            picks = rng.integers(0, final.shape[1], final.shape)
            draws.append(-spearmanr(predicted, np.take_along_axis(final, picks, 1).mean(1)).statistic)
        out[name] = {"spearman": float(point), "interval": [float(np.quantile(draws, 0.025)),
                                                            float(np.quantile(draws, 0.975))]}
    return out


def complete(regime):
    """The regime restricted to the seeds every candidate has."""
    from augtune.search.learning_curves import Regime

    keep = regime.complete_seeds()
    curves = {m: a[:, keep] for m, a in regime.curves.items()}
    return Regime(regime.name, regime.candidates, [regime.seeds[s] for s in keep], regime.epochs, curves,
                  regime.proxy, regime.proxy_seconds, regime.meta)


def study(table: Path, out: Path) -> dict:
    from augtune.search.learning_curves import load_table
    from augtune.search.replay import replay, two_level_bootstrap

    regimes = {name: complete(r) for name, r in load_table(table).items()}
    names = list(regimes)
    results: dict = {"protocol": "benchmarks/replay_v2.py", "table": str(table.relative_to(ROOT) if table.is_relative_to(ROOT) else table), "regimes": {}}
    for name, regime in regimes.items():
        other = regimes[names[1 - names.index(name)]] if len(names) == 2 else None
        if len(regime.seeds) < SEARCH_SEEDS + 1:
            print(f"{name}: {len(regime.seeds)} complete seeds; needs {SEARCH_SEEDS + 1}: skipped")
            continue
        level = noise(regime)
        rows = {}
        for label, strategy in strategies(regime, other).items():
            start = time.perf_counter()
            result = replay(regime, label, strategy, REPLAYS, seed=0, search_seeds=SEARCH_SEEDS, references=RECIPES)
            boot = two_level_bootstrap(regime, lambda reg, s, strategy=strategy, label=label: replay(
                reg, label, strategy, INNER, seed=s, search_seeds=SEARCH_SEEDS).regrets, OUTER, seed=1)
            low, high = (float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975)))
            rows[label] = {"mean_regret": result.mean_regret(), "interval": [low, high],
                           "compute": float(result.compute.mean()),
                           "p_regret_over_noise": result.exceed(level["noise"]),
                           "share_beats_best_recipe": float((result.margins > level["noise"]).mean()),
                           "mean_margin_over_best_recipe": float(result.margins.mean()),
                           "chosen_most": max(set(result.chosen), key=result.chosen.count),
                           "seconds": time.perf_counter() - start}
            print(f"{name:>14}  {label:<28} regret {rows[label]['mean_regret']:.4f} [{low:.4f}, {high:.4f}]  "
                  f"compute {rows[label]['compute']:.3f}  P>noise {rows[label]['p_regret_over_noise']:.2f}  "
                  f"beats recipe {rows[label]['share_beats_best_recipe']:.2f}", flush=True)
        results["regimes"][name] = {"seeds": regime.seeds, "candidates": len(regime.candidates), **level,
                                    "proxies": proxy_correlations(regime), "strategies": rows}
    results["decision"] = decide(results)
    return results


def decide(results: dict) -> dict:
    regimes = list(results["regimes"].values())
    if not regimes:
        return {"rule": "no regime had enough seeds"}
    labels = list(regimes[0]["strategies"])
    searches = [s for s in labels if not s.startswith("fixed") and s != "exhaustive"]

    def within(label):
        return all(r["strategies"][label]["interval"][1] <= r["noise"] for r in regimes)

    def compute(label):
        return float(np.mean([r["strategies"][label]["compute"] for r in regimes]))

    def regret(label):
        return float(np.mean([r["strategies"][label]["mean_regret"] for r in regimes]))

    qualified = sorted((s for s in searches if within(s)), key=lambda s: (compute(s), regret(s)))
    if qualified:
        chosen, how = qualified[0], "cheapest search strategy within noise in every regime"
    else:
        chosen = min(searches, key=lambda s: np.mean([r["strategies"][s]["mean_regret"] / r["noise"] for r in regimes]))
        how = "no search strategy within noise everywhere: lowest mean regret / noise"
    recipes = [s for s in labels if s.startswith("fixed")]
    recipe_ok = [s for s in recipes if within(s)]
    beats = {name: results["regimes"][name]["strategies"][chosen]["share_beats_best_recipe"]
             for name in results["regimes"]}
    return {"search_strategy": chosen, "how": how, "qualified_searches": qualified,
            "recipes_within_noise": recipe_ok, "share_beats_best_recipe": beats,
            "search_beats_recipe_in_majority": any(v > 0.5 for v in beats.values())}


def markdown(results: dict) -> str:
    lines = ["# Replay study v2: the policy space", ""]
    for name, r in results["regimes"].items():
        lines += [f"## {name}: {r['candidates']} candidates, seeds {r['seeds']}, noise {r['noise']:.4f} "
                  f"(all candidates: {r['all_candidates']:.4f}; failed: {len(r['failed'])})", "",
                  "| strategy | compute | mean regret | 95% two-level interval | P(regret > noise) | "
                  "beats best recipe by > noise | chosen most |", "|---|---|---|---|---|---|---|"]
        for label, s in sorted(r["strategies"].items(), key=lambda kv: kv[1]["compute"]):
            lines.append(f"| {label} | {s['compute']:.3f} | {s['mean_regret']:.4f} | [{s['interval'][0]:.4f}, "
                         f"{s['interval'][1]:.4f}] | {s['p_regret_over_noise']:.2f} | "
                         f"{s['share_beats_best_recipe']:.2f} | `{s['chosen_most']}` |")
        lines += ["", "Each proxy against the candidates' mean test loss (Spearman, + = the predicted direction "
                  "held; 95% seed bootstrap):", "", "| proxy | Spearman | interval |", "|---|---|---|"]
        lines += [f"| {name} | {c['spearman']:+.3f} | [{c['interval'][0]:+.3f}, {c['interval'][1]:+.3f}] |"
                  for name, c in r["proxies"].items()]
        lines.append("")
    d = results["decision"]
    lines += ["## Decision", "", f"- search strategy: **{d.get('search_strategy')}** ({d.get('how')})",
              f"- fixed recipes within noise in every regime: {d.get('recipes_within_noise')}",
              f"- share of replays in which that search beats the better recipe by more than the noise: "
              f"{d.get('share_beats_best_recipe')}", ""]
    return "\n".join(lines)


def plot(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for name, r in results["regimes"].items():
        fig, ax = plt.subplots(figsize=(8, 5))
        for label, s in r["strategies"].items():
            low, high = s["interval"]
            # a percentile interval need not contain the point estimate: drawn as its own segment
            ax.vlines(s["compute"], low, high, color="grey", lw=1)
            ax.plot(s["compute"], s["mean_regret"], "o")
            ax.annotate(label, (s["compute"], s["mean_regret"]), fontsize=7)
        ax.axhline(r["noise"], ls="--", color="grey", label="seed noise (non-failed)")
        ax.set_xscale("log")
        ax.set_yscale("symlog", linthresh=1e-3)
        ax.set_xlabel("compute (fraction of one full run of every candidate)")
        ax.set_ylabel("mean regret (test loss)")
        ax.set_title(f"{name}: regret vs compute, 95% two-level intervals")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=120)
        plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", default=str(TABLE))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "replay-v2"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = study(Path(args.table).resolve(), out)
    (out / "replay.json").write_text(json.dumps(results, indent=2))
    (out / "replay.md").write_text(markdown(results))
    plot(results, out)
    print(markdown(results))


if __name__ == "__main__":
    main()
