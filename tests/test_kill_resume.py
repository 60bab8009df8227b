"""SIGKILL of the sweep driver (as a preempted head node or a closed ssh session would), then
`augtune sweep CONFIG --resume`: the sweep finishes with the trials asked for, the parent run
ends FINISHED, every trial is one child run, nothing is left RUNNING, no step is logged twice.
Slow: each case runs real sweeps in subprocesses (the last, unkilled resume in this process)."""
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Optional

import pytest
from mlflow import MlflowClient

from sweep_helpers import replay_exported_best, runs_by_stage, write_sweep_config

pytestmark = pytest.mark.slow
AUGTUNE = [sys.executable, "-m", "augtune.search.cli"]
REPO = Path(__file__).resolve().parents[1]
NUM_SAMPLES = 4
WORKER_EPOCHS = 12


def _env():
    # "local": a Ray of the sweep's own, even while another test's `ray start` cluster is up (make
    # test runs tests side by side; Ray would otherwise join the newest cluster on this machine)
    return dict(os.environ, RAY_AUTH_MODE="disabled", PYTHONPATH=str(REPO), RAY_ADDRESS="local")


def _stage(state_file: Path) -> str:
    try:
        return json.loads(state_file.read_text()).get("stage", "")
    except (OSError, ValueError):
        return ""


def _finished_trials(uri: str, phase: Optional[str] = None) -> int:
    """FINISHED trial runs of the experiment "kill" (of one phase: "search", "audit", "baseline")."""
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("kill")
    if exp is None:
        return 0
    query = "tags.`augtune.stage` = 'trial'" + (f" and tags.`augtune.phase` = '{phase}'" if phase else "")
    return sum(r.info.status == "FINISHED" for r in client.search_runs([exp.experiment_id], query))


def _logged_epochs(uri: str) -> list[int]:
    """The epochs each trial run of experiment `kill` has logged to MLflow so far, which the driver
    writes as each result arrives (Tune's result.json comes in bursts: a PBT run alone here showed
    no line before every member was at epoch 11)."""
    client = MlflowClient(tracking_uri=uri)
    try:
        exp = client.get_experiment_by_name("kill")
        runs = client.search_runs([exp.experiment_id], "tags.`augtune.stage` = 'trial'") if exp else []
        return [len(client.get_metric_history(r.info.run_id, "val_loss")) for r in runs]
    except Exception:  # the database being created or written by the sweep
        return []


def _kill_when(proc, ready, timeout=300, moment="the kill point") -> None:
    """SIGKILL the driver and every process it started (its local Ray), at once, when ready()."""
    import psutil

    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.1)
    assert proc.poll() is None, f"the sweep ended before {moment}"
    tree = psutil.Process(proc.pid).children(recursive=True)
    os.killpg(proc.pid, signal.SIGKILL)
    for child in tree:  # Ray's own processes may sit in other sessions: only the ones this sweep started
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=60)


def _resume_here(path: Path, monkeypatch, capsys) -> str:
    """The last `--resume`, which nothing kills: run in this process on the session's Ray, as a
    subprocess would only add its start (imports, a Ray of its own: about 10 s). Returns the output."""
    from augtune.search.cli import main

    monkeypatch.chdir(path.parent)  # where the killed runs started
    code = main(["sweep", str(path), "--resume", "--no-progress"])
    out = capsys.readouterr()
    assert code == 0, out.out[-3000:] + out.err[-3000:]
    return out.out


def _newest_state_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("experiment_state-*.json"))
    return files[-1:]


