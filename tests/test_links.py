"""The link a sweep prints opens MLflow's runs view of its experiment (not the GenAI overview)."""
from augtune.search.results.tracking import Tracker, runs_view_url


def test_runs_view_link_for_a_sqlite_store_and_a_server(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    experiment_id = Tracker(uri, "links").experiment_id
    assert runs_view_url(uri, experiment_id) == \
        f"http://127.0.0.1:5000/#/experiments/{experiment_id}?workflowType=machine_learning"
    assert runs_view_url("http://10.0.0.5:5000/", "7") == \
        "http://10.0.0.5:5000/#/experiments/7?workflowType=machine_learning"
