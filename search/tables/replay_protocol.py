"""The replay study of protocol v2 on any learning-curve table: which search strategy pays on
this data, against the fixed recipes? `augtune replay TABLE` runs it; benchmarks/replay_v2.py is
its protocol for the shipped policy table (docstring there: strategies, noise rule, two-level
intervals, decision rule, fixed before any replay).

Per regime (with the seeds every candidate has, at least 3): the noise (pooled seed sd of final
test loss over the candidates that did not fail: mean test loss within FAILED_FACTOR x the best's),
each strategy's mean regret over `replays` cross-fitted replays with a two-level bootstrap interval
(`outer` seed resamples x `inner` replays), P(regret > noise), the share of replays whose choice
beats the better fixed recipe by more than the noise, each proxy's Spearman with the students; and
the decision: the cheapest search strategy within noise in every regime.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from scipy.stats import spearmanr

from augtune.search.tables import replay as replaying
from augtune.search.tables.learning_curves import Regime, load_table, pooled_seed_sd
from augtune.search.selection.proxy import ZOO

SEARCH_SEEDS = 2
TEACHER_PROXIES = ("t_stddev", "entropy", "kl", "agreement", "accuracy")
FAILED_FACTOR = 2.0
DEFAULT_RECIPES = ("cutmix_pick(entropy=teacher,pool=2,keep=0.5)", "trivialaugment")


class TableError(ValueError):
    """A table the study cannot replay (the CLI exits 2 naming the problem)."""


@dataclass(frozen=True)
class Budget:
    replays: int = 200
    outer: int = 40
    inner: int = 25


def strategies(regime: Regime, other: Optional[Regime], recipes: Sequence[str]) -> dict:
    """The protocol's strategies, by label (fixed recipes first, labelled `fixed ...`)."""
    out = {f"fixed {c}": replaying.fixed(c) for c in recipes}
    out["exhaustive"] = replaying.exhaustive()
    out.update({f"random {k}": replaying.random_k(k) for k in (3, 6, 12)})
    out.update({f"T.stddev top{k}": replaying.proxy_top_k(k) for k in (1, 3, 6)})
    out.update({f"T.stddev top{n} + SH": replaying.successive_halving(3, 3, enter=n, score="t_stddev") for n in (9, 18)})
    out["T.stddev top18 -> ASHA"] = replaying.asha(3, 3, workers=2, order="proxy", enter=18)
    out["ASHA random 18"] = replaying.asha(3, 3, workers=2, order="random", enter=18)
    out["SH random 9"] = replaying.random_successive_halving(9, 3, 3)
    out["TPE + ASHA 18"] = replaying.tpe_asha(18, 3)
    out["low-fidelity 3ep top3"] = replaying.low_fidelity_top_k(3, 3)
    out["rank avg T.stddev+KL top3"] = replaying.combined_top_k(3, {"t_stddev": 1.0, "kl": 1.0}, ranks=True)
    if other is not None:
        out["learned combo top3"] = replaying.combined_top_k(3, replaying.learn_proxy_weights(other, TEACHER_PROXIES))
    return out


def noise(regime) -> dict:
    """The protocol's noise: pooled seed sd of final test loss over the candidates that did not fail."""
    final = regime.final("test_loss")
    means = np.nanmean(final, axis=1)
    ok = means <= FAILED_FACTOR * np.nanmin(means)

    return {"noise": pooled_seed_sd(final[ok]), "all_candidates": pooled_seed_sd(final), "failed": [c for c, good in
                                                                                zip(regime.candidates, ok) if not good]}


def proxy_correlations(regime, resamples: int = 1000, seed: int = 0) -> dict:
    """Spearman between each proxy (mean over proxy seeds, oriented so + means the predicted
    direction held) and the candidates' mean final test loss, with a 95% seed-bootstrap interval
    (every candidate's seeds resampled); the low-fidelity score is the 3-epoch validation loss."""
    final = regime.final("test_loss")
    predictors = {name: (-1.0 if ZOO[name] == "lower" else 1.0) * np.nanmean(values, axis=1)
                  for name, values in regime.proxy.items() if name in ZOO}
    early = min(3, regime.epochs) - 1  # a table shorter than 3 epochs: its last
    predictors["low_fidelity"] = -np.nanmean(regime.curves["val_loss"][:, :, early], axis=1)
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


