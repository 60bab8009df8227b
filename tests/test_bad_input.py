"""Hostile input, table-driven: every case exits 2 naming the field, before Ray starts and
before anything is written (the working directory is compared file by file).

Each config case is configs/digits_sweep.yaml with one field changed, run through `augtune
sweep` in-process from a temporary working directory (relative output_dir and sqlite store, so
any write would land there)."""
import os
import pickle
import socket
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

from augtune.search.cli import main

ROOT = Path(__file__).resolve().parents[1]
BASE = yaml.safe_load((ROOT / "configs" / "digits_sweep.yaml").read_text())


def _set(tree: dict, dotted: str, value) -> dict:
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
    if value is _DELETE:
        node.pop(leaf, None)
    else:
        node[leaf] = value
    return tree


_DELETE = object()
NAN, INF = float("nan"), float("inf")

# (field path, value, text the message must contain)
CONFIG_CASES = [
    ("seed", -1, "seed"), ("seed", 1e30, "seed"), ("seed", True, "seed"), ("seed", NAN, "seed"),
    ("name", "", "name"), ("name", "a/b", "name"),
    ("device", "cuda", "device"), ("device", "tpu", "device"),
    ("data.name", "mnist", "data.name"),
    ("data.samples_per_class", 0, "data.samples_per_class"),
    ("data.samples_per_class", 100000, "data.samples_per_class"),
    ("data.samples_per_class", True, "samples_per_class"),
    ("data.imbalance_factor", NAN, "data.imbalance_factor"), ("data.imbalance_factor", 0.5, "data.imbalance_factor"),
    ("data.image_size", 4, "data.image_size"),
    ("data.mean", [0.5], "data.std"), ("data.std", [0.2], "data.mean"),
    ("data", {"name": "digits", "val_per_class": 3, "mean": [0.4, 0.4, 0.4], "std": [0.2, 0.2, 0.2]},
     "data.mean has 3 values; digits images have 1 channel"),
    ("data", {"name": "digits", "val_per_class": 3, "mean": [0.4], "std": [0.0]}, "data.std"),
    ("data.val_per_class", 500, "data.val_per_class"), ("data.val_per_class", -1, "data.val_per_class"),
    ("data.val_per_class", 0, "data.val_per_class"),  # the sweep selects on val_loss
    ("data.val_size", 10, "val_per_class"),
    ("data.test_fraction", 1.5, "data.test_fraction"),
    ("teacher.model", "resnet9000", "teacher.model"),
    ("teacher.train.lr", -0.1, "teacher.train.lr"), ("teacher.train.lr", INF, "teacher.train.lr"),
    ("teacher.train.lr", NAN, "teacher.train.lr"),
    ("student.train.epochs", 0, "student.train.epochs"), ("student.train.epochs", True, "epochs"),
    ("student.train.epochs", 2.5, "student.train.epochs"),
    ("student.train.batch_size", 0, "student.train.batch_size"),
    ("student.train.momentum", 1.5, "student.train.momentum"),
    ("student.train.weight_decay", INF, "student.train.weight_decay"),
    ("student.train.schedule", "linear", "student.train.schedule"),
    ("student.train.milestones", [0.75, 0.5], "student.train.milestones"),
    ("kd.temperature", INF, "kd.temperature"), ("kd.temperature", 0, "kd.temperature"),
    ("kd.ce_weight", -1, "kd.ce_weight"),
    ("teacher.checkpoint", "/nonexistent/teacher.pt", "teacher.checkpoint"),
    ("space.candidates", [], "space.candidates"),
    ("space.candidates", ["identity", "cutmixx"], "space.candidates"),
    ("space.candidates", ["identity", "flip(p=nan)"], "flip.p"),
    ("space.candidates", ["identity", "cutmix_pick(tau=nan)"], "tau"),
    ("space.candidates", ["identity", "cutmix_pick(keep=nan)"], "keep"),
    ("space.candidates", ["identity", "mixup(alpha=nan)"], "alpha"),
    ("space.candidates", ["identity", "cutmix_pick(keep=1.5)"], "keep"),
    ("space.candidates", ["identity", "identity"], "twice"),
    ("proxy.passes", 0, "proxy.passes"), ("proxy.batch_size", 1e9, "proxy.batch_size"),
    ("proxy.confidence", 1.0, "proxy.confidence"), ("proxy.bootstrap", -1, "proxy.bootstrap"),
    ("proxy.group_batches", 1000, "proxy"),
    ("search.num_samples", True, "num_samples"), ("search.num_samples", 0, "search.num_samples"),
    ("search.max_concurrent", 0, "search.max_concurrent"),
    ("search.metric", "accuracy", "search.metric"), ("search.metric", "test_loss", "search.metric"),
    ("search.prune.top_k", 50, "search.prune.top_k"), ("search.prune.audit", 20, "search.prune.audit"),
    ("search.prune.audit_seeds", 1, "search.prune.audit_seeds"),
    ("search.hyperparameters", {"lr": {"uniform": [-0.1, 0.1]}}, "search.hyperparameters.lr"),
    ("search.hyperparameters", {"batch_size": {"int": [0, 8]}}, "search.hyperparameters.batch_size"),
    ("search.hyperparameters", {"lr": -0.5}, "search.hyperparameters.lr"),
    ("search.hyperparameters", {"lr": {"loguniform": [0.01, INF]}}, "lr.loguniform"),
    ("search.hyperparameters", {"lr": {"uniform": [0.5, 1.0]}, "kd.temperature": {"choice": [0, 4]}},
     "search.hyperparameters.kd.temperature"),
    ("search.hyperparameters", {"learning_rate": {"loguniform": [0.01, 0.1]}}, "search.hyperparameters"),
    ("search.resources", {"cpu": 1e6, "gpu": 0}, "search.resources.cpu"),
    ("search.resources", {"cpu": 1, "gpu": 1}, "search.resources.gpu"),
    ("search.resources", {"cpu": 1, "tpu": 1}, "search.resources"),
    ("search.resources", {"cpu": NAN}, "search.resources"),
    ("search.resources", {"cpu": 1, "workers_per_trial": 64}, "search.resources.workers_per_trial"),
    ("search.resources", {"cpu": 1, "workers_per_trial": 0}, "search.resources.workers_per_trial"),
    ("search.resources", {"cpu": 1, "workers_per_trial": 2, "sync_batchnorm": "yes please"},
     "search.resources.sync_batchnorm"),
    ("tracking.uri", "./mlruns", "tracking.uri"), ("tracking.uri", "file:///tmp/mlruns", "tracking.uri"),
    ("tracking.uri", "http://127.0.0.1:9", "tracking.uri"),
    ("optimiser", "sgd", "optimiser"),
    # schedules and PBT
    ("search.scheduler", {"kind": "pbt", "perturbation_interval": 30}, "search.scheduler.perturbation_interval"),
    ("search.scheduler", {"kind": "pbt", "quantile_fraction": 0.9}, "search.scheduler.quantile_fraction"),
    ("search.scheduler", {"kind": "pbt", "resample_probability": NAN}, "search.scheduler.resample_probability"),
    ("search.hyperparameters", {"cutmix.alpha": {"uniform": [0.1, 50]}}, "cutmix.alpha"),
    ("search.hyperparameters", {"cutmix.beta": {"uniform": [0.1, 5]}}, "cutmix.beta"),
    ("search.hyperparameters", {"randaugment.magnitude": {"loguniform": [1, 9]}}, "randaugment.magnitude"),
    ("schedule", [{"epoch": 1, "values": {"epochs": 5}}], "schedule.0.values.epochs"),
    ("schedule", [{"epoch": 40, "values": {"lr": 0.1}}], "schedule.0.epoch"),
    ("schedule", [{"epoch": 1, "values": {"lr": NAN}}], "schedule.0.values.lr"),
    ("schedule", [{"epoch": 1, "values": {"mixup.alpha": -1}}], "schedule.0.values.mixup.alpha"),
    ("schedule", [{"epoch": 1, "values": {"augmentation": "nope"}}], "schedule.0.values.augmentation"),
    # policy spaces and the recipe baseline
    ("space.policies", {"base": {"randaugment": {"magnitude": []}}}, "space.policies.base.randaugment.magnitude"),
    ("space.policies", {"base": {"randaugment": {"magnitude": {"int": [9, 3]}}}},
     "space.policies.base.randaugment.magnitude.int: empty range"),
    ("space.policies", {"base": {"warp": {}}}, "space.policies.base.warp: unknown op"),
    ("space.policies", {"base": {"subpolicy": {"m1": [12]}}}, "space.policies.base.subpolicy.m1"),
    ("space.policies", {"erase": {"none": {}, "cutout": {"size": [0]}}}, "space.policies.erase.cutout.size"),
    ("space.policies", {"mix": {"mixup": {"alpha": [NAN]}}}, "space.policies.mix.mixup.alpha"),
    ("space.policies", "everything", "space.policies"),
    ("space.sample", 0, "space.sample"),
    ("space", {"policies": {"mix": {"none": {}}}, "sample": 5}, "space.sample"),
    ("search.baseline", "cutmix(alpha=20.0)", "search.baseline"),
    ("search.baseline", "warp", "search.baseline"),
    # the baseline (auto: CutMixPick keep 0.5) lies outside a space without CutMixPick
    ("space", {"policies": {"mix": {"none": {}, "cutmix": {}}}, "sample": 2}, "search.baseline: cutmix_pick"),
    ("proxy.race_top_k", 1, "proxy.race_top_k"),
]


