"""End-to-end sweeps on Ray with MLflow: pruning, logging, the best-augmentation query."""
import json

import numpy as np
import pytest
from mlflow import MlflowClient

from augtune.search.results.best import best_augmentation
from augtune.search.cli import main
from augtune.search.sweep_config import load_config
from augtune.search.sweep.driver import run_sweep
from augtune.search.standalone.proxy_job import job_dir
from fixtures import assert_accuracy_of
from sweep_helpers import EIGHT_CANDIDATES, runs_by_stage, write_sweep_config


@pytest.fixture(scope="module")
def pruned_sweep(tmp_path_factory, ray_session):
    import yaml

    tmp = tmp_path_factory.mktemp("sweep")
    uri = f"sqlite:///{tmp}/mlflow.db"
    path = write_sweep_config(tmp, "pruned", uri)
    # its 2 concurrent trials read the teacher's logits on x from the cache (2 x 2 epochs would not
    # fill it on auto); test_exported_best_trial_reproduces_exactly_without_ray replays one uncached
    path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), "kd": {"teacher_cache": "on"}}))
    cfg = load_config(path)
    outcome = run_sweep(cfg, progress=False)
    return cfg, uri, outcome


def test_only_top_k_by_proxy_are_trained(pruned_sweep):
    cfg, uri, outcome = pruned_sweep
    assert len(outcome.scores) == len(EIGHT_CANDIDATES) == 8
    best_three = [s.candidate for s in sorted(outcome.scores, key=lambda s: s.t_stddev)[:3]]
    assert outcome.survivors == best_three
    assert {t.augmentation for t in outcome.trials} <= set(best_three)
    assert len(outcome.trials) == 3 and all(t.error is None for t in outcome.trials)


def test_mlflow_holds_parent_proxy_children_and_trial_curves(pruned_sweep):
    cfg, uri, outcome = pruned_sweep
    runs = runs_by_stage(uri, cfg.experiment_name)
    (parent,) = runs["sweep"]
    assert parent.info.run_id == outcome.parent_run_id and parent.info.status == "FINISHED"
    assert len(runs["proxy"]) == 8 and len(runs["trial"]) == 3
    for run in runs["proxy"] + runs["trial"]:
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    proxy_ids = {r.data.tags["augtune.candidate"]: r.data.metrics["t_stddev"] for r in runs["proxy"]}
    for s in outcome.scores:
        assert proxy_ids[s.candidate] == pytest.approx(s.t_stddev)
    client = MlflowClient(tracking_uri=uri)
    # `mlflow ui` opens on the training runs, not the GenAI traces view
    assert client.get_experiment_by_name(cfg.experiment_name).tags["mlflow.experimentKind"] == \
        "custom_model_development"
    for trial in runs["trial"]:
        history = client.get_metric_history(trial.info.run_id, "test_loss")
        assert [m.step for m in sorted(history, key=lambda m: m.step)] == [1, 2]
        assert trial.data.metrics["t_stddev"] == pytest.approx(proxy_ids[trial.data.tags["augtune.candidate"]])
        assert "lr" in trial.data.params
    metrics = parent.data.metrics
    assert metrics["pruned_candidates"] == 5 and metrics["trained_candidates"] == 3
    # exhaustive estimate: every one of the 8 candidates once in full, at the seconds per epoch
    # measured in this sweep's trials (the 5 never trained at the mean of the 3 that were)
    per_epoch = {}
    for t in outcome.trials:
        per_epoch.setdefault(t.augmentation, []).append(t.seconds / t.epochs)
    means = [sum(v) / len(v) for v in per_epoch.values()]
    expected = cfg.student.train.epochs * (sum(means) + (8 - len(means)) * sum(means) / len(means))
    assert metrics["estimated_exhaustive_seconds"] == pytest.approx(expected)
    spent = metrics["trial_seconds"] + metrics["proxy_seconds"] + metrics["audit_seconds"]
    assert metrics["compute_fraction"] == pytest.approx(spent / expected)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"proxy.csv", "proxy.json", "pruned.json", "trials.json", "config.json"} <= artifacts
    pruned = json.loads(open(client.download_artifacts(parent.info.run_id, "pruned.json")).read())
    assert pruned["kept"] == outcome.survivors and len(pruned["pruned"]) == 5