def test_sigkill_at_every_stage_then_resume_completes_once(tmp_path, ray_session, monkeypatch, capsys):
    """One sweep SIGKILLed at each stage in turn, every resume itself killed at the next moment:
    while the teacher trains, while the candidates are scored, after pruning with Ray starting,
    after a trial finished, after another one with Ray's newest experiment state left empty (what a
    kill during Ray's write leaves), after the recipe baseline's first trial (trained after the
    search in its experiment); then resumed to completion; then the summary's worst moment
    recreated and resumed."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    path = write_sweep_config(tmp_path, "kill", uri, num_samples=NUM_SAMPLES, max_concurrent=1, baseline="auto",
                              baseline_seeds=2)
    # 20 passes: a scoring stage long enough to land a kill in
    path.write_text(path.read_text().replace("epochs: 2", "epochs: 3").replace("passes: 2", "passes: 20"))
    teacher = tmp_path / "runs" / "kill" / "teacher.pt"
    state_file = tmp_path / "runs" / "kill" / "sweep_state.json"
    moments = {
        # the state is saved as the parent run opens, before the teacher trains
        "teacher": lambda: _stage(state_file) == "proxy",
        "proxy-scoring": lambda: teacher.is_file() and _stage(state_file) == "proxy",
        "before-tuner": lambda: _stage(state_file) == "search",  # pruned and saved; Ray still starting
        "trials": lambda: _finished_trials(uri) >= 1,
        "trials-corrupt-state": lambda: _finished_trials(uri) >= 2,
        "baseline": lambda: _finished_trials(uri, "baseline") >= 1,
    }
    for attempt, (moment, ready) in enumerate(moments.items()):
        proc = subprocess.Popen([*AUGTUNE, "sweep", str(path), "--no-progress", *(["--resume"] if attempt else [])],
                                cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        _kill_when(proc, ready)
        if moment == "trials-corrupt-state":  # the experiment Ray was writing: the newest top-up, if any
            state = json.loads(state_file.read_text())
            search = state["search"]
            experiment = search["topups"][-1]["experiment"] if search["topups"] else search["experiment"]
            for f in _newest_state_files(tmp_path / "runs" / "kill" / "ray" / experiment):
                f.write_text("")
    assert "best augmentation" in _resume_here(path, monkeypatch, capsys)
    _assert_one_complete_sweep(uri)

    # the worst moment of the summary: everything logged, the parent still RUNNING, the state not
    # yet marked finished (too short a window to hit with a signal, so it is recreated)
    state = json.loads(state_file.read_text())
    state.pop("finished")
    state_file.write_text(json.dumps(state))
    MlflowClient(tracking_uri=uri).update_run(state["parent_run_id"], status="RUNNING")
    _resume_here(path, monkeypatch, capsys)
    _assert_one_complete_sweep(uri)


def _assert_one_complete_sweep(uri: str) -> None:
    """Parent FINISHED, the proxy runs of one scoring, every trial one run with no step twice,
    the parent's summary metrics logged once."""
    client = MlflowClient(tracking_uri=uri)
    runs = runs_by_stage(uri, "kill")
    (parent,) = runs["sweep"]
    assert parent.info.status == "FINISHED"
    assert len(runs["proxy"]) == 8  # partial proxy runs of a killed driver were discarded
    assert not [r for r in runs["trial"] if r.info.status == "RUNNING"]
    finished = [r for r in runs["trial"] if r.info.status == "FINISHED"]
    trial_ids = Counter(r.data.tags["augtune.trial_id"] for r in runs["trial"])
    assert set(trial_ids.values()) == {1}, "a trial appears twice"
    assert len(finished) >= NUM_SAMPLES
    for run in finished:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")]
        assert len(steps) == len(set(steps)), f"a step was logged twice in {run.info.run_name}"
    for metric in ("proxy_seconds", "teacher_test_loss", "trial_seconds", "best_val_loss", "baseline_val_loss"):
        assert len(client.get_metric_history(parent.info.run_id, metric)) == 1, metric
    # the baseline compared 2 seeds a side: the recipe's runs and the chosen one's again were all kept
    comparison = json.loads(Path(client.download_artifacts(parent.info.run_id, "baseline.json")).read_text())
    assert len(comparison["baseline_values"]) == len(comparison["chosen_values"]) == 2
    assert parent.data.tags["augtune.baseline_verdict"] == comparison["line"]