def _snapshot(folder: Path) -> set:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _expect_refusal(argv, text, workdir, capsys):
    before = _snapshot(workdir)
    start = time.perf_counter()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert text in err, err
    assert _snapshot(workdir) == before, "bad input must not write anything"
    assert time.perf_counter() - start < 10
    return err


@pytest.mark.parametrize("field,value,text", CONFIG_CASES, ids=[f"{f}={v!r}" for f, v, _ in CONFIG_CASES])
def test_bad_config_field(field, value, text, workdir, capsys):
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(_set(yaml.safe_load(yaml.safe_dump(BASE)), field, value)))
    _expect_refusal(["sweep", str(path), "--no-progress"], text, workdir, capsys)


def _bad_checkpoint(kind: str, folder: Path) -> Path:
    path = folder / f"{kind}.pt"
    if kind == "text":
        path.write_text("not a checkpoint\n")
    elif kind == "plain_torch":
        torch.save({"weights": torch.zeros(3)}, path)
    else:  # a pickle that would run code when loaded without weights_only
        class Payload:
            def __reduce__(self):
                return (os.system, (f"touch {folder / 'EXECUTED'}",))
        path.write_bytes(pickle.dumps(Payload()))
    return path


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("kind", ["text", "plain_torch", "code_pickle"])
@pytest.mark.parametrize("field", ["teacher.checkpoint", "proxy.student_checkpoint"])
def test_bad_checkpoints_are_refused_unexecuted(kind, field, workdir, capsys):
    checkpoint = _bad_checkpoint(kind, workdir)
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(_set(yaml.safe_load(yaml.safe_dump(BASE)), field, str(checkpoint))))
    _expect_refusal(["sweep", str(path), "--no-progress"], field, workdir, capsys)
    assert not (workdir / "EXECUTED").exists()