def complete(regime: Regime) -> Regime:
    """The regime restricted to the seeds every candidate has."""
    keep = regime.complete_seeds()
    curves = {m: a[:, keep] for m, a in regime.curves.items()}
    return Regime(regime.name, regime.candidates, [regime.seeds[s] for s in keep], regime.epochs, curves,
                  regime.proxy, regime.proxy_seconds, regime.meta)


def load_for_study(table: Path) -> dict[str, Regime]:
    """The table's regimes restricted to their complete seeds; a table the study cannot use raises
    TableError naming why (no file, wrong format or version, a regime with fewer than 3 seeds)."""
    try:
        regimes = load_table(table)
    except ValueError as exc:
        raise TableError(str(exc)) from None
    out = {}
    for name, regime in regimes.items():
        usable = complete(regime)
        if len(usable.seeds) < SEARCH_SEEDS + 1:
            raise TableError(f"learning-curve table {table}: regime {name!r} has {len(usable.seeds)} seed(s) run for "
                             f"every candidate; a replay needs at least {SEARCH_SEEDS + 1} ({SEARCH_SEEDS} seen by a "
                             "search, 1 held out): train more seeds")
        out[name] = usable
    return out


def study(regimes: dict[str, Regime], recipes: Sequence[str] = DEFAULT_RECIPES, budget: Budget = Budget(),
          source: str = "", progress: bool = True) -> dict:
    """Every strategy on every regime (see the module docstring); `recipes` must be in every regime."""
    for name, regime in regimes.items():
        missing = [c for c in recipes if c not in regime.candidates]
        if missing:
            raise TableError(f"regime {name!r} has no candidate {missing[0]!r}; name the fixed recipes the table holds "
                             "(--recipes)")
    names = list(regimes)
    results: dict = {"table": source, "recipes": list(recipes), "budget": vars(budget), "regimes": {}}
    for name, regime in regimes.items():
        other = regimes[names[1 - names.index(name)]] if len(names) == 2 else None
        level = noise(regime)
        rows = {}
        for label, strategy in strategies(regime, other, recipes).items():
            start = time.perf_counter()
            result = replaying.replay(regime, label, strategy, budget.replays, seed=0, search_seeds=SEARCH_SEEDS,
                              references=recipes)
            boot = replaying.two_level_bootstrap(regime, lambda resampled, s, strategy=strategy, label=label: replaying.replay(
                resampled, label, strategy, budget.inner, seed=s, search_seeds=SEARCH_SEEDS).regrets, budget.outer, seed=1)
            low, high = float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))
            rows[label] = {"mean_regret": result.mean_regret(), "interval": [low, high],
                           "compute": float(result.compute.mean()),
                           "p_regret_over_noise": result.exceed(level["noise"]),
                           "share_beats_best_recipe": float((result.margins > level["noise"]).mean()),
                           "mean_margin_over_best_recipe": float(result.margins.mean()),
                           "chosen_most": max(set(result.chosen), key=result.chosen.count),
                           "seconds": time.perf_counter() - start}
            if progress:
                print(f"{name:>14}  {label:<32} regret {rows[label]['mean_regret']:.4f} [{low:.4f}, {high:.4f}]  "
                      f"compute {rows[label]['compute']:.3f}  P>noise {rows[label]['p_regret_over_noise']:.2f}  "
                      f"beats recipe {rows[label]['share_beats_best_recipe']:.2f}", flush=True)
        results["regimes"][name] = {"seeds": regime.seeds, "candidates": len(regime.candidates), **level,
                                    "proxies": proxy_correlations(regime), "strategies": rows}
    results["decision"] = decide(results)
    return results


def write_outputs(results: dict, out: Path) -> dict[str, Path]:
    """replay.json (every number), replay.md (tables, decision), one regret-vs-compute plot per regime."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / "replay.json", "markdown": out / "replay.md"}
    files["json"].write_text(json.dumps(results, indent=2))
    files["markdown"].write_text(markdown(results))
    plot(results, out)
    return files


def decide(results: dict) -> dict:
    """The protocol's decision rule over the strategies' rows (module docstring)."""
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
    lines = [f"# Replay study (protocol v2): {results.get('table', '')}", ""]
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
    import matplotlib  # 0.5 s of import (measured), for the plot only

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


