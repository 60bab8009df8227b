"""Repairs of Ray Tune's on-disk experiment files before a restore, for what a killed driver
leaves behind. Local storage only (a remote `storage_path` is Ray's to keep consistent)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

import ray.cloudpickle as cloudpickle

STAND_IN = ".augtune-stand-in"  # marks a folder standing in for a checkpoint Ray deleted


def _local_folder(experiment_path) -> Optional[Path]:
    """The experiment's folder when it is on local disk and exists."""
    folder = Path(experiment_path)
    return folder if "://" not in str(experiment_path) and folder.is_dir() else None


def set_aside_unreadable(experiment_path: str) -> None:
    """A driver killed while Ray wrote its state can leave empty or half-written state files,
    and Ray then restarts the experiment from nothing. Move those aside (suffix .unreadable),
    so the restore uses the newest readable state. The experiment state is JSON; the search
    generator's (`search_gen_state-*.json`: its trial count and its wrappers' records, the
    ConcurrencyLimiter's and SearchThenBaseline's) is a cloudpickle despite its name.

    The search's states of a run (Ray names each file by its run, `-SESSION`) go with that run's
    experiment state: when Ray restores an earlier run's experiment, a later run's searcher would
    count trials that experiment never had (a ConcurrencyLimiter would wait for them forever)."""
    folder = _local_folder(experiment_path)
    if folder is None:
        return
    readers = {"experiment_state": json.loads, "search_gen_state": cloudpickle.loads}
    unreadable = set()
    for prefix, read in readers.items():
        for path in folder.glob(f"{prefix}-*.json"):
            try:
                read(path.read_bytes())
            except Exception:  # whatever a truncated file raises (JSON, unpickling, EOF)
                unreadable.add((prefix, path.stem[len(prefix) + 1:]))
    for path in folder.glob("searcher-state-*.pkl"):
        if path.stat().st_size == 0:
            unreadable.add(("searcher-state", path.stem[len("searcher-state-"):]))
    # a run whose state is partly unreadable: its searcher's states go too (a generator state
    # restored without its searcher's, or the reverse, disagree about the trials)
    for session in {session for _, session in unreadable}:
        unreadable |= {("search_gen_state", session), ("searcher-state", session)}
    for prefix, session in unreadable:
        path = folder / f"{prefix}-{session}{'.pkl' if prefix == 'searcher-state' else '.json'}"
        if path.exists():
            path.rename(path.with_name(path.name + ".unreadable"))


def stand_in_for_deleted_checkpoints(experiment_path: str) -> None:
    """Ray deletes a trial's old checkpoints (CheckpointConfig.num_to_keep) before it saves the
    experiment state that stops naming them. A driver killed in between leaves a state naming
    checkpoints that are gone, and the restored experiment then fails to delete them again
    ("Error handling checkpoint ... FileNotFoundError", and that save is not recorded). An empty
    folder stands in for each missing checkpoint below a trial's newest, so Ray's deletion finds
    it; those Ray never names are removed when the phase ends (`remove_stand_ins`)."""
    folder = _local_folder(experiment_path)
    if folder is None:
        return
    for trial in (p for p in folder.iterdir() if p.is_dir()):
        indices = [int(p.name.rpartition("_")[2]) for p in trial.glob("checkpoint_*")
                   if p.is_dir() and p.name.rpartition("_")[2].isdigit()]
        for index in range(max(indices, default=0)):
            missing = trial / f"checkpoint_{index:06d}"
            if not missing.exists():
                missing.mkdir()
                (missing / STAND_IN).touch()


def remove_stand_ins(experiment_path: str) -> None:
    folder = _local_folder(experiment_path)
    if folder is None:
        return
    for mark in folder.glob(f"*/checkpoint_*/{STAND_IN}"):
        if [p.name for p in mark.parent.iterdir()] == [STAND_IN]:
            shutil.rmtree(mark.parent)


def prepare_restore(experiment_path: str) -> None:
    """Every repair, in order, before Ray reads the experiment."""
    set_aside_unreadable(experiment_path)
    stand_in_for_deleted_checkpoints(experiment_path)
