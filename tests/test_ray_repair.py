"""The repairs of Ray Tune's on-disk experiment before a restore, on files written by Ray's own
writers: what a killed driver leaves half-written is set aside, what is whole is kept, and a run's
search states go with its experiment state."""
import json

from ray.tune.utils.util import _atomic_save

from augtune.search.sweep.ray_repair import set_aside_unreadable


def _search_state(folder, session: str) -> bytes:
    """The search generator's state as Ray writes it: cloudpickle, despite the .json name."""
    state = {"counter": 11, "total_samples": 2**63 - 1, "finished": False,
             "name:SearchThenBaseline": {"search_drawn": 8, "issued": {("recipe", 0, (("lr", 0.05),))}}}
    _atomic_save(state, str(folder), f"search_gen_state-{session}.json", "tmp")
    (folder / f"searcher-state-{session}.pkl").write_bytes(b"optuna's own state")
    return (folder / f"search_gen_state-{session}.json").read_bytes()


def test_half_written_state_is_set_aside_with_its_runs_search_states(tmp_path):
    # run 00: whole
    (tmp_path / "experiment_state-00.json").write_text(json.dumps({"trial_data": []}))
    whole = _search_state(tmp_path, "00")
    # run 05: killed while Ray wrote its experiment state; its search states are whole but later
    (tmp_path / "experiment_state-05.json").write_text('{"trial_data": [')
    _search_state(tmp_path, "05")
    # run 10: the experiment state whole, the search generator's cut short, the searcher's empty
    (tmp_path / "experiment_state-10.json").write_text(json.dumps({"trial_data": []}))
    (tmp_path / "search_gen_state-10.json").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "searcher-state-10.pkl").write_bytes(b"")

    set_aside_unreadable(str(tmp_path))

    kept = sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".unreadable"))
    assert kept == ["experiment_state-00.json", "experiment_state-10.json", "search_gen_state-00.json",
                    "searcher-state-00.pkl"]
    assert sorted(p.name for p in tmp_path.glob("*.unreadable")) == [
        "experiment_state-05.json.unreadable", "search_gen_state-05.json.unreadable",
        "search_gen_state-10.json.unreadable", "searcher-state-05.pkl.unreadable",
        "searcher-state-10.pkl.unreadable"]
