"""A fourth method is one module: registered here, in the test file, with its section, runner,
teacher source and hyperparameters, it is validated by the config schema, run by `augtune train`
and swept on Ray like the built-in ones; and no module of ours imports one that imports it back."""
import ast
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from pydantic import Field

from augtune.search.sweep_config import ConfigError, load_config
from augtune.trainables.experiment_config import Section
from augtune.trainables.method import Method, register
from augtune.trainables.models import build_model
from augtune.trainables.runner import EpochRunner

ROOT = Path(__file__).resolve().parents[1]


class TinyConfig(Section):
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    augmentation: str = "identity"


class TinyRunner(EpochRunner):
    """CE with label smoothing on the candidate view: the smallest method with a setting of its own."""

    method_section = "tiny"

    def __init__(self, cfg, data=None, seed=None):
        super().__init__(cfg, cfg.student.train, data, seed)
        from augtune.spaces.candidates import Context, parse_candidate

        self.settings = cfg.section("tiny")
        self.candidate = parse_candidate(self.settings.augmentation)
        self.context = Context(self.generator, {}, self.pipeline.padding)
        self.model = build_model(cfg.student.model, self.data.num_classes, self.data.channels).to(self.device)
        self._setup_optimisation(self.model.parameters())

    def loss(self, images, labels):
        x = self.candidate.apply(self.pipeline.train_batch(images, self.generator), self.context)
        loss = F.cross_entropy(self.model(self.pipeline.normalise(x)).float(), labels,
                               label_smoothing=self.settings.label_smoothing)
        # a constant part, so the test sees the value the trial's worker trained with
        return loss, {"label_smoothing": torch.tensor(self.settings.label_smoothing)}


def _build(cfg, *, data=None, seed=None, teacher_checkpoint=None, work_dir=None):
    return TinyRunner(cfg, data, seed)


TINY = register(Method("tiny", TinyConfig, _build, teacher="none", hyperparameters=("tiny.label_smoothing",),
                       one_label_per_image=True, description="CE with label smoothing (a test method)"))


def _config(tmp_path, **search):
    cfg = {
        "name": "tiny", "output_dir": str(tmp_path / "runs"),
        "data": {"name": "digits", "samples_per_class": 10, "val_per_class": 5, "image_size": 12},
        "student": {"model": "resnet8", "train": {"epochs": 2, "batch_size": 32}},
        "tiny": {"label_smoothing": 0.05},
        "space": {"candidates": ["identity", "flip", "cutout"]},
        "search": {"method": "tiny", "num_samples": 2, "max_concurrent": 2, "scheduler": {"kind": "fifo"},
                   "algorithm": "random", "resources": {"cpu": 1, "gpu": 0},
                   "hyperparameters": {"tiny.label_smoothing": {"uniform": [0.0, 0.3]}}, **search},
        "tracking": {"uri": f"sqlite:///{tmp_path}/m.db"},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_registered_method_is_part_of_the_schema(tmp_path):
    cfg = load_config(_config(tmp_path))
    assert cfg.method is TINY and cfg.section("tiny").label_smoothing == 0.05
    with pytest.raises(ConfigError, match="tiny.label_smoothing"):
        load_config(_config(tmp_path), {"tiny.label_smoothing": 1.5})  # its own section's bounds
    with pytest.raises(ConfigError, match="mixes images"):
        load_config(_config(tmp_path), {"space.candidates": ["identity", "mixup"]})  # one label per image
    with pytest.raises(ConfigError, match="unknown hyperparameter 'kd.temperature' for method tiny"):
        load_config(_config(tmp_path, hyperparameters={"kd.temperature": {"uniform": [2, 4]}}))
    with pytest.raises(ConfigError, match="unknown method 'tinyy'"):
        load_config(_config(tmp_path, method="tinyy"))
    with pytest.raises(ConfigError, match="tinyy: unknown key"):
        load_config(_config(tmp_path), {"tinyy.label_smoothing": 0.1})


def test_registered_method_trains_without_ray(tmp_path, capsys):
    from augtune.search.cli import main

    assert main(["train", "tiny", str(_config(tmp_path)), "--no-progress", "--augmentation", "flip"]) == 0
    assert (tmp_path / "runs" / "tiny" / "train-tiny" / "summary.json").is_file()


def test_registered_method_sweeps_on_ray(tmp_path, ray_session):
    from mlflow import MlflowClient
    from ray import cloudpickle

    from augtune.search.sweep.driver import run_sweep

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import this test file
    outcome = run_sweep(load_config(_config(tmp_path)), progress=False)
    assert len(outcome.trials) == 2 and outcome.best is not None
    assert outcome.scores == [] and outcome.survivors == ["identity", "flip(p=0.5)", "cutout"]  # no teacher, no proxy
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/m.db")
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id], "tags.`augtune.stage` = 'trial'")
    assert len(runs) == 2
    for run in runs:
        assert run.info.status == "FINISHED"
        sampled = float(run.data.params["tiny.label_smoothing"])
        assert 0.0 <= sampled <= 0.3
        # the value sampled on the driver reached the method's section in the worker
        trained_with = client.get_metric_history(run.info.run_id, "train_label_smoothing")
        assert [m.value for m in trained_with] == [pytest.approx(sampled)] * 2


