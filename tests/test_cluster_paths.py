"""The paths a cluster uses: an http MLflow server, a separately started Ray head, and
resuming an interrupted sweep. Slow: each starts real services."""
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from mlflow import MlflowClient

from sweep_helpers import runs_by_stage, write_sweep_config

# the tests that start clusters with `ray start` run one after another, on one pytest-xdist worker
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray-start-clusters")]
AUGTUNE = [sys.executable, "-m", "augtune.search.cli"]
REPO = Path(__file__).resolve().parents[1]


def _free_ports(count: int) -> list[int]:
    """`count` distinct free ports (held open together while chosen, so none repeats)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra):
    env = dict(os.environ, RAY_AUTH_MODE="disabled", PYTHONPATH=str(REPO), **extra)
    env.pop("RAY_ADDRESS", None)
    return env


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    env = _env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                             f"sqlite:///{tmp_path}/server.db", "--default-artifact-root", str(tmp_path / "art"),
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{uri}/health", timeout=2).status == 200:
                break
        except OSError:
            time.sleep(1)
    else:
        os.killpg(proc.pid, signal.SIGTERM)
        pytest.fail("mlflow server did not answer /health within 90 s")
    yield uri
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


def _own_ports(head: bool, ports: list[int]) -> list[str]:
    """Free ports (distinct from `ports`, the test's others) for what `ray start` would otherwise
    bind at fixed defaults (the dashboard agent's 52365, the Ray client's 10001): the test
    session's own Ray already holds them, and a node whose agent cannot bind has no job agent
    ("No available agent to submit job")."""
    agent, client = [p for p in _free_ports(len(ports) + 2) if p not in ports][:2]
    return [f"--dashboard-agent-listen-port={agent}"] + ([f"--ray-client-server-port={client}"] if head else [])


def _stop_cluster(temp: Path, port: int) -> None:
    """Every process of a test's own cluster: those under its temp dir, and those that only name
    its GCS port (the Ray client server)."""
    _stop_processes_mentioning(str(temp))
    _stop_processes_mentioning(f":{port}", prefix="--address=")


def _stop_processes_mentioning(marker: str, prefix: str = "") -> None:
    import psutil

    targets = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(part.startswith(prefix) and marker in part for part in proc.info["cmdline"] or []):
            try:
                targets += [proc, *proc.children(recursive=True)]
            except psutil.Error:  # it ended meanwhile
                continue
    for proc in targets:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    # a test cluster holds nothing to save; its GCS server ignores SIGTERM once its raylet is gone
    _, alive = psutil.wait_procs(targets, timeout=3)
    for proc in alive:
        proc.kill()


def test_resume_after_interruption_logs_no_trial_twice(tmp_path, ray_session, monkeypatch, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    path = write_sweep_config(tmp_path, "resume-sweep", uri, num_samples=4, max_concurrent=1)
    text = path.read_text().replace("epochs: 2", "epochs: 4")
    path.write_text(text)
    proc = subprocess.Popen([*AUGTUNE, "sweep", str(path), "--no-progress"], cwd=tmp_path, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    client = MlflowClient(tracking_uri=uri)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        exp = client.get_experiment_by_name("resume-sweep") if (tmp_path / "mlflow.db").exists() else None
        finished = [r for r in client.search_runs([exp.experiment_id], "tags.`augtune.stage` = 'trial'")
                    if r.info.status == "FINISHED"] if exp else []
        if len(finished) >= 2:
            break
        time.sleep(1)
    assert proc.poll() is None, "the sweep ended before it could be interrupted"
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: Tune saves its state and stops
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "--resume" in out, out[-3000:]
    assert runs_by_stage(uri, "resume-sweep")["sweep"][0].info.status == "KILLED"
    # the resume nothing interrupts: in this process, on the session's Ray (a subprocess would only
    # add its own start: imports and a Ray of its own, about 10 s)
    from augtune.search.cli import main

    monkeypatch.chdir(tmp_path)
    code = main(["sweep", str(path), "--resume", "--no-progress"])
    assert code == 0, capsys.readouterr().out[-3000:]
    runs = runs_by_stage(uri, "resume-sweep")
    assert len(runs["sweep"]) == 1 and len(runs["proxy"]) == 8
    trial_ids = Counter(r.data.tags["augtune.trial_id"] for r in runs["trial"])
    assert len(trial_ids) == 4 and set(trial_ids.values()) == {1}
    for run in runs["trial"]:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "test_loss")]
        assert len(steps) == len(set(steps)), f"a step was logged twice in {run.info.run_name}"
        assert run.info.status == "FINISHED"
    assert runs["sweep"][0].info.status == "FINISHED"
    # resuming a finished sweep reports it and logs nothing again
    assert main(["sweep", str(path), "--resume", "--no-progress"]) == 0
    assert "already finished" in capsys.readouterr().out
    parent = runs["sweep"][0].info.run_id
    for metric in ("proxy_seconds", "trial_seconds", "best_val_loss"):
        assert len(client.get_metric_history(parent, metric)) == 1, metric


def _raylet_with(resource: str, temp: Path):
    import psutil

    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if cmdline and cmdline[0].endswith("raylet") and any(str(temp) in c for c in cmdline) \
                and any(c.startswith("--static_resource_list=") and resource in c for c in cmdline):
            return proc
    return None


@pytest.fixture
def two_nodes(tmp_path):
    """A head and a worker node (one CPU each) on this machine, as two `ray start` processes."""
    import shutil
    import tempfile

    port = _free_port()
    temp = Path(tempfile.mkdtemp(prefix="rn", dir="/tmp"))  # Ray's socket paths must stay short
    ray_cli = str(Path(sys.executable).parent / "ray")
    common = ["--num-cpus=1", "--num-gpus=0", "--node-ip-address=127.0.0.1"]
    for args in (["--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp}",
                  '--resources={"head_node": 1}', *_own_ports(head=True, ports=[port])],
                 [f"--address=127.0.0.1:{port}", '--resources={"worker_node": 1}',
                  *_own_ports(head=False, ports=[port])]):
        started = subprocess.run([ray_cli, "start", *args, *common], env=_env(), capture_output=True, text=True,
                                 timeout=120)
        assert started.returncode == 0, started.stdout + started.stderr
    yield f"127.0.0.1:{port}", temp
    _stop_cluster(temp, port)
    shutil.rmtree(temp, ignore_errors=True)


def test_sweep_survives_losing_a_worker_node(tmp_path, two_nodes, mlflow_server):
    """Trials run on both nodes; the worker node dies (SIGKILL of its raylet and everything under
    it) while one of its trials runs; that trial is rescheduled on the head from its checkpoint in
    the shared storage, and the sweep completes with each trial once in MLflow."""
    import json

    import psutil

    address, temp = two_nodes
    epochs = 40
    path = write_sweep_config(tmp_path, "node-loss", mlflow_server, num_samples=4, max_concurrent=2,
                              ray_address=address, storage_path=str(tmp_path / "shared"))
    path.write_text(path.read_text().replace("epochs: 2", f"epochs: {epochs}"))
    proc = subprocess.Popen([*AUGTUNE, "sweep", str(path), "--no-progress"], cwd=tmp_path, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    head, worker = _raylet_with("head_node", temp), _raylet_with("worker_node", temp)
    assert head is not None and worker is not None
    nodes_seen, victim = set(), None
    deadline = time.time() + 400
    while time.time() < deadline and proc.poll() is None and victim is None:
        for results in (tmp_path / "shared").glob("sweep-*/*/result.json"):
            lines = results.read_text().splitlines()
            if not lines:
                continue
            last = json.loads(lines[-1])
            try:
                parent = psutil.Process(last["pid"]).ppid()
            except psutil.NoSuchProcess:
                continue
            nodes_seen.add("head" if parent == head.pid else "worker" if parent == worker.pid else "?")
            if parent == worker.pid and 2 <= last["epoch"] < epochs - 5 and "head" in nodes_seen:
                victim = (results, last["pid"])
        time.sleep(0.1)
    assert victim is not None, f"no trial caught running on the worker node (seen: {nodes_seen})"
    assert {"head", "worker"} <= nodes_seen
    for process in [worker, *worker.children(recursive=True)]:  # the node dies at once
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    results, dead_pid = victim
    assert json.loads(results.read_text().splitlines()[-1])["pid"] != dead_pid  # finished elsewhere
    runs = runs_by_stage(mlflow_server, "node-loss")
    trial_ids = Counter(r.data.tags["augtune.trial_id"] for r in runs["trial"])
    assert len(trial_ids) == 4 and set(trial_ids.values()) == {1}
    client = MlflowClient(tracking_uri=mlflow_server)
    for run in runs["trial"]:
        assert run.info.status == "FINISHED"
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_loss"))
        assert steps == list(range(1, epochs + 1)), steps


@pytest.fixture(scope="module")
def ray_head_with_jobs():
    """A head started as the README says, with its dashboard (the job API) on 127.0.0.1; augtune
    is on its PATH, as `pip install -e '.[cluster]'` on a cluster node would make it. One for the
    module: the sweeps joining it by `ray job submit` and by `ray submit`'s script (RAY_ADDRESS)."""
    import shutil
    import tempfile

    port, dashboard = _free_ports(2)
    temp = Path(tempfile.mkdtemp(prefix="rj", dir="/tmp"))
    bin_dir = str(Path(sys.executable).parent)
    env = _env(PATH=f"{bin_dir}:{os.environ.get('PATH', '')}")
    start = subprocess.run([f"{bin_dir}/ray", "start", "--head", f"--port={port}", "--num-cpus=2", "--num-gpus=0",
                            "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", f"--temp-dir={temp}",
                            "--node-ip-address=127.0.0.1", *_own_ports(head=True, ports=[port, dashboard])],
                           env=env, capture_output=True,
                           text=True, timeout=180)
    assert start.returncode == 0, start.stdout + start.stderr
    yield f"http://127.0.0.1:{dashboard}", f"127.0.0.1:{port}", env
    _stop_cluster(temp, port)
    shutil.rmtree(temp, ignore_errors=True)


def _copy_of_repo(folder: Path) -> Path:
    """The tracked files of this checkout (what `--working-dir .` uploads, without .venv)."""
    import shutil

    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, folder / name)
    return folder


