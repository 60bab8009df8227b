"""Learning-curve tables and replayed searches, on small fixture tables whose right answers are
worked out by hand."""
import gzip
import json

import numpy as np
import pytest

from augtune.search.tables.learning_curves import Regime, load_table, write_table
from augtune.search.tables.replay import (World, asha, exhaustive, fixed, proxy_audit, proxy_top_k, random_k, replay,
                                   replay_asha_through_tune, simulate_asha, successive_halving)

CANDIDATES = ["a", "b", "c", "d"]


def fixture_regime(val_by_epoch: dict, test_final: dict, seeds: int = 4, epochs: int = 9,
                   seconds: dict = None, proxy: dict = None) -> Regime:
    """Every seed of a candidate gets the same val curve (linearly interpolated between the given
    epochs); final test loss = test_final[c] + a seed offset shared by all candidates."""
    shape = (len(CANDIDATES), seeds, epochs)
    curves = {m: np.zeros(shape) for m in ("val_loss", "val_acc", "test_loss", "test_acc", "epoch_seconds")}
    for ci, c in enumerate(CANDIDATES):
        points = val_by_epoch[c]
        curve = np.interp(np.arange(1, epochs + 1), sorted(points), [points[e] for e in sorted(points)])
        for s in range(seeds):
            curves["val_loss"][ci, s] = curve
            curves["test_loss"][ci, s] = curve + 0.05
            curves["test_loss"][ci, s, -1] = test_final[c] + 0.01 * s
            curves["epoch_seconds"][ci, s] = (seconds or {}).get(c, 1.0)
    proxy_arrays = {k: np.array([[v] * 2 for v in values]) for k, values in (proxy or {}).items()}
    return Regime("fixture", list(CANDIDATES), list(range(seeds)), epochs, curves, proxy_arrays,
                  np.full((len(CANDIDATES), 2), 0.5) if proxy else None)


# ASHA by hand (grace 1, reduction factor 3, max_t 9: rungs at epochs 1 and 3; a trial is stopped
# at a rung when its reward -loss is below the 66.7th percentile of the rewards recorded there):
#   a@1 first: continues; a@3 first: continues -> a runs 9 epochs
#   b@1 0.8 vs cutoff -1.0: continues; b@3 0.7 vs cutoff -0.6: reward -0.7 < -0.6 -> stopped at 3
#   c@1 1.2 vs percentile(-1.0, -0.8) = -0.8667 -> stopped at 1
#   d@1 0.85 vs percentile(-1.2, -1.0, -0.8) = -0.9333: continues; d@3 0.5 vs
#   percentile(-0.7, -0.6) = -0.6333: continues -> d runs 9 epochs
ASHA_VAL = {"a": {1: 1.0, 3: 0.6, 9: 0.40}, "b": {1: 0.8, 3: 0.7, 9: 0.30},
            "c": {1: 1.2, 3: 0.5, 9: 0.20}, "d": {1: 0.85, 3: 0.5, 9: 0.35}}
ASHA_EXPECTED = {"a": 9, "b": 3, "c": 1, "d": 9}
TEST_FINAL = {"a": 0.50, "b": 0.30, "c": 0.20, "d": 0.45}


def test_table_round_trip_and_refusals(tmp_path):
    regime = fixture_regime(ASHA_VAL, TEST_FINAL, proxy={"t_stddev": [0.1, 0.2, 0.3, 0.4]})
    regime.curves["val_loss"][1, 2] = np.nan  # a run not in the table
    path = write_table(tmp_path / "t.json.gz", {"fixture": regime}, protocol="test")
    loaded = load_table(path)["fixture"]
    assert loaded.candidates == CANDIDATES and loaded.epochs == 9
    # curves are stored to 6 decimals
    np.testing.assert_allclose(loaded.curves["test_loss"], regime.curves["test_loss"], atol=5e-7, rtol=0)
    assert np.isnan(loaded.curves["val_loss"][1, 2]).all() and not loaded.ran()[1, 2]
    assert loaded.complete_seeds() == [0, 1, 3]
    np.testing.assert_allclose(loaded.proxy["t_stddev"][:, 0], [0.1, 0.2, 0.3, 0.4])
    assert write_table(tmp_path / "again.json.gz", {"fixture": regime}, protocol="test").read_bytes() == \
        path.read_bytes()  # deterministic bytes
    document = json.loads(gzip.decompress(path.read_bytes()))
    document["version"] = 99
    (tmp_path / "v99.json.gz").write_bytes(gzip.compress(json.dumps(document).encode()))
    with pytest.raises(ValueError, match="version 99"):
        load_table(tmp_path / "v99.json.gz")
    (tmp_path / "plain.json").write_text("{}")
    with pytest.raises(ValueError, match="gzip"):
        load_table(tmp_path / "plain.json")