FILE_CASES = {
    "empty file": ("", "empty"),
    "only a comment": ("# nothing\n", "empty"),
    "duplicate keys": ("name: a\nseed: 1\nname: b\n", "twice"),
    "binary": (bytes(range(256)) * 4, "UTF-8"),
    "invalid yaml": ("data: [unclosed\n", "not valid YAML"),
    "top-level list": ("- a\n- b\n", "mapping"),
    "nested duplicate": ("data: {name: digits, name: digits}\n", "twice"),
}


@pytest.mark.parametrize("case", sorted(FILE_CASES))
def test_bad_config_files(case, workdir, capsys):
    content, text = FILE_CASES[case]
    path = workdir / "config.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    _expect_refusal(["sweep", str(path), "--no-progress"], text, workdir, capsys)


def test_directory_and_missing_config(workdir, capsys):
    (workdir / "configs").mkdir()
    _expect_refusal(["sweep", str(workdir / "configs")], "is a directory", workdir, capsys)
    _expect_refusal(["sweep", str(workdir / "none.yaml")], "does not exist", workdir, capsys)


SET_CASES = [("student.train.lr=[1,", "--set"), ("..=1", "--set"), ("noequals", "--set"),
             ("=3", "--set"), ("seed.x=1", "not a section"), ("student.train.lr=-1", "student.train.lr")]


