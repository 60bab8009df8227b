"""The benchmarks run (CPU smoke sizes): the GPU benchmark's four tables come out with numbers."""
import importlib.util
import math

import pytest
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    from ray import cloudpickle  # Ray pickles remote functions with its own copy

    import sys

    spec = importlib.util.spec_from_file_location(f"augtune_bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    cloudpickle.register_pickle_by_value(module)  # Ray workers cannot import it by name
    return module


def test_gpu_benchmark_smoke_on_cpu(ray_session, capsys):
    results = _load("gpu").main(["--smoke"])
    out = capsys.readouterr().out
    for heading in ("(a) KD step throughput", "(b) achieved compute", "(c) trials packed", "(d) T.stddev"):
        assert heading in out
    assert results["device"] == "cpu"
    assert results["augtune"] > 0 and results["baseline"] > 0 and results["augtune_two_views"] > 0
    # a resnet8 KD step on 16 images at 16x16: teacher forward + student forward and backward
    assert 1e7 < results["step_flops"] < 1e10 and results["peak_fraction"] is None
    assert [n for n, _, _ in results["packing"]] == [1, 2]
    assert all(rate > 0 and math.isnan(busy) for _, rate, busy in results["packing"])
    assert results["proxy_seconds_per_candidate"] > 0


def test_replay_study_writes_its_tables_plot_and_decision(tmp_path):
    """The study on a small synthetic table: every strategy replayed, the protocol's decision
    taken, the files written; a regime with too few seeds is reported, not replayed."""
    import json

    import numpy as np

    from augtune.search.tables.learning_curves import Regime, write_table

    rng = np.random.default_rng(0)
    candidates = ["identity", "flip(p=0.5)", "cutout", "trivialaugment", "cutmix(alpha=1.0)"]
    quality = np.array([0.6, 0.5, 0.45, 0.4, 0.42])

    def regime(name, seeds):
        epochs = 9
        decay = np.linspace(1.5, 1.0, epochs)
        val = quality[:, None, None] * decay + rng.normal(0, 0.02, (len(candidates), seeds, epochs))
        curves = {"val_loss": val, "test_loss": val + 0.03, "val_acc": 1 - val, "test_acc": 1 - val,
                  "epoch_seconds": np.full_like(val, 0.5)}
        proxy = {"t_stddev": np.stack([quality + rng.normal(0, 0.05, 5) for _ in range(3)], 1),
                 "entropy": rng.random((len(candidates), 3))}
        return Regime(name, candidates, list(range(seeds)), epochs, curves, proxy, np.full((5, 3), 0.1))

    table = write_table(tmp_path / "t.json.gz", {"ok": regime("ok", 5), "short": regime("short", 2)})
    study = _load("replay_study")
    results = study.run(table, tmp_path / "out", replays=20)
    ok = results["regimes"]["ok"]
    assert results["regimes"]["short"] == {"replayed": False, "seeds": 2}
    assert {"exhaustive", "random 1", "SH min1", "ASHA grace3", study.TODAY, "entropy top1",
            "low-fidelity 3ep top3", "fixed trivialaugment"} <= set(ok["strategies"])
    exhaustive = ok["strategies"]["exhaustive"]
    assert exhaustive["compute"] == pytest.approx(1.0) and sum(exhaustive["chosen"].values()) == 20
    assert ok["strategies"]["random 1"]["compute"] == pytest.approx(0.2)
    decision = results["decision"]
    assert decision["chosen"] in ok["strategies"]
    if decision["within_noise"]:  # the rule: the cheapest of those within seed noise
        assert decision["chosen"] in decision["within_noise"]
        cheapest = min(decision["mean_compute"][s] for s in decision["within_noise"])
        assert decision["mean_compute"][decision["chosen"]] == cheapest
    for name in ("replay.json", "replay.md", "ok.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    assert json.loads((tmp_path / "out" / "replay.json").read_text())["decision"] == decision


def test_learning_curve_table_builds_from_its_logs(tmp_path):
    """benchmarks/lc_table.py build: the resumable logs (one line per run, one per proxy seed) ->
    the versioned table, read back by the loader with every number where it belongs."""
    import json

    import numpy as np

    from augtune.search.tables.learning_curves import load_table

    lc = _load("lc_table")
    out = tmp_path / "logs"
    out.mkdir()
    regime = "spc30-r8"
    candidates = lc.candidate_ids(regime, out)
    assert len(candidates) == 15 and "cutmix_pick(entropy=teacher,pool=2,keep=0.25)" in candidates
    epochs = 30
    rows = [{"regime": regime, "candidate": candidates[1], "seed": 3, "seconds": 9.0,
             **{m: [0.01 * e + i for e in range(epochs)] for i, m in enumerate(lc.CURVE_METRICS)}},
            {"regime": regime, "candidate": "not-a-candidate", "seed": 0, "seconds": 1.0,
             **{m: [0.0] * epochs for m in lc.CURVE_METRICS}}]
    (out / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"cut by a kill')
    proxy = {"regime": regime, "proxy_seed": 1, "scores": {candidates[1]: {"t_stddev": 0.02, "entropy": 0.4}},
             "seconds": {candidates[1]: 1.5}}
    (out / "proxy.jsonl").write_text(json.dumps(proxy) + "\n")
    path = tmp_path / "t.json.gz"
    lc.build(out, path)
    table = load_table(path)
    assert set(table) == set(lc.REGIMES)
    r = table[regime]
    assert r.ran().sum() == 1 and r.ran()[1, 3]
    np.testing.assert_allclose(r.curves["test_loss"][1, 3], [0.01 * e + 2 for e in range(epochs)], atol=1e-6)
    assert r.proxy["t_stddev"][1, 0] == 0.02 and np.isnan(r.proxy["t_stddev"][0, 0])
    assert r.meta["proxy_seeds"] == [1] and r.proxy_seconds[1, 0] == 1.5
    assert table["spc50-r8"].ran().sum() == 0


def test_policy_table_builds_from_its_logs_with_cpu_seconds(tmp_path, monkeypatch):
    """benchmarks/policy_table.py: 60 distinct candidates (the 15 recipes first, then the sampled
    policies), and its logs -> a version-2 table whose replays charge the runs' CPU seconds."""
    import json

    from augtune.search.tables.learning_curves import load_table

    pt = _load("policy_table")
    monkeypatch.setattr(pt, "TABLE", tmp_path / "no-committed-table.json.gz")  # the logs alone
    ids = pt.candidates()
    assert len(ids) == len(set(ids)) == 60 and ids[:15] == pt.recipes()
    assert any("+" in c for c in ids[15:])
    out = tmp_path / "logs"
    out.mkdir()
    epochs = 30
    row = {"regime": "spc30-r8", "candidate": ids[20], "seed": 2, "seconds": 9.0,
           "epoch_cpu_seconds": [0.25] * epochs,
           **{m: [0.01 * e + i for e in range(epochs)] for i, m in enumerate(pt.CURVE_METRICS)}}
    (out / "runs.jsonl").write_text(json.dumps(row) + "\n")
    path = tmp_path / "p.json.gz"
    pt.build(out, path)
    table = load_table(path)
    r = table["spc30-r8"]
    assert r.ran().sum() == 1 and r.ran()[20, 2] and r.seconds_curve == "epoch_cpu_seconds"
    assert r.epoch_seconds()[20] == 0.25  # CPU seconds, not the wall seconds curve
    assert r.meta["fixed_recipes"] == pt.recipes()


def test_sweep_overhead_splits_idle_slots_into_gaps_and_tail():
    overhead = _load("sweep_overhead")
    # 2 slots over [0, 10]: A [1, 6], B [1, 4], C [4.5, 10]; the last start is 4.5
    records = [{"start": 1.0, "end": 6.0}, {"start": 1.0, "end": 4.0}, {"start": 4.5, "end": 10.0}]
    gaps, tail = overhead.idle(records, 2, 0.0, 10.0)
    assert gaps == pytest.approx(2 * 1.0 + 1 * 0.5)  # both slots before 1, one between 4 and 4.5
    assert tail == pytest.approx(1 * 4.0)  # one slot idle from A's end at 6 to 10


def test_sweep_overhead_names_each_phase_by_its_experiment():
    name = _load("sweep_overhead").phase_name
    assert [name(e) for e in ("sweep-20261203-085838", "sweep-20261203-085838-audit-0",
                              "sweep-20261203-085838-baseline", "sweep-20261203-085838-topup1")] == \
        ["search", "audit-0", "baseline", "topup1"]