def test_seed_sd_is_the_pooled_within_candidate_sd():
    regime = fixture_regime(ASHA_VAL, TEST_FINAL)
    offsets = 0.01 * np.arange(4)
    assert regime.seed_sd() == pytest.approx(np.std(offsets, ddof=1))


def test_exhaustive_reproduces_the_tables_winner():
    """c has the lowest val and test loss on every seed: exhaustive picks it in every replay, with
    zero regret, at exactly the exhaustive compute."""
    regime = fixture_regime(ASHA_VAL, TEST_FINAL)
    result = replay(regime, "exhaustive", exhaustive(), replays=30)
    assert set(result.chosen) == {"c"}
    assert result.regrets.max() == 0.0
    np.testing.assert_allclose(result.compute, 1.0)


def test_fixed_and_random_k_regret_and_compute():
    regime = fixture_regime(ASHA_VAL, TEST_FINAL, seconds={"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0})
    result = replay(regime, "fixed a", fixed("a"), replays=10)
    # truth = held-out seeds (2 of 4, shuffled per candidate): regret of a = 0.30 + mean offset difference
    assert set(result.chosen) == {"a"} and (result.regrets > 0.25).all()
    np.testing.assert_allclose(result.compute, 9 * 1.0 / (9 * 10.0))
    every = replay(regime, "random 4", random_k(4), replays=10)
    assert set(every.chosen) == {"c"}
    np.testing.assert_allclose(every.compute, 1.0)


def test_asha_simulation_stops_at_the_rungs_worked_out_by_hand():
    regime = fixture_regime(ASHA_VAL, TEST_FINAL)
    world = World(regime, np.random.default_rng(0))
    decisions = simulate_asha(world, CANDIDATES, grace_period=1, reduction_factor=3, workers=1)
    assert {c: epochs for c, (epochs, _) in decisions.items()} == ASHA_EXPECTED
    assert world.seconds == sum(ASHA_EXPECTED.values()) * 1.0  # every epoch trained, charged once
    # finished trials: a (0.40) and d (0.35) -> d, although c (stopped at 1) would have been best
    assert asha(1, 3, workers=1, order="table")(World(regime, np.random.default_rng(0))) in ("a", "d")


def test_asha_through_ray_tune_takes_the_same_decisions(ray_session, tmp_path):
    regime = fixture_regime(ASHA_VAL, TEST_FINAL)
    world = World(regime, np.random.default_rng(0))
    through_tune = replay_asha_through_tune(world, CANDIDATES, 1, 3, str(tmp_path / "ray"))
    simulated = simulate_asha(World(regime, np.random.default_rng(0)), CANDIDATES, 1, 3, workers=1)
    assert {c: e for c, (e, _) in through_tune.items()} == ASHA_EXPECTED
    assert through_tune == simulated


def test_successive_halving_by_hand():
    """min 1 epoch, eta 3, 4 candidates: at epoch 1 keep ceil(4/3) = 2 (b 0.8, d 0.85); at epoch 3
    keep 1 (d 0.5 < b 0.7); d trained in full. Compute: 4x1 + 2x(3-1) + 1x(9-3) = 14 epochs."""
    regime = fixture_regime(ASHA_VAL, TEST_FINAL)
    world = World(regime, np.random.default_rng(0))
    assert successive_halving(1, 3)(world) == "d"
    assert world.seconds == 14.0
    assert world.trained_epochs == {("a", 0): 1, ("b", 0): 3, ("c", 0): 1, ("d", 0): 9}


def test_proxy_strategies_use_the_proxy_and_pay_for_it():
    # T.stddev ranks b, a, d, c (lower first); entropy (higher first) ranks c first
    regime = fixture_regime(ASHA_VAL, TEST_FINAL, proxy={"t_stddev": [0.2, 0.1, 0.4, 0.3],
                                                         "entropy": [0.1, 0.2, 0.9, 0.3]})
    world = World(regime, np.random.default_rng(0))
    assert proxy_top_k(2)(world) == "b"  # kept b and a; b has the lower val loss
    assert world.seconds == 2 * 9 + 4 * 0.5  # two full runs + the proxy for 4 candidates
    assert proxy_top_k(1, "entropy")(World(regime, np.random.default_rng(0))) == "c"
    # proxy-ordered successive halving: only the proxy's top 2 (b, a) enter
    assert successive_halving(1, 3, enter=2, score="t_stddev")(World(regime, np.random.default_rng(0))) == "b"


def test_proxy_audit_runs_the_real_audit():
    """Kept: b (T.stddev ranks b, a, d, c; final val b 0.30); one sentinel drawn from a, d, c.
    Every seed has the same val curve, so seed noise is 0 and a better sentinel beats b 'beyond
    noise'. Sentinel a (0.40) or d (0.35): the pruning stands, b is chosen, 2 candidates audited.
    Sentinel c (0.20): the audit expands in proxy order with a and d (max_extra 2), neither beats
    c, c is chosen, 4 audited."""
    regime = fixture_regime(ASHA_VAL, TEST_FINAL, proxy={"t_stddev": [0.2, 0.1, 0.4, 0.3]})
    branches = set()
    for r in range(20):
        world = World(regime, np.random.default_rng(r))
        chosen = proxy_audit(k=1, sentinels=1, audit_seeds=2, expand=True, max_extra=2)(world)
        audited = {c for c, _ in world.trained_epochs}
        assert {s for _, s in world.trained_epochs} == {0, 1}
        if "c" in audited:
            assert chosen == "c" and audited == {"a", "b", "c", "d"}
        else:
            assert chosen == "b" and len(audited) == 2
        # every audited candidate: 2 seeds x 9 epochs, plus the proxy for all 4
        assert world.seconds == len(audited) * 2 * 9 + 4 * 0.5
        branches.add(chosen)
    assert branches == {"b", "c"}


def test_low_fidelity_top_k_continues_the_early_leaders():
    """At epoch 1: b 0.8, d 0.85, a 1.0, c 1.2 -> keep b and d, continue them to 9 epochs (b 0.30,
    d 0.35) -> b. Compute: 4 x 1 + 2 x 8 = 20 epochs."""
    from augtune.search.tables.replay import low_fidelity_top_k

    regime = fixture_regime(ASHA_VAL, TEST_FINAL)
    world = World(regime, np.random.default_rng(0))
    assert low_fidelity_top_k(1, 2)(world) == "b"
    assert world.seconds == 20.0


def test_replays_of_the_shipped_table_take_the_same_decisions_through_tune(ray_session, tmp_path):
    """On the repository's own table (the long-tailed default), a few replays: the scheduler object
    fed directly and a real Tune run of the replay trainable stop the same trials at the same epochs."""
    from pathlib import Path

    table = load_table(Path(__file__).resolve().parents[1] / "benchmarks" / "tables" / "digits-kd-lc.json.gz")
    regime = table["lt100-if10-r8"]
    for r in range(2):
        order = [str(c) for c in np.random.default_rng(r).permutation(regime.candidates)]
        simulated = simulate_asha(World(regime, np.random.default_rng(r)), order, 3, 3, workers=1)
        through_tune = replay_asha_through_tune(World(regime, np.random.default_rng(r)), order, 3, 3,
                                                str(tmp_path / "ray"), name=f"replay-{r}")
        assert through_tune == simulated
        assert sorted({e for e, _ in simulated.values()}) != [regime.epochs]  # some trials were stopped


# ---------------------------------------------------------------- protocol v2

def test_two_level_bootstrap_equals_a_hand_computation():
    from augtune.search.tables.replay import two_level_bootstrap

    regime = fixture_regime(ASHA_VAL, TEST_FINAL, seeds=4)
    rng = np.random.default_rng(5)
    regime.curves["test_loss"][:, :, -1] += rng.normal(0, 0.05, (4, 4))  # seeds that differ per candidate
    regime.curves["val_loss"][2, 3] = np.nan  # candidate c has 3 seeds only

    def per_replay(resampled, replay_seed):  # a stand-in for replays: candidate a's final test losses
        return resampled.final("test_loss")[0, :4] + 0 * replay_seed

    values = two_level_bootstrap(regime, per_replay, outer=6, seed=11)
    # by hand, in the documented draw order
    draw = np.random.default_rng(11)
    final = regime.final("test_loss")
    expected = []
    for _ in range(6):
        picks = [draw.choice(np.flatnonzero(~np.isnan(regime.curves["val_loss"][c, :, -1])),
                             size=int((~np.isnan(regime.curves["val_loss"][c, :, -1])).sum()), replace=True)
                 for c in range(4)]
        draw.integers(1 << 31)  # the replay seed
        own = final[0, picks[0]]
        expected.append(own[draw.integers(0, 4, 4)].mean())
    np.testing.assert_allclose(values, expected)
    assert len(set(np.round(values, 9))) > 1


def test_replay_records_the_margin_over_the_best_recipe():
    regime = fixture_regime(ASHA_VAL, TEST_FINAL, seeds=4)
    result = replay(regime, "exhaustive", exhaustive(), replays=10, references=("a", "d"))
    # exhaustive picks c by val loss; the recipes' best true mean is d's (0.45 + seed offsets)
    truth_gap = np.array([0.45 - 0.20] * 10)
    np.testing.assert_allclose(result.margins, truth_gap, atol=0.03)
    assert (result.margins > 0).all()


def test_combined_proxies_and_learned_weights():
    from augtune.search.tables.replay import combined_ranking, learn_proxy_weights

    # t_stddev (lower is better) ranks a best; kl (higher is better) ranks d best
    regime = fixture_regime(ASHA_VAL, TEST_FINAL, proxy={"t_stddev": [0.1, 0.2, 0.3, 0.4], "kl": [0.1, 0.2, 0.3, 0.9]})
    world = World(regime, np.random.default_rng(0))
    assert combined_ranking(world, {"t_stddev": 1.0})[0] == "a"
    assert combined_ranking(world, {"kl": 1.0})[0] == "d"
    # final val losses 0.40 0.30 0.20 0.35: kl alone explains little, t_stddev points the wrong way
    weights = learn_proxy_weights(regime, ["t_stddev", "kl"])
    assert weights["t_stddev"] < 0  # better t_stddev predicted worse students here: learned as such


def _fixture_table(tmp_path, seeds=4, name="t.json.gz"):
    regime = fixture_regime(ASHA_VAL, TEST_FINAL, seeds=seeds, proxy={
        "t_stddev": [0.1, 0.2, 0.3, 0.4], "entropy": [0.5, 0.4, 0.3, 0.2], "kl": [0.1, 0.3, 0.2, 0.4],
        "agreement": [0.9, 0.8, 0.7, 0.6], "accuracy": [0.9, 0.9, 0.8, 0.7]})
    regime.curves["test_loss"][:, :, -1] += np.random.default_rng(0).normal(0, 0.01, (4, seeds))
    return write_table(tmp_path / name, {"one": regime, "two": regime}, protocol="test")


def test_replay_command_runs_the_protocol_on_any_table(tmp_path, capsys):
    from augtune.search.cli import main

    table = _fixture_table(tmp_path)
    out = tmp_path / "out"
    assert main(["replay", str(table), "--recipes", "a", "d", "--replays", "6", "--outer", "2", "--inner", "3",
                 "--output", str(out), "--no-progress"]) == 0
    results = json.loads((out / "replay.json").read_text())
    assert set(results["regimes"]) == {"one", "two"} and results["recipes"] == ["a", "d"]
    rows = results["regimes"]["one"]["strategies"]
    assert {"fixed a", "fixed d", "exhaustive", "TPE + ASHA 18", "learned combo top3"} <= set(rows)
    # exhaustive always finds c (val and test agree in the fixture): no regret, beats both recipes
    assert rows["exhaustive"]["mean_regret"] == pytest.approx(0.0, abs=0.03)
    assert rows["fixed a"]["compute"] == pytest.approx(0.25)  # one of four equal-cost candidates
    assert results["decision"]["search_strategy"] in rows
    assert (out / "one.png").is_file() and "Decision" in (out / "replay.md").read_text()


@pytest.mark.parametrize("change, text", [
    ("seeds", "needs at least 3"), ("version", "version 99"), ("recipes", "no candidate 'zzz'")])
def test_replay_command_refuses_tables_it_cannot_use(tmp_path, capsys, change, text):
    from augtune.search.cli import main

    table = _fixture_table(tmp_path, seeds=2 if change == "seeds" else 4)
    if change == "version":
        document = json.loads(gzip.decompress(table.read_bytes()))
        document["version"] = 99
        table.write_bytes(gzip.compress(json.dumps(document).encode()))
    recipes = ["zzz"] if change == "recipes" else ["a"]
    out = tmp_path / "out"
    assert main(["replay", str(table), "--recipes", *recipes, "--output", str(out), "--no-progress"]) == 2
    assert text in capsys.readouterr().err
    assert not out.exists()