def test_ray_job_submit_runs_a_sweep(tmp_path, ray_head_with_jobs, mlflow_server):
    import yaml

    jobs_api, _, env = ray_head_with_jobs
    repo = _copy_of_repo(tmp_path / "repo")
    config = write_sweep_config(tmp_path, "job-sweep", mlflow_server, num_samples=2, ray_address="auto",
                                storage_path=str(tmp_path / "shared"))
    (repo / "configs" / "job.yaml").write_text(yaml.safe_dump(yaml.safe_load(config.read_text())))
    submit = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", jobs_api,
              "--working-dir", str(repo), "--", "augtune", "sweep", "configs/job.yaml", "--no-progress"]
    deadline = time.time() + 180
    while True:
        done = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=600)
        out = done.stdout + done.stderr
        # a head under load answers before its job agent registers; the job was not created then
        if "No available agent" not in out or time.time() > deadline:
            break
        time.sleep(3)
    assert done.returncode == 0 and "succeeded" in out, out[-4000:]
    assert "best augmentation:" in out  # the job's own log, streamed back
    runs = runs_by_stage(mlflow_server, "job-sweep")
    assert len(runs["sweep"]) == 1 and runs["sweep"][0].info.status == "FINISHED"
    assert len(runs["proxy"]) == 8 and len(runs["trial"]) == 2
    # and the answer is read back from the same http server
    best = subprocess.run([*AUGTUNE, "best", "--experiment", "job-sweep", "--tracking-uri", mlflow_server],
                          env=_env(), capture_output=True, text=True, timeout=120)
    assert best.returncode == 0 and "best augmentation:" in best.stdout, best.stdout + best.stderr
    assert best.stdout.split("best augmentation:")[1].split()[0] in out.split("best augmentation:")[1]


