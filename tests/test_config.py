"""Bad input exits with code 2, names the field, and writes nothing."""
import textwrap

import pytest

from augtune.search.cli import main

GOOD = """
name: cfgtest
output_dir: {out}
data: {{name: digits, image_size: 16}}
teacher: {{model: resnet8, train: {{epochs: 1}}}}
"""

BAD = {
    "unknown model": ("teacher: {model: resnet9000}", "teacher.model", "resnet20"),
    "negative lr": ("teacher: {model: resnet8, train: {lr: -0.1}}", "teacher.train.lr", "greater than 0"),
    "missing dataset path": ("data: {name: cifar10, root: /nonexistent/cifar}", "data.root", "download"),
    "cifar without root": ("data: {name: cifar100}", "data.root", "required"),
    "wrong type": ("teacher: {model: resnet8, train: {epochs: many}}", "teacher.train.epochs", "integer"),
    "unknown top key": ("optimiser: sgd", "optimiser", "unknown key"),
    "unknown nested key": ("teacher: {model: resnet8, train: {learning_rate: 0.1}}",
                           "teacher.train.learning_rate", "unknown key"),
    "unknown dataset": ("data: {name: mnist}", "data.name", "digits"),
    "bad schedule": ("teacher: {model: resnet8, train: {schedule: linear}}", "teacher.train.schedule", "cosine"),
    "missing checkpoint": ("teacher: {model: resnet8, checkpoint: /nope/teacher.pt}", "teacher.checkpoint",
                           "does not exist"),
    "imagefolder without lists": ("data: {name: imagefolder, root: /tmp}", "data.train_list", "required"),
    "imbalance below one": ("data: {name: digits, imbalance_factor: 0.5}", "data.imbalance_factor",
                            "greater than or equal to 1"),
    "unknown augmentation": ("space: {candidates: [identity, cutmixx]}", "space.candidates", "cutmix"),
    "augmentation param out of range": ("space: {candidates: ['cutmix_pick(keep=1.5)']}", "space.candidates",
                                        "keep"),
    "student pick without student": ("space: {candidates: ['cutmix_pick(entropy=student)']}",
                                     "student_checkpoint", "student"),
    "file store tracking uri": ("tracking: {uri: ./mlruns}", "tracking.uri", "sqlite"),
    "unknown hyperparameter": ("search: {hyperparameters: {learning_rate: {loguniform: [0.01, 0.1]}}}",
                               "search.hyperparameters", "lr"),
    "bad bounds": ("search: {hyperparameters: {lr: {loguniform: [0.1, 0.01]}}}", "search.hyperparameters",
                   "low must be below high"),
    "bad resources": ("search: {resources: {cpu: 0}}", "search.resources", "cpu"),
    "name with slash": ("name: a/b", "name", "pattern"),
    "fixed without candidate": ("search: {prune: {mode: fixed}}", "search.prune.candidate", "name it"),
    "fixed candidate not in space": ("space: {candidates: [identity, flip]}\n"
                                     "search: {prune: {mode: fixed, candidate: cutout}}",
                                     "search.prune.candidate", "not one of space.candidates"),
    "fixed with audit": ("space: {candidates: [identity, flip]}\n"
                         "search: {prune: {mode: fixed, candidate: flip, audit: 1}}", "search.prune.audit",
                         "nothing to audit"),
}


def _write(tmp_path, extra: str):
    out = tmp_path / "out"
    base = GOOD.format(out=out)
    merged = {}
    import yaml
    merged.update(yaml.safe_load(base))
    merged.update(yaml.safe_load(textwrap.dedent(extra)))
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(merged))
    return path, out


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_config_exits_2_naming_field(case, tmp_path, capsys):
    extra, field, hint = BAD[case]
    path, out = _write(tmp_path, extra)
    code = main(["train", "teacher", str(path), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert field in err and hint in err, err
    assert not out.exists(), "nothing may be written for a bad config"


def test_missing_config_file_and_bad_yaml(tmp_path, capsys):
    assert main(["train", "teacher", str(tmp_path / "none.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    assert main(["train", "teacher", str(bad)]) == 2
    assert "not valid YAML" in capsys.readouterr().err


def test_shipped_configs_validate(tmp_path):
    """Every shipped config loads; an ImageFolder one with its data paths pointed at a tiny
    ImageFolder tree (the user's own files in practice). Each loads again as the sweep logs it
    (config.json, which `best --export` starts from: every field written out)."""
    from pathlib import Path

    import yaml

    from augtune.search.sweep_config import load_config
    from fixtures import write_image_folder

    # the repository's configs, wherever pytest runs from
    paths = [p for p in sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
             if p.name != "cluster.yaml"]  # a Ray cluster file, not an experiment
    assert len(paths) >= 10
    train_list, test_list = write_image_folder(tmp_path / "images", classes=3, per_class=4)
    for path in paths:
        overrides = {}
        if yaml.safe_load(path.read_text())["data"]["name"] == "imagefolder":
            overrides = {"data.root": str(tmp_path / "images"), "data.train_list": str(train_list),
                         "data.test_list": str(test_list)}
        cfg = load_config(path, overrides)
        logged = tmp_path / f"logged-{path.name}"
        logged.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
        assert load_config(logged) == cfg, path.name


def test_bad_set_override_exits_2(tmp_path, capsys):
    path, out = _write(tmp_path, "seed: 1")
    assert main(["train", "teacher", str(path), "--set", "seed"]) == 2
    assert "key.path=value" in capsys.readouterr().err
    assert main(["train", "teacher", str(path), "--set", "seed.x=1"]) == 2
    assert "not a section" in capsys.readouterr().err
    assert not out.exists()
