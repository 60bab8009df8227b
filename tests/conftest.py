import os

# Ray and MLflow settings for tests: no auth token file in ~/.ray, no chdir into trial dirs.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# a test that starts Ray starts its own: never the `ray start` cluster a test beside it (pytest-xdist)
# may have up; the cluster tests name the address they join
os.environ.setdefault("RAY_ADDRESS", "local")
os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "0")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# Ray Train's controller polls its workers every 2 s, so a data-parallel trial's epoch of a second
# took 2 s; tests' epochs are tiny (trials still report every epoch, only sooner)
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray per test session (starting Ray costs seconds)."""
    import ray

    from augtune.search.sweep.tuners import own_state_api

    # the state API at this Ray's own dashboard: Ray Train's cleaner reads it (multi-worker trials)
    ray.init(address="local", num_cpus=2, num_gpus=0, log_to_driver=False, object_store_memory=200 * 1024**2,
             **own_state_api())
    yield ray
    ray.shutdown()


# ---- make test runs on pytest-xdist workers (--dist loadgroup)
# A module-scoped fixture is built once per worker that runs one of its tests: the tests of each
# fixture that runs a whole sweep share one worker, so it is built once.
_SHARED_SWEEPS = ("pruned_sweep", "audited_sweep", "policy_sweep")


def pytest_itemcollected(item):  # marked as collected: before xdist names the groups
    for fixture in _SHARED_SWEEPS:
        if fixture in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group(fixture))


def pytest_collection_modifyitems(config, items):
    # the slow end-to-end tests first: a worker that frees up late then takes a short test, not a
    # two-minute kill test while the other worker idles
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


# ---- the suite leaves the checkout as it found it (no mlruns/, runs/, mlflow.db, reports/)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_NOISE = ("__pycache__", ".pytest_cache", ".egg-info")


def _checkout_state() -> set:
    import subprocess

    done = subprocess.run(["git", "status", "--porcelain", "--ignored", "--untracked-files=all"], cwd=REPO,
                          capture_output=True, text=True)
    if done.returncode != 0:  # not a git checkout (an sdist, say): nothing to compare
        return set()
    return {line for line in done.stdout.splitlines()
            if not any(part in line for part in _NOISE) and not line[3:].startswith(".venv/")}


def pytest_sessionstart(session):
    session.config._checkout_before = _checkout_state()


def pytest_sessionfinish(session, exitstatus):
    before = getattr(session.config, "_checkout_before", None)
    if before is None:
        return
    added = sorted(_checkout_state() - before)
    if added:
        session.exitstatus = 1
        print(f"\nthe test suite changed the checkout (tests must write to temporary folders): {added[:20]}")