def test_the_teacher_cache_is_filled_once_and_read_by_every_trial(pruned_sweep):
    from augtune.search.results.tracking import TEACHER_CACHE_TAG

    cfg, uri, outcome = pruned_sweep
    folder = job_dir(cfg) / "teacher_cache"
    (cache,) = folder.iterdir()  # one complete file, no partial one
    assert cache.suffix == ".npy" and ".partial" not in cache.name
    client = MlflowClient(tracking_uri=uri)
    parent = client.get_run(outcome.parent_run_id)
    assert parent.data.tags[TEACHER_CACHE_TAG] == str(cache)
    assert len(client.get_metric_history(outcome.parent_run_id, "teacher_cache_seconds")) == 1  # filled once
    stored = np.load(cache, mmap_mode="r")
    assert stored.shape[1] == 18  # 12 px digits: padding 1, 9 offsets x 2 flips
    trials = runs_by_stage(uri, "pruned")["trial"]
    assert len(trials) == 3 and all(r.data.metrics["train_teacher_cached"] == 1.0 for r in trials)


def test_trials_take_the_data_the_driver_loaded(pruned_sweep):
    """Every trial, the fresh actors' first ones included, took the driver's data from Ray's object
    store: none loaded it again (train_data_loaded, reported with a trial's first epoch)."""
    cfg, uri, outcome = pruned_sweep
    trials = runs_by_stage(uri, "pruned")["trial"]
    assert len(trials) == 3 and all(r.data.metrics["train_data_loaded"] == 0.0 for r in trials)


