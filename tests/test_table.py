"""`augtune table CONFIG`: a learning-curve table of the config's own candidates, built as a
validation sweep on Ray Tune, read back from MLflow, in the format `augtune replay` reads."""
import math

import numpy as np
import pytest
import yaml
from mlflow import MlflowClient

from sweep_helpers import write_sweep_config

TWO = ["flip", "cutmix_pick(keep=0.5,pool=2)"]


def _table_config(tmp_path, candidates=None, **search):
    path = write_sweep_config(tmp_path, "table", f"sqlite:///{tmp_path}/mlflow.db", **search)
    if candidates:
        cfg = yaml.safe_load(path.read_text())
        cfg["space"]["candidates"] = candidates
        path.write_text(yaml.safe_dump(cfg))
    return path


def _load_benchmark(name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"augtune_bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _runs(candidates, seeds, epochs, offset=0.0):
    return [{"candidate": c, "seed": s, "val_loss": [1.0 + i + s / 10 + offset] * epochs,
             "test_loss": [2.0 + i] * epochs, "val_acc": [0.5] * epochs, "test_acc": [0.4] * epochs,
             "epoch_seconds": [0.1 * (i + 1)] * epochs, "epoch_cpu_seconds": [0.05 * (i + 1)] * epochs}
            for i, c in enumerate(candidates) for s in seeds]


def test_regime_from_runs_places_every_run_and_proxy_seed(tmp_path):
    from augtune.search.tables.learning_curves import load_table, write_table
    from augtune.search.tables.learning_curves import regime_from_runs

    runs = _runs(["a", "b"], [0, 1, 2], 4)[1:]  # (a, seed 0) missing
    runs.append({**runs[0], "candidate": "not-in-space"})  # ignored
    proxy = [{"proxy_seed": 1, "scores": {"a": {"t_stddev": 0.3}, "b": {"t_stddev": 0.1}},
              "seconds": {"a": 1.0, "b": 2.0}},
             {"proxy_seed": 0, "scores": {"a": {"t_stddev": 0.2, "kl": 5.0}, "b": {"t_stddev": 0.4, "kl": 6.0}},
              "seconds": {"a": 1.5, "b": 2.5}}]
    regime = regime_from_runs("r", ["a", "b"], [0, 1, 2], 4, runs, proxy, {"note": "x"})
    path = write_table(tmp_path / "t.json.gz", {"r": regime}, protocol="test")
    loaded = load_table(path)["r"]
    assert loaded.ran().tolist() == [[False, True, True], [True, True, True]]
    assert loaded.final("val_loss")[1, 2] == pytest.approx(2.2)
    assert loaded.seconds_curve == "epoch_cpu_seconds" and loaded.epoch_seconds()[1] == pytest.approx(0.1)
    assert loaded.meta["proxy_seeds"] == [0, 1] and loaded.meta["note"] == "x"  # sorted by proxy seed
    assert loaded.proxy["t_stddev"].tolist() == [[0.2, 0.3], [0.4, 0.1]]
    assert loaded.proxy["kl"][0, 0] == 5.0 and math.isnan(loaded.proxy["kl"][0, 1])
    assert loaded.proxy_seconds.tolist() == [[1.5, 1.0], [2.5, 2.0]]
    with pytest.raises(ValueError, match="two finished runs of b seed 0"):
        regime_from_runs("r", ["a", "b"], [0, 1, 2], 4, runs + [runs[2]], proxy, {})


@pytest.mark.parametrize("args, text", [
    (["--seeds", "2"], "--seeds: a table needs at least 3"),
    (["--proxy-seeds", "0"], "--proxy-seeds: give at least 1"),
    (["--set", "search.method=sla", "--set", "space.candidates=[flip, cutout]"], "no teacher"),
    (["--output", "{tmp}"], "is a folder"),
    (["--resume"], "no sweep to resume"),
])
def test_bad_table_requests_exit_2_before_anything_is_written(tmp_path, capsys, args, text):
    from augtune.search.cli import main

    path = _table_config(tmp_path)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert main(["table", str(path), "--no-progress", *args]) == 2
    assert text in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("config", ["digits_sweep.yaml", "digits_recipe.yaml", "digits_pbt.yaml",
                                    "digits_search.yaml", "cifar100_kd.yaml"])
def test_every_shipped_kd_config_makes_a_table(config):
    """A table ignores the sweep's pruning, scheduler and baseline: the default's top_k 8 of a
    3-policy sample, a fixed candidate, PBT or an audit still give a valid table config."""
    from pathlib import Path

    from augtune.search.sweep.table_job import table_overrides
    from augtune.search.sweep_config import load_config

    path = Path(__file__).resolve().parents[1] / "configs" / config
    small = {"space.sample": 3} if config == "digits_sweep.yaml" else {}  # fewer policies than top_k 8
    table = load_config(path, {**small, **table_overrides(3, 1)})
    cfg = load_config(path, {**small, "search.prune": {"mode": "none"}, "proxy.race_top_k": 0})
    assert table.search.validate_proxy and table.search.seeds == 3 and table.prune_mode(True) == "none"
    assert table.search.scheduler.kind == "fifo" and table.baseline is None and table.proxy.race_top_k == 0
    assert [c.id for c in table.space.resolved()] == [c.id for c in cfg.space.resolved()]


def test_resuming_a_table_where_a_sweep_ran_is_refused(tmp_path, capsys):
    from augtune.search.cli import main
    from augtune.search.sweep.state import PhaseRecord, SweepState

    path = _table_config(tmp_path)
    folder = tmp_path / "runs" / "table"
    SweepState(parent_run_id="x", validate_proxy=False, search=PhaseRecord("sweep-1")).save(folder)
    assert main(["table", str(path), "--resume", "--no-progress"]) == 2
    assert "is a sweep, not a table" in capsys.readouterr().err


@pytest.mark.slow
def test_table_command_trains_every_candidate_and_seed_and_replay_reads_it(tmp_path, ray_session, capsys):
    from augtune.search.cli import main
    from augtune.search.tables.learning_curves import load_table
    from augtune.spaces.candidates import parse_candidate

    path = _table_config(tmp_path, TWO)
    out = tmp_path / "tables" / "mine.json.gz"
    assert main(["table", str(path), "--no-progress", "--proxy-seeds", "2", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}: 6 of 6 (candidate, seed) runs" in printed
    ids = [parse_candidate(c).id for c in TWO]
    regime = load_table(out)["table"]
    assert regime.candidates == ids and regime.seeds == [0, 1, 2] and regime.epochs == 2
    assert regime.ran().all() and regime.seconds_curve == "epoch_cpu_seconds"
    assert np.isfinite(regime.curves["epoch_cpu_seconds"]).all()
    assert regime.meta["proxy_seeds"] == [0, 1] and np.isfinite(regime.proxy["t_stddev"]).all()
    # seed 0 of the proxy is the sweep's own scoring, seed 1 a further one: different batch orders
    assert not np.array_equal(regime.proxy["t_stddev"][:, 0], regime.proxy["t_stddev"][:, 1])
    # the curves are the MLflow trial runs' own, one run per (candidate, seed)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("table")
    trials = client.search_runs([exp.experiment_id], "tags.`augtune.stage` = 'trial'")
    assert len(trials) == 6
    for run in trials:
        c, s = ids.index(run.data.tags["augtune.candidate"]), int(run.data.params["seed"])
        history = sorted(m.value for m in client.get_metric_history(run.info.run_id, "val_loss"))
        assert sorted(regime.curves["val_loss"][c, s]) == pytest.approx(history)
    parent = client.search_runs([exp.experiment_id], "tags.`augtune.stage` = 'sweep'")[0]
    assert "mine.json.gz" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    # benchmarks/sweep_overhead.py reads the grid's Ray files: 6 trials, each with its set-up seconds
    overhead = _load_benchmark("sweep_overhead")
    rows = {r["phase"]: r for r in overhead.sweep_rows(tmp_path / "runs" / "table", 2)}
    assert rows["search"]["trials"] == 6 and rows["search"]["trained s"] > 0 and rows["search"]["set-up"] > 0
    assert rows["search"]["overhead/trial"] == pytest.approx(
        rows["search"]["in-trial"] + rows["search"]["gaps"] + rows["search"]["tail"])
    # a finished table resumed: nothing trained again, the proxy seeds read from the log, same table
    before = out.read_bytes()
    assert main(["table", str(path), "--no-progress", "--proxy-seeds", "2", "--output", str(out), "--resume"]) == 0
    assert out.read_bytes() == before
    assert len(client.search_runs([exp.experiment_id], "tags.`augtune.stage` = 'trial'")) == 6
    # and the replay study reads it (one regime of two candidates: the protocol's small-space case)
    report = tmp_path / "replay"
    code = main(["replay", str(out), "--recipes", ids[1], "--replays", "4", "--outer", "2", "--inner", "2",
                 "--output", str(report), "--no-progress"])
    assert code == 0, capsys.readouterr().err[-2000:]
    assert (report / "replay.json").is_file()