def test_a_killed_audit_still_compares_every_candidate_on_every_seed(tmp_path, ray_session, monkeypatch, capsys):
    """An audited sweep (3 kept + 2 sentinels, 2 seeds each) SIGKILLed after its first audit trial
    finished, and its resume killed after the fourth with the audit grid's newest Ray state left
    empty: Ray then restores the grid from the first run's older state, beside the newer searcher
    state, and comes back short. After the last `--resume` the audit holds every (candidate, seed)
    once: the lost points are topped up, not dropped from the comparison. A point Ray forgot after
    it had finished is trained again; its first MLflow run stays (nothing logged is lost), tagged
    superseded, so exactly one FINISHED run per point counts, and best ranks each trial once."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    # one search trial: what is checked here is the audit
    path = write_sweep_config(tmp_path, "kill", uri, max_concurrent=1, num_samples=1,
                              prune={"mode": "top_k", "top_k": 3, "audit": 2, "audit_seeds": 2,
                                     "on_disagreement": "report"})
    state_file = tmp_path / "runs" / "kill" / "sweep_state.json"
    for attempt, finished in enumerate((1, 4)):
        proc = subprocess.Popen([*AUGTUNE, "sweep", str(path), "--no-progress", *(["--resume"] if attempt else [])],
                                cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        _kill_when(proc, lambda: _finished_trials(uri) >= finished)  # only audit trials run before the search
    grid = json.loads(state_file.read_text())["audit_phases"][-1]["experiment"]
    for f in _newest_state_files(tmp_path / "runs" / "kill" / "ray" / grid):
        f.write_text("")
    _resume_here(path, monkeypatch, capsys)
    audit = json.loads(state_file.read_text())["audit"]
    audited = audit["kept"] + audit["sentinels"]
    assert len(audited) == 5 and all(len(audit["values"][c]) == 2 for c in audited), audit["values"]
    runs = [r for r in runs_by_stage(uri, "kill")["trial"] if r.data.tags.get("augtune.phase") == "audit"]
    counted = Counter((r.data.tags["augtune.candidate"], r.data.params["seed"]) for r in runs
                      if r.info.status == "FINISHED" and "augtune.superseded" not in r.data.tags)
    assert counted == Counter({(c, str(seed)): 1 for c in audited for seed in (0, 1)}), counted
    assert not [r for r in runs if r.info.status == "RUNNING"]
    from augtune.search.results.tracking import Tracker
    from augtune.search.results.trials import trial_rows

    superseded = {r.info.run_id for r in runs if "augtune.superseded" in r.data.tags}
    assert not superseded & {row.run_id for row in trial_rows(Tracker(uri, "kill"))}  # best ranks each point once


def test_sigkill_of_a_trial_worker_continues_from_its_checkpoint(tmp_path, ray_session, monkeypatch, capsys):
    """Ray's FailureConfig restarts the killed trial from its last checkpoint; its MLflow run goes
    on (no second run, no step twice) and the sweep ends normally. The sweep runs in this process
    on the session's Ray (what is killed is a trial's worker, not the driver)."""
    import threading

    import psutil

    from augtune.search.cli import main

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    path = write_sweep_config(tmp_path, "kill", uri, num_samples=2, max_concurrent=1)
    path.write_text(path.read_text().replace("epochs: 2", f"epochs: {WORKER_EPOCHS}"))
    client = MlflowClient(tracking_uri=uri)

    def running_trial_pid():
        """The worker pid Tune wrote into a trial's result.json, once it has 2+ epochs."""
        for results in (tmp_path / "runs" / "kill" / "ray").glob("sweep-*/*/result.json"):
            lines = results.read_text().splitlines()
            try:
                last = json.loads(lines[-1]) if len(lines) >= 2 else {}
            except ValueError:  # a line being written
                continue
            if last and last.get("epoch", 0) < WORKER_EPOCHS - 2:
                return last["pid"], results
        return None, None

    killed: dict = {}
    sweep_done = threading.Event()

    def kill_a_running_trial():
        deadline = time.time() + 300
        while time.time() < deadline and not sweep_done.is_set():
            pid, results = running_trial_pid()
            if pid is not None:
                assert pid != os.getpid(), "the trial ran in the driver"
                psutil.Process(pid).kill()
                killed.update(pid=pid, results=results)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_a_running_trial, daemon=True)
    killer.start()
    monkeypatch.chdir(tmp_path)
    code = main(["sweep", str(path), "--no-progress"])
    sweep_done.set()
    killer.join()
    out = capsys.readouterr()
    assert code == 0, out.out[-3000:] + out.err[-3000:]
    assert killed, "no running trial found"
    later = [json.loads(line)["pid"] for line in killed["results"].read_text().splitlines()]
    assert later[-1] != killed["pid"], "the killed trial was not restarted in a new worker"
    runs = runs_by_stage(uri, "kill")
    trial_ids = Counter(r.data.tags["augtune.trial_id"] for r in runs["trial"])
    assert len(trial_ids) == 2 and set(trial_ids.values()) == {1}
    for run in runs["trial"]:
        assert run.info.status == "FINISHED"
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_loss"))
        assert steps == list(range(1, WORKER_EPOCHS + 1)), steps  # every epoch once, across the restart


# ---------------------------------------------------------------- PBT

PBT_EPOCHS = 12
PBT_INTERVAL = 2