@pytest.mark.parametrize("override,text", SET_CASES)
def test_bad_set_overrides(override, text, workdir, capsys):
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(BASE))
    _expect_refusal(["sweep", str(path), "--set", override], text, workdir, capsys)


QUERY_CASES = [
    (["best", "--experiment", "x", "--tracking-uri", "ftp://example.org/db"], "tracking.uri"),
    (["best", "--experiment", "x", "--tracking-uri", "file:///tmp/mlruns"], "tracking.uri"),
    (["best", "--experiment", "missing", "--tracking-uri", "sqlite:///mlflow.db"], "no such MLflow store"),
    (["report", "--experiment", "missing", "--tracking-uri", "sqlite:///mlflow.db"], "no such MLflow store"),
    (["report", "--experiment", "x", "--tracking-uri", "ftp://example.org/db"], "tracking.uri"),
    (["best", "--experiment", "x", "--tracking-uri", "http://127.0.0.1:9"], "tracking.uri"),
    (["best", "--experiment", "x", "--metric", "test_loss"], "--select-on-test"),
]


@pytest.mark.parametrize("argv,text", QUERY_CASES, ids=[" ".join(a[:1] + a[-2:]) for a, _ in QUERY_CASES])
def test_bad_queries_write_nothing(argv, text, workdir, capsys):
    _expect_refusal(argv, text, workdir, capsys)


def test_bad_imagefolder_and_cifar_data(workdir, capsys):
    (workdir / "images").mkdir()
    (workdir / "images" / "train.txt").write_text("a.png zero\n")
    (workdir / "images" / "test.txt").write_text("")
    (workdir / "cifar").mkdir()
    cases = [({"name": "imagefolder", "root": "images", "train_list": "images/train.txt",
               "test_list": "images/test.txt", "val_per_class": 1}, "train.txt:1"),
             ({"name": "imagefolder", "root": "images", "train_list": "images", "test_list": "images/test.txt",
               "val_per_class": 1}, "data"),
             ({"name": "cifar10", "root": "cifar", "val_per_class": 5}, "data (cifar10)")]
    for data, text in cases:
        path = workdir / "config.yaml"
        path.write_text(yaml.safe_dump({**BASE, "data": data}))
        before = _snapshot(workdir)
        assert main(["sweep", str(path), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert text in err, err
        assert _snapshot(workdir) == before


def test_silent_tracking_server_fails_within_10_s(workdir, capsys):
    """A server that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        path = workdir / "config.yaml"
        port = listener.getsockname()[1]
        path.write_text(yaml.safe_dump(_set(yaml.safe_load(yaml.safe_dump(BASE)), "tracking.uri",
                                            f"http://127.0.0.1:{port}")))
        _expect_refusal(["sweep", str(path), "--no-progress"], "tracking.uri", workdir, capsys)
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        listener.close()


def _section_paths(model, prefix=""):
    """Every section of the schema, nested ones included, as dotted paths."""
    from augtune.trainables.experiment_config import Section

    for name, info in model.model_fields.items():
        kind = info.annotation
        if isinstance(kind, type) and issubclass(kind, Section):
            yield prefix + name
            yield from _section_paths(kind, prefix + name + ".")


def test_every_section_given_a_scalar_a_list_or_null_exits_2_naming_it(workdir, capsys):
    from augtune.search.sweep_config import SweepConfig

    paths = list(_section_paths(SweepConfig)) + ["kd"]
    assert {"data", "teacher", "student.train", "search.prune", "proxy", "space"} <= set(paths)
    for path in paths:
        for value in ("digits", [1, 2], None):
            config = workdir / "config.yaml"
            config.write_text(yaml.safe_dump(_set(yaml.safe_load(yaml.safe_dump(BASE)), path, value)))
            err = _expect_refusal(["sweep", str(config)], path, workdir, capsys)
            assert "Traceback" not in err
