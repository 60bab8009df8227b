"""SIGKILL of the sweep driver (as a preempted head node or a closed ssh session would), then
`augtune sweep CONFIG --resume`: the sweep finishes with the trials asked for, the parent run
ends FINISHED, every trial is one child run, nothing is left RUNNING, no step is logged twice.
Slow: each case runs real sweeps in subprocesses."""
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from mlflow import MlflowClient

from sweep_helpers import runs_by_stage, write_sweep_config

pytestmark = pytest.mark.slow
AUGTUNE = [sys.executable, "-m", "search.cli"]
REPO = Path(__file__).resolve().parents[1]
NUM_SAMPLES = 4


def _env():
    env = dict(os.environ, RAY_AUTH_MODE="disabled", PYTHONPATH=str(REPO))
    env.pop("RAY_ADDRESS", None)
    return env


def _stage(state_file: Path) -> str:
    try:
        return json.loads(state_file.read_text()).get("stage", "")
    except (OSError, ValueError):
        return ""


def _finished_trials(uri: str) -> int:
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("kill")
    if exp is None:
        return 0
    return sum(r.info.status == "FINISHED" for r in client.search_runs([exp.experiment_id],
                                                                        "tags.`augtune.stage` = 'trial'"))


def _kill_when(proc, ready, timeout=300) -> None:
    """SIGKILL the driver and every process it started (its local Ray), at once, when ready()."""
    import psutil

    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.1)
    assert proc.poll() is None, "the sweep ended before the kill point"
    tree = psutil.Process(proc.pid).children(recursive=True)
    os.killpg(proc.pid, signal.SIGKILL)
    for child in tree:  # Ray's own processes may sit in other sessions: only the ones this sweep started
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=60)


def _newest_state_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("experiment_state-*.json"))
    return files[-1:]


@pytest.mark.parametrize("kill_point", ["teacher", "before-tuner", "trials", "trials-corrupt-state"])
def test_sigkill_then_resume_completes_once(kill_point, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    path = write_sweep_config(tmp_path, "kill", uri, num_samples=NUM_SAMPLES, max_concurrent=1)
    path.write_text(path.read_text().replace("epochs: 2", "epochs: 3"))
    state_file = tmp_path / "runs" / "kill" / "sweep_state.json"
    proc = subprocess.Popen([*AUGTUNE, "sweep", str(path), "--no-progress"], cwd=tmp_path, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    if kill_point == "teacher":  # the state is saved as the parent run opens, before the teacher trains
        _kill_when(proc, lambda: _stage(state_file) == "proxy")
    elif kill_point == "before-tuner":  # pruned and saved; Ray still starting
        _kill_when(proc, lambda: _stage(state_file) == "search")
    else:
        _kill_when(proc, lambda: _finished_trials(uri) >= 1)
    if kill_point == "trials-corrupt-state":
        experiment = json.loads(state_file.read_text())["ray_experiment"]
        for f in _newest_state_files(tmp_path / "runs" / "kill" / "ray" / experiment):
            f.write_text("")  # what a kill during Ray's write leaves behind
    done = subprocess.run([*AUGTUNE, "sweep", str(path), "--resume", "--no-progress"], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "best augmentation" in done.stdout

    client = MlflowClient(tracking_uri=uri)
    runs = runs_by_stage(uri, "kill")
    (parent,) = runs["sweep"]
    assert parent.info.status == "FINISHED"
    assert len(runs["proxy"]) == 8  # partial proxy runs of the killed driver were discarded
    assert not [r for r in runs["trial"] if r.info.status == "RUNNING"]
    finished = [r for r in runs["trial"] if r.info.status == "FINISHED"]
    trial_ids = Counter(r.data.tags["augtune.trial_id"] for r in runs["trial"])
    assert set(trial_ids.values()) == {1}, "a trial appears twice"
    assert len(finished) >= NUM_SAMPLES
    for run in finished:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")]
        assert len(steps) == len(set(steps)), f"a step was logged twice in {run.info.run_name}"
    for metric in ("proxy_seconds", "teacher_test_loss", "trial_seconds", "best_val_loss"):
        assert len(client.get_metric_history(parent.info.run_id, metric)) == 1, metric