def test_built_in_methods_declare_their_sections_as_an_added_method_does():
    """KD, SLA and SSD are not fields of the schema: each declares its section class in its own
    module, as `tiny` does here, and each config holds the built-ins' sections with their defaults
    and a given section validated by its class, naming the field."""
    from augtune.trainables import kd, sla, ssd
    from augtune.trainables.experiment_config import DistillConfig

    assert not {"kd", "sla", "ssd", "tiny"} & set(DistillConfig.model_fields)
    for module, method in ((kd, "kd"), (sla, "sla"), (ssd, "ssd")):
        assert module.METHOD.section.__module__ == module.__name__
    cfg = DistillConfig.model_validate({"kd": {"temperature": 2.0}, "tiny": {"label_smoothing": 0.2}})
    assert cfg.kd.temperature == 2.0 and cfg.sla.transforms == "rotation" and cfg.ssd.lws.epochs == 5
    assert cfg.section("tiny").label_smoothing == 0.2 and cfg.method_sections() == ["kd", "sla", "ssd", "tiny"]
    for bad, field in (({"kd": {"temperature": -1}}, "kd.temperature"),
                       ({"tiny": {"label_smoothing": 1.5}}, "tiny.label_smoothing"),
                       ({"sla": {"transforms": "colour"}}, "sla.transforms")):  # digits are grey: SLA's own check
        with pytest.raises(Exception, match=field.replace(".", r"\.")):
            DistillConfig.model_validate(bad)


# ------------------------------------------------------------------ import cycles

def _own_modules() -> dict[str, Path]:
    modules = {}
    for package in ("spaces", "trainables", "search"):
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(("augtune",) + (parts[:-1] if parts[-1] == "__init__" else parts))] = path
    return modules


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Every module of ours that `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        found |= {n for n in names if n in modules}
    return found


def test_no_module_imports_one_that_imports_it_back():
    modules = _own_modules()
    graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    # packages' __init__ files are empty: an edge to a package is an edge to nothing
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
    # and the layers point one way: spaces <- trainables <- search
    for name, targets in graph.items():
        layer = name.split(".")[1]
        allowed = {"spaces": {"spaces"}, "trainables": {"spaces", "trainables"},
                   "search": {"spaces", "trainables", "search"}}[layer]
        assert all(t.split(".")[1] in allowed for t in targets), (name, targets)


# search/'s parts, lowest first: a module may import its own part and parts below it, never above
SEARCH_PARTS = {"sweep_config": 0, "selection": 1, "results": 2, "tables": 2, "standalone": 3, "sweep": 4,
                "cli": 5, "submit": 6}


def test_search_parts_import_one_way():
    """selection <- results, tables <- standalone <- sweep <- cli: the layout the README's Layout
    section describes, checked on every import of every module (top-level and inside functions)."""
    modules = _own_modules()
    wrong = []
    for name, path in modules.items():
        parts = name.split(".")
        if parts[1] != "search" or len(parts) < 3:
            continue
        own = SEARCH_PARTS[parts[2]]
        for target in _imports(path, modules):
            bits = target.split(".")
            if bits[1] == "search" and len(bits) > 2 and bits[2] != parts[2]:
                if SEARCH_PARTS[bits[2]] >= own:
                    wrong.append(f"{name} -> {target}")
    assert not wrong, wrong
    assert set(SEARCH_PARTS) == {p.stem for p in (ROOT / "search").iterdir()
                                 if p.name != "__init__.py" and (p.suffix == ".py" or (p / "__init__.py").is_file())}


def test_every_module_imports_through_the_augtune_namespace():
    """`search`, `spaces` and `trainables` are folder names only: an import of the bare name
    would pick up another installed package of that name (Hugging Face's `spaces`)."""
    bare = []
    for path in [*_own_modules().values(), *(ROOT / "tests").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
                     else [])
            bare += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in ("search", "spaces",
                                                                                           "trainables")]
    assert not bare, bare
