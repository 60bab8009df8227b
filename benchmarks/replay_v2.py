"""Replay protocol v2: does a search of the *policy space* pay, against the recipe one would use?
Strategies replayed against the policy table (benchmarks/policy_table.py) through the project's
own decision code, Ray's ASHA scheduler object and Optuna's TPE; the study itself is
augtune.search.tables.replay_protocol (`augtune replay TABLE` on any table), this file fixes its protocol
for the shipped table.

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
- Intervals: two-level bootstrap (search/tables/replay.py two_level_bootstrap): 40 resamples of every
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "benchmarks" / "tables" / "digits-kd-policies.json.gz"
REPLAYS, OUTER, INNER = 200, 40, 25
RECIPES = ("cutmix_pick(entropy=teacher,pool=2,keep=0.5)", "trivialaugment")


def main() -> None:
    from augtune.search.tables.replay_protocol import Budget, load_for_study, markdown, study, write_outputs

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", default=str(TABLE))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "replay-v2"))
    args = parser.parse_args()
    table = Path(args.table).resolve()
    results = study(load_for_study(table), RECIPES, Budget(REPLAYS, OUTER, INNER),
                    source=str(table.relative_to(ROOT) if table.is_relative_to(ROOT) else table))
    results["protocol"] = "benchmarks/replay_v2.py"
    write_outputs(results, Path(args.out))
    print(markdown(results))


if __name__ == "__main__":
    main()