def test_ray_submit_script_form_connects_with_address_auto(tmp_path, ray_head_with_jobs):
    """`ray submit cluster.yaml search/submit.py -- CONFIG` runs submit.py as a plain script on the
    head: it joins the running head (RAY_ADDRESS, `ray_address: auto`) rather than starting its own
    Ray, and the trials write their results to the configured storage_path."""
    _, address, env = ray_head_with_jobs
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    path = write_sweep_config(tmp_path, "script-sweep", uri, num_samples=2, ray_address="auto",
                              storage_path=str(tmp_path / "shared"))
    done = subprocess.run([sys.executable, str(REPO / "search" / "submit.py"), str(path), "--no-progress"],
                          cwd=tmp_path, env={**env, "RAY_ADDRESS": address}, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Connecting to existing Ray cluster" in done.stdout + done.stderr
    assert len(runs_by_stage(uri, "script-sweep")["trial"]) == 2
    assert any((tmp_path / "shared").iterdir()), "trial results go to the configured storage_path"


def test_cluster_yaml_passes_rays_own_validation():
    """What `ray up configs/cluster.yaml --no-config-cache` checks before it contacts any cloud."""
    import yaml
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(yaml.safe_load((REPO / "configs" / "cluster.yaml").read_text()))
    validate_config(config)
    assert any(".[cluster]" in command for command in config["setup_commands"])
    broken = yaml.safe_load((REPO / "configs" / "cluster.yaml").read_text())
    broken["available_node_types"]["gpu_worker"]["max_wokers"] = 2
    with pytest.raises(Exception, match="max_wokers"):
        validate_config(prepare_config(broken))