def test_best_from_mlflow_agrees_with_sweep(pruned_sweep, capsys):
    cfg, uri, outcome = pruned_sweep
    assert best_augmentation(uri, cfg.experiment_name).candidate == outcome.best.augmentation
    assert main(["best", "--experiment", cfg.experiment_name, "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert f"best augmentation: {outcome.best.augmentation}" in out


def test_sweep_selects_on_val_and_reports_test_beside(pruned_sweep, capsys):
    cfg, uri, outcome = pruned_sweep
    assert cfg.search.metric == "val_loss"
    finished = [t for t in outcome.trials if t.epochs == cfg.student.train.epochs]
    assert outcome.best == min(finished, key=lambda t: t.val_loss)
    parent = MlflowClient(tracking_uri=uri).get_run(outcome.parent_run_id)
    assert parent.data.metrics["best_val_loss"] == pytest.approx(outcome.best.val_loss)
    assert parent.data.metrics["best_trial_test_loss"] == pytest.approx(outcome.best.test_loss)
    assert parent.data.tags["augtune.selected_on"] == "val"
    summary = best_augmentation(uri, cfg.experiment_name)  # val_loss by default
    best_run = next(r for r in summary.runs if r.val_loss == summary.best)
    assert best_run.test_loss == pytest.approx(outcome.best.test_loss)


def test_best_on_test_needs_opt_in_and_warns(pruned_sweep, capsys):
    cfg, uri, _ = pruned_sweep
    assert main(["best", "--experiment", cfg.experiment_name, "--tracking-uri", uri, "--metric", "test_loss"]) == 2
    assert "--select-on-test" in capsys.readouterr().err
    assert main(["best", "--experiment", cfg.experiment_name, "--tracking-uri", uri, "--metric", "test_loss",
                 "--select-on-test"]) == 0
    assert "biased" in capsys.readouterr().out


def test_test_metric_in_config_needs_opt_in(tmp_path, capsys):
    path = write_sweep_config(tmp_path, "on-test", f"sqlite:///{tmp_path}/m.db", metric="test_loss")
    assert main(["sweep", str(path), "--no-progress"]) == 2
    assert "search.metric" in capsys.readouterr().err
    assert not (tmp_path / "m.db").exists() and not (tmp_path / "runs").exists()
    cfg = load_config(path, {"search.select_on_test": True})
    assert cfg.search.metric == "test_loss"


def test_val_metric_without_val_split_exits_2_before_writing(tmp_path, capsys):
    path = write_sweep_config(tmp_path, "noval", f"sqlite:///{tmp_path}/m.db")
    assert main(["sweep", str(path), "--no-progress", "--set", "data.val_per_class=0"]) == 2
    assert "data.val_per_class" in capsys.readouterr().err
    assert not (tmp_path / "m.db").exists() and not (tmp_path / "runs").exists()


@pytest.fixture(scope="module")
def audited_sweep(tmp_path_factory, ray_session):
    tmp = tmp_path_factory.mktemp("audit")
    uri = f"sqlite:///{tmp}/mlflow.db"
    path = write_sweep_config(tmp, "audited", uri, prune={"mode": "top_k", "top_k": 3, "audit": 2,
                                                          "audit_seeds": 2, "on_disagreement": "report"})
    outcome = run_sweep(load_config(path), progress=False)
    return uri, outcome


def test_fixed_mode_trains_only_the_named_candidate_and_scores_nothing(tmp_path, ray_session, capsys):
    """prune.mode fixed (no search over augmentations): the teacher is obtained, no candidate is
    scored, every trial trains the named candidate, and compute is reported against one full run of
    every candidate of the space."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    path = write_sweep_config(tmp_path, "fixed", uri, prune={"mode": "fixed", "candidate": "cutout"})
    outcome = run_sweep(load_config(path), progress=False)
    assert outcome.scores == [] and outcome.survivors == ["cutout"]
    assert {t.augmentation for t in outcome.trials} == {"cutout"} and len(outcome.trials) == 3
    runs = runs_by_stage(uri, "fixed")
    assert "proxy" not in runs and len(runs["trial"]) == 3
    assert outcome.compute["candidates"] == len(EIGHT_CANDIDATES)
    assert outcome.compute["pruned_candidates"] == len(EIGHT_CANDIDATES) - 1
    assert "trials for 1 of 8 candidates" in capsys.readouterr().out
    assert (tmp_path / "runs" / "fixed" / "teacher.pt").is_file()


def test_sweep_and_best_agree_on_the_chosen_trial_whichever_phase_trained_it(audited_sweep, tmp_path):
    """One definition of the chosen trial: the lowest validation loss among the full-length trials
    of the search and the audit; `augtune best` finds the same run, and its student weights are
    logged on it (an audit trial's read back from its saved experiment)."""
    uri, outcome = audited_sweep
    runs = runs_by_stage(uri, "audited")["trial"]
    val = {r.info.run_id: r.data.metrics["final_val_loss"] for r in runs}
    best_run = min(val, key=val.get)
    chosen = next(r for r in runs if r.info.run_id == best_run)
    assert chosen.data.tags["augtune.trial_id"] == outcome.best.trial_id
    assert outcome.best.val_loss == pytest.approx(val[best_run])
    summary = best_augmentation(uri, "audited")
    assert summary.candidate == outcome.best.augmentation and summary.best == pytest.approx(val[best_run])
    client = MlflowClient(tracking_uri=uri)
    assert "student.pt" in {a.path for a in client.list_artifacts(best_run)}
    exported = tmp_path / "best.yaml"
    assert main(["best", "--experiment", "audited", "--tracking-uri", uri, "--export", str(exported)]) == 0
    assert exported.with_name("best.student.pt").is_file()


def test_audit_trains_sentinels_and_logs_a_verdict_that_matches_the_numbers(audited_sweep, capsys):
    from scipy import stats

    from augtune.search.selection.prune import beats, pooled_sd

    uri, outcome = audited_sweep
    audit = outcome.audit
    kept = [s.candidate for s in outcome.scores][:3]
    assert audit["kept"] == kept and len(audit["sentinels"]) == 2
    assert not set(audit["sentinels"]) & set(kept)
    runs = runs_by_stage(uri, "audited")
    audit_runs = [r for r in runs["trial"] if r.data.tags.get("augtune.phase") == "audit"]
    assert len(audit_runs) == 5 * 2  # 3 kept + 2 sentinels, 2 seeds each
    values: dict[str, list[float]] = {}
    for run in audit_runs:
        values.setdefault(run.data.tags["augtune.candidate"], []).append(run.data.metrics["final_val_loss"])
    assert {c: sorted(v) for c, v in values.items()} == {c: sorted(v) for c, v in audit["values"].items()}
    sd, dof = pooled_sd(values)
    kept_best = min(kept, key=lambda c: (np.mean(values[c]), c))
    beaten = [c for c in audit["sentinels"] if beats(values[c], values[kept_best], sd, dof, True)]
    assert audit["kept_best"] == kept_best and audit["beaten_by"] == beaten
    parent = MlflowClient(tracking_uri=uri).get_run(outcome.parent_run_id)
    assert parent.data.metrics["audit_disagreement"] == float(bool(beaten))
    assert parent.data.metrics["audit_noise_sd"] == pytest.approx(sd)
    tau = stats.kendalltau([audit["proxy_rank"][c] for c in values], [np.mean(values[c]) for c in values]).statistic
    assert parent.data.metrics["audit_rank_kendall"] == pytest.approx(tau)
    assert parent.data.tags["augtune.audit_verdict"] == audit["verdict"]
    assert parent.data.params["audit.sentinels"] == ",".join(audit["sentinels"])
    # the search ran over the audit's survivors; the compute summary counts the audit's trials
    assert outcome.survivors == audit["survivors"]
    assert {t.augmentation for t in outcome.trials} <= set(outcome.survivors)
    assert parent.data.metrics["audit_trials"] == 10 and parent.data.metrics["trained_candidates"] == 5
    assert parent.data.metrics["audit_seconds"] > 0


def test_best_on_unknown_experiment_exits_2(pruned_sweep, capsys):
    _, uri, _ = pruned_sweep  # an existing store without that experiment
    assert main(["best", "--experiment", "nope", "--tracking-uri", uri]) == 2
    assert "no MLflow experiment" in capsys.readouterr().err


def test_resume_without_state_exits_2_and_writes_nothing(tmp_path, capsys):
    path = write_sweep_config(tmp_path, "never", f"sqlite:///{tmp_path}/m.db")
    assert main(["sweep", str(path), "--resume", "--no-progress"]) == 2
    assert "no sweep to resume" in capsys.readouterr().err
    assert not (tmp_path / "m.db").exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("method", ["sla", "ssd"])
def test_method_sweeps_log_their_heads(tmp_path, ray_session, method):
    import yaml

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    path = write_sweep_config(tmp_path, f"{method}-sweep", uri, method=method, num_samples=2,
                              hyperparameters={})
    raw = yaml.safe_load(path.read_text())
    raw["space"]["candidates"] = ["identity", "flip", "cutout"]
    if method == "ssd":
        raw["data"].update(samples_per_class=30, imbalance_factor=5, many_shot_threshold=15, few_shot_threshold=8)
        raw["ssd"] = {"lws": {"epochs": 1, "batch_size": 32}, "stage4": True}
        raw["search"]["prune"] = {"mode": "top_k", "top_k": 2}
    path.write_text(yaml.safe_dump(raw))
    outcome = run_sweep(load_config(path), progress=False)
    assert outcome.best is not None
    runs = runs_by_stage(uri, f"{method}-sweep")
    assert len(runs["trial"]) == 2
    metrics = runs["trial"][0].data.metrics
    if method == "sla":
        assert "proxy" not in runs  # SLA has no teacher to score with
        client = MlflowClient(tracking_uri=uri)
        for key in ("final_test_si_acc", "final_test_agg_acc", "final_test_sd_acc"):
            assert_accuracy_of(metrics[key], 450)  # the digits test split
            history = client.get_metric_history(runs["trial"][0].info.run_id, key.removeprefix("final_"))
            assert metrics[key] == pytest.approx(max(history, key=lambda m: m.step).value)
    else:
        assert len(runs["proxy"]) == 3 and len(runs["ssd-stages"]) == 1
        stages = runs["ssd-stages"][0].data.metrics
        assert {"test_stage1_classifier_acc", "test_stage2_lws_acc", "test_stage2_lws_few_acc"} <= set(stages)
        for key in ("final_test_stage3_hard_acc", "final_test_stage3_soft_acc", "final_test_stage4_lws_acc",
                    "final_test_stage3_soft_many_acc"):
            assert key in metrics


def test_random_search_samples_survivors_and_hyperparameters_and_trains_the_baseline_after(tmp_path, ray_session):
    """Random search has no searcher to go on from: the recipe baseline is an experiment of its own."""
    from augtune.search.standalone.proxy_job import job_dir
    from augtune.search.sweep.state import SweepState

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    path = write_sweep_config(tmp_path, "random-sweep", uri, algorithm="random", num_samples=3,
                              scheduler={"kind": "asha", "grace_period": 1, "reduction_factor": 2},
                              baseline="auto", baseline_seeds=2)
    cfg = load_config(path)
    outcome = run_sweep(cfg, progress=False)
    assert len(outcome.trials) == 3
    assert {t.augmentation for t in outcome.trials} <= set(outcome.survivors)
    assert all(0.02 <= t.hyperparameters["lr"] <= 0.1 for t in outcome.trials)
    runs = [r for r in runs_by_stage(uri, "random-sweep")["trial"] if r.data.tags.get("augtune.phase") == "baseline"]
    experiments = {p.name for p in (job_dir(cfg) / "ray").iterdir() if p.is_dir()}
    search = SweepState.load(job_dir(cfg)).search.experiment
    if outcome.best.augmentation == cfg.baseline:  # the recipe chosen: nothing to train
        assert not runs and experiments == {search}
        return
    assert sorted((r.data.tags["augtune.candidate"], int(r.data.params["seed"])) for r in runs) == sorted(
        [(cfg.baseline, cfg.seed), (cfg.baseline, cfg.seed + 1), (outcome.best.augmentation, cfg.seed + 1)])
    assert all(float(r.data.params["lr"]) == outcome.best.hyperparameters["lr"] for r in runs)
    assert experiments == {search, f"{search}-baseline"}
    assert len(outcome.baseline["baseline_values"]) == len(outcome.baseline["chosen_values"]) == 2


def test_exported_best_trial_reproduces_exactly_without_ray(pruned_sweep, tmp_path, capsys):
    import json

    import torch

    from augtune.trainables.engine import load_checkpoint

    cfg, uri, outcome = pruned_sweep
    exported = tmp_path / "best.yaml"
    assert main(["best", "--experiment", cfg.experiment_name, "--tracking-uri", uri, "--export", str(exported)]) == 0
    assert "--threads 1" in exported.read_text() and exported.with_name("best.student.pt").is_file()
    # the trials read the teacher cache; the replay forwards the teacher
    assert main(["train", "kd", str(exported), "--threads", "1", "--no-progress", "--set", "kd.teacher_cache=off",
                 "--set", f"output_dir={tmp_path / 'again'}"]) == 0
    torch.set_num_threads(2)  # back to this session's default
    printed = capsys.readouterr().out
    summary = json.loads(printed[printed.index("{"):printed.rindex("}") + 1])
    trial = outcome.best
    assert summary["augmentation"] == trial.augmentation
    assert summary["test_loss"] == trial.test_loss and summary["val_loss"] == trial.val_loss  # bit for bit
    logged, _ = load_checkpoint(exported.with_name("best.student.pt"))
    again, _ = load_checkpoint(summary["student_checkpoint"])
    for (name, a), (_, b) in zip(logged.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name


def test_a_state_written_before_typed_phases_resumes_its_phases(tmp_path):
    """A sweep state of earlier versions (the single `topup_experiment`, audit batches with a
    `name`) loads as typed phases: the search's round 1 and each batch's experiment, so `--resume`
    restores those experiments instead of running their trials again; saved and loaded, it is equal."""
    import json

    from augtune.search.sweep.state import AuditRecord, PhaseRecord, SweepState, TopUp

    old = {"parent_run_id": "p", "ray_experiment": "sweep-1", "validate_proxy": False, "stage": "search",
           "topup_experiment": "sweep-1-topup", "topup_trials": 2,
           "scores": [{"rank": 1, "candidate": "cutout", "t_stddev": 0.5, "low": 0.4, "high": 0.6, "groups": 3,
                       "passes": 2, "seconds": 1.0, "zoo": {}, "raced_out": False}],
           "audit_phases": [{"candidates": ["cutout"], "name": "sweep-1-audit-0", "values": {"cutout": [0.3]},
                             "topups": [], "rows": [{"augmentation": "cutout", "seed": 0, "trial_id": "t1",
                                                     "val_loss": 0.3}]}]}
    (tmp_path / "sweep_state.json").write_text(json.dumps(old))
    state = SweepState.load(tmp_path)
    assert state.search == PhaseRecord("sweep-1", [TopUp("sweep-1-topup", 2)])
    assert state.scores[0].candidate == "cutout" and state.scores[0].t_stddev == 0.5
    audit = state.audit_phases[0]
    assert isinstance(audit, AuditRecord) and audit.experiment == "sweep-1-audit-0"
    assert audit.rows[0].trial_id == "t1" and audit.values == {"cutout": [0.3]}
    state.save(tmp_path)
    assert json.loads((tmp_path / "sweep_state.json").read_text())["search"]["topups"] == [
        {"experiment": "sweep-1-topup", "lost": 2}]
    assert SweepState.load(tmp_path) == state


class _Grid(list):
    """What a phase reads of a Ray ResultGrid: its trials, how many ended, where it lives."""

    def __init__(self, size: int):
        super().__init__(range(size))
        self.num_terminated, self.num_errors, self.experiment_path = size, 0, "/nonexistent"


def test_top_ups_run_in_rounds_until_nothing_is_lost():
    """Ray restores the experiment with 1 of 4 trials and the first top-up (known from the
    state) with 1 of its 3: a second round runs the 2 still missing, built fresh, and is recorded."""
    from augtune.search.sweep.phases import TunePhase
    from augtune.search.sweep.state import PhaseRecord, TopUp

    restored_sizes = {"x": 1, "x-topup1": 1}  # what Ray's restores give back
    built, saves = [], []

    class FourTrials(TunePhase):
        expected = 4

        def build(self, experiment, lost, round_number, grids):
            built.append((experiment, lost, round_number, [len(g) for g in grids]))
            return type("Tuner", (), {"fit": lambda self: _Grid(lost)})()

        def lost(self, grids):
            return 4 - sum(len(g) for g in grids)

        def _save(self):
            saves.append(1)

        def _restore_or_build(self, target, lost, round_number, grids):  # Ray's restore, as it went
            if target.experiment in restored_sizes:
                return type("Tuner", (), {"fit": lambda self: _Grid(restored_sizes[target.experiment])})(), True
            return self.build(target.experiment, lost, round_number, grids), False

    record = PhaseRecord("x", [TopUp("x-topup1", 3)])
    grids = FourTrials(None, None, record, None, None).run()
    assert [len(g) for g in grids] == [1, 1, 2]
    assert record.topups == [TopUp("x-topup1", 3), TopUp("x-topup2", 2)]
    assert built == [("x-topup2", 2, 2, [1, 1])] and saves


def test_a_grid_top_up_runs_exactly_the_points_a_restore_lost(tmp_path, ray_session):
    import torch
    from ray.tune import Callback

    from augtune.search.sweep.tuners import build_grid_tuner, collect_trials, grid_points, missing_points
    from augtune.trainables.data import load_data
    from augtune.trainables.engine import save_checkpoint
    from augtune.trainables.models import build_model

    cfg = load_config(write_sweep_config(tmp_path, "points", f"sqlite:///{tmp_path}/m.db"),
                      {"student.train.epochs": 1})
    torch.manual_seed(0)
    teacher = save_checkpoint(tmp_path / "teacher.pt", build_model("resnet8", 10, 1), "resnet8", load_data(cfg.data))
    candidates = ["crop_flip", "cutout"]
    lost = [{"augmentation": "cutout", "seed": cfg.seed + 1}, {"augmentation": "crop_flip", "seed": cfg.seed}]
    grid = build_grid_tuner(cfg, candidates, 2, teacher, Callback(), "points-topup1", points=lost).fit()
    assert sorted((t.augmentation, t.seed) for t in collect_trials(grid)) == sorted(
        (p["augmentation"], p["seed"]) for p in lost)
    assert missing_points([grid], grid_points(cfg, candidates, 2)) == [
        {"augmentation": "crop_flip", "seed": cfg.seed + 1}, {"augmentation": "cutout", "seed": cfg.seed}]


@pytest.fixture(scope="module")
def policy_sweep(tmp_path_factory, ray_session):
    """A screened policy space with racing, the kept policies trained, the recipe baseline beside."""
    from augtune.search.sweep_config import load_config
    from augtune.search.sweep.driver import run_sweep

    tmp_path = tmp_path_factory.mktemp("policies")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    path = write_sweep_config(tmp_path, "policies", uri, num_samples=2, baseline="auto", baseline_seeds=2,
                              prune={"mode": "top_k", "top_k": 2})
    cfg = load_config(path, {"space": {"policies": "default", "sample": 12},
                             "proxy.race_top_k": 3, "proxy.passes": 3})
    return cfg, uri, run_sweep(cfg, progress=False)


def test_a_screened_policy_space_logs_the_table_and_children_for_the_kept_only(policy_sweep):
    import csv

    from augtune.search.standalone.proxy_job import job_dir

    cfg, uri, outcome = policy_sweep
    assert len(outcome.scores) == 12 and all("+" in s.candidate or s.candidate for s in outcome.scores)
    assert len(outcome.survivors) == 2
    with open(job_dir(cfg) / "proxy.csv") as f:
        assert len(list(csv.DictReader(f))) == 12  # the whole table
    proxy_runs = runs_by_stage(uri, "policies")["proxy"]
    assert sorted(r.data.tags["augtune.candidate"] for r in proxy_runs) == sorted(outcome.survivors)


def test_the_baseline_runs_at_the_chosen_trials_values_and_seeds(policy_sweep, capsys):
    from augtune.search.cli import main
    from augtune.search.standalone.proxy_job import job_dir
    from augtune.search.sweep.state import SweepState

    cfg, uri, outcome = policy_sweep
    best, recipe = outcome.best, cfg.baseline
    runs = [r for r in runs_by_stage(uri, "policies")["trial"] if r.data.tags.get("augtune.phase") == "baseline"]
    chosen_values = [r for r in runs if float(r.data.params["lr"]) == best.hyperparameters["lr"]]
    points = sorted((r.data.tags["augtune.candidate"], int(r.data.params["seed"])) for r in chosen_values)
    seed = cfg.seed if best.seed is None else best.seed  # search trials train at the config's seed
    # the recipe at the chosen seed and the next, the chosen policy again at the next (nothing when
    # the chosen policy is the recipe itself)
    expected = [] if best.augmentation == recipe else [(recipe, seed), (recipe, seed + 1), (best.augmentation, seed + 1)]
    assert points == sorted(expected)
    # the rest were guesses: the points of another search trial that had finished first
    searched = {t.hyperparameters["lr"] for t in outcome.trials}
    assert all(float(r.data.params["lr"]) in searched for r in runs)
    assert all(run.info.status == "FINISHED" for run in runs)
    # trained after the search in its own experiment: no baseline experiment of their own
    search_experiment = SweepState.load(job_dir(cfg)).search.experiment
    assert [p.name for p in (job_dir(cfg) / "ray").iterdir() if p.is_dir()] == [search_experiment]
    comparison = outcome.baseline
    assert comparison["chosen"] == best.augmentation and comparison["baseline"] == recipe
    assert comparison["chosen_values"][0] == pytest.approx(best.val_loss)
    assert len(comparison["chosen_values"]) == len(comparison["baseline_values"]) == (1 if not expected else 2)
    parent = MlflowClient(tracking_uri=uri).get_run(outcome.parent_run_id)
    assert parent.data.tags["augtune.baseline_verdict"] == comparison["line"]
    assert parent.data.metrics["baseline_val_loss"] == pytest.approx(np.mean(comparison["baseline_values"]))
    assert outcome.compute["baseline_trials"] == len(runs) and (outcome.compute["baseline_seconds"] > 0) == bool(runs)
    # best ranks the search's trials only, and prints the same line
    assert main(["best", "--experiment", "policies", "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert comparison["line"] in out
    assert f"best augmentation: {best.augmentation}" in out