def _pbt_config(tmp_path: Path, uri: str) -> Path:
    """4 members of one candidate (no proxy to wait for), perturbed every 2 of 12 epochs, all four
    at once (half a CPU each). Ray's PBT exploits only when the member reaching an interval ranks
    in the bottom half of the running members that have reported: with two members at a time, or
    only the 3 intervals of 9 epochs, whole runs passed without an exploit (twice on CI)."""
    path = write_sweep_config(
        tmp_path, "kill", uri, num_samples=4, prune={"mode": "fixed", "candidate": "cutmix"},
        max_concurrent=4, resources={"cpu": 0.5, "gpu": 0},
        scheduler={"kind": "pbt", "perturbation_interval": PBT_INTERVAL, "quantile_fraction": 0.5,
                   "resample_probability": 0.5},
        hyperparameters={"lr": {"loguniform": [0.02, 0.1]}, "cutmix.alpha": {"uniform": [0.2, 2.0]}})
    path.write_text(path.read_text().replace("epochs: 2", f"epochs: {PBT_EPOCHS}"))
    return path


def _exploits(experiments: Path) -> int:
    """Ray's PBT appends a line to pbt_global.txt for every exploit, as it decides it."""
    return sum(len(f.read_text().splitlines()) for f in experiments.glob("sweep-*/pbt_global.txt"))


