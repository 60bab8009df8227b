import os

# Ray and MLflow settings for tests: no auth token file in ~/.ray, no chdir into trial dirs.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "0")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray per test session (starting Ray costs seconds)."""
    import ray

    ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False,
             object_store_memory=200 * 1024**2)
    yield ray
    ray.shutdown()