def test_pbt_sweep_survives_sigkill_at_several_moments(tmp_path, ray_session, monkeypatch, capfd):
    """One PBT sweep killed right after an exploit, and its resume killed near the end (after it
    logged epochs of its own: a kill before the restored members ran would test nothing), then
    resumed to completion: every member's MLflow run has each epoch once, its schedule (the
    lineage's values) one row for every epoch, Ray reported no checkpoint errors, and the best
    member exported from MLflow replays bit for bit without Ray. A kill before the first
    perturbation is the ASHA kill tests' restore from a member's own checkpoint."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    path = _pbt_config(tmp_path, uri)
    experiments = tmp_path / "runs" / "kill" / "ray"

    def near_the_end(before) -> bool:
        epochs = _logged_epochs(uri)
        return max(epochs, default=0) >= PBT_EPOCHS - 1 and sum(epochs) > before[1]

    moments = {"an exploit": lambda before: _exploits(experiments) > before[0], "the end": near_the_end}
    logs = []
    for attempt, (moment, ready) in enumerate(moments.items()):
        logs.append(tmp_path / f"attempt{attempt}.log")
        before = (_exploits(experiments), sum(_logged_epochs(uri)))  # what earlier attempts left
        proc = subprocess.Popen([*AUGTUNE, "sweep", str(path), "--no-progress", *(["--resume"] if attempt else [])],
                                cwd=tmp_path, env=_env(), stdout=open(logs[-1], "w"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        _kill_when(proc, lambda: ready(before), moment=moment)
    # the last resume in this process, on the session's Ray; Tune's controller logs here, to the
    # file descriptors capfd reads
    from augtune.search.cli import main

    monkeypatch.chdir(tmp_path)
    code = main(["sweep", str(path), "--resume", "--no-progress"])
    done = capfd.readouterr()
    output = "".join(log.read_text() for log in logs[1:]) + done.out + done.err
    assert code == 0, output[-3000:]
    # Ray warns "Could not fetch metrics ... FileNotFoundError" for a member killed before its first
    # result (nothing to fetch; it starts again): not a checkpoint error
    missing = [line for line in output.splitlines() if "FileNotFoundError" in line and "Could not fetch metrics" not in line]
    assert "Error handling checkpoint" not in output and not missing, output[-3000:]

    client = MlflowClient(tracking_uri=uri)
    runs = runs_by_stage(uri, "kill")
    (parent,) = runs["sweep"]
    assert parent.info.status == "FINISHED"
    members = [r for r in runs["trial"] if r.info.status == "FINISHED"]
    assert len(members) == 4 and not [r for r in runs["trial"] if r.info.status == "RUNNING"]
    for run in members:
        for curve in ("val_loss", "schedule.lr"):
            steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, curve))
            assert steps == list(range(1, PBT_EPOCHS + 1)), (run.info.run_name, curve, steps)
        rows = json.loads(Path(client.download_artifacts(run.info.run_id, "schedule.json", str(tmp_path))).read_text())
        assert [row["epoch"] for row in rows] == list(range(1, PBT_EPOCHS + 1)), rows
        assert all({"augmentation", "lr", "cutmix.alpha"} <= set(row) for row in rows)

    summary = replay_exported_best(tmp_path, "kill", uri)
    best = json.loads((tmp_path / "runs" / "kill" / "sweep_state.json").read_text())["finished"]["best"]
    assert (summary["val_loss"], summary["test_loss"]) == (best["val_loss"], best["test_loss"])


def test_two_worker_trials_resume_after_sigkill(tmp_path, ray_session, monkeypatch, capsys):
    """Multi-worker trials (2 Ray Train workers each, gloo) scheduled by ASHA: the driver SIGKILLed
    once a trial has logged an epoch, then `--resume`: the trial's Ray Train run goes on from its
    checkpoint (it does not start over); each trial is one MLflow run with every epoch once (rank
    0's); the chosen trial's weights come from its Ray Train checkpoint, and each trial's Train run
    kept its checkpoints under the sweep's storage, named by the trial."""
    from augtune.search.results.tracking import TRIAL_TAG

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    epochs = 6
    path = write_sweep_config(tmp_path, "kill", uri, num_samples=2, max_concurrent=1,
                              prune={"mode": "fixed", "candidate": "cutout"},
                              scheduler={"kind": "asha", "grace_period": 1, "reduction_factor": 2},
                              resources={"cpu": 1, "gpu": 0, "workers_per_trial": 2})
    path.write_text(path.read_text().replace("epochs: 2", f"epochs: {epochs}"))
    proc = subprocess.Popen([*AUGTUNE, "sweep", str(path), "--no-progress"], cwd=tmp_path, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    experiments = tmp_path / "runs" / "kill" / "ray"
    # MLflow, not Tune's result files (Tune writes a function trial's results in bursts)
    _kill_when(proc, lambda: 2 <= max(_logged_epochs(uri), default=0) < epochs - 2)
    _resume_here(path, monkeypatch, capsys)
    client = MlflowClient(tracking_uri=uri)
    runs = runs_by_stage(uri, "kill")["trial"]
    state = json.loads((tmp_path / "runs" / "kill" / "sweep_state.json").read_text())["finished"]
    trials = {t["trial_id"]: t for t in state["trials"]}
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    assert sorted(r.data.tags[TRIAL_TAG] for r in runs) == sorted(trials)
    for run in runs:
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_loss"))
        assert steps == list(range(1, trials[run.data.tags[TRIAL_TAG]]["epochs"] + 1)), steps
    chosen = next(r for r in runs if r.data.tags[TRIAL_TAG] == state["best"]["trial_id"])
    assert "student.pt" in {a.path for a in client.list_artifacts(chosen.info.run_id)}
    assert {p.name for p in (experiments / "train-runs").iterdir()} >= set(trials)
    # the killed trial's function ran again after the restore (its iteration count starts over)
    # and its first report there is a later epoch: Ray Train resumed it from its checkpoint
    restarts = [row["epoch"] for results in experiments.glob("sweep-*/*/result.json")
                for row in map(json.loads, results.read_text().splitlines()) if row["training_iteration"] == 1]
    assert max(restarts) > 1, restarts


def test_a_table_sigkilled_mid_grid_resumes_without_training_a_run_twice(tmp_path, ray_session, monkeypatch,
                                                                         capsys):
    """`augtune table` SIGKILLed once two of its (candidate, seed) runs finished, then `--resume`:
    every (candidate, seed) is one finished MLflow run, the runs finished before the kill are the
    same runs, and Tune trained at most the killed run's epochs again."""
    from augtune.search.cli import main
    from augtune.search.tables.learning_curves import load_table

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    epochs, candidates, seeds = 3, ["flip", "cutout"], 3
    path = write_sweep_config(tmp_path, "kill", uri, max_concurrent=1)
    path.write_text(path.read_text().replace("epochs: 2", f"epochs: {epochs}"))
    args = ["table", str(path), "--no-progress", "--proxy-seeds", "1", "--set", f"space.candidates={candidates}"]
    proc = subprocess.Popen([*AUGTUNE, *args], cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    _kill_when(proc, lambda: _finished_trials(uri) >= 2, moment="two runs finished")
    client = MlflowClient(tracking_uri=uri)
    before = {r.info.run_id for r in runs_by_stage(uri, "kill")["trial"] if r.info.status == "FINISHED"}
    monkeypatch.chdir(tmp_path)
    assert main([*args, "--resume"]) == 0, capsys.readouterr().err[-3000:]
    runs = [r for r in runs_by_stage(uri, "kill")["trial"] if r.info.status == "FINISHED"]
    keys = Counter((r.data.tags["augtune.candidate"], r.data.params["seed"]) for r in runs)
    assert len(keys) == len(candidates) * seeds and set(keys.values()) == {1}, keys
    assert before <= {r.info.run_id for r in runs}
    for run in runs:
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_loss"))
        assert steps == list(range(1, epochs + 1)), steps
    trained = sum(len(f.read_text().splitlines()) for f in (tmp_path / "runs" / "kill" / "ray").glob("*/*/result.json"))
    assert len(candidates) * seeds * epochs <= trained <= (len(candidates) * seeds + 1) * epochs, trained
    assert load_table(tmp_path / "runs" / "kill" / "table.json.gz")["kill"].ran().all()
