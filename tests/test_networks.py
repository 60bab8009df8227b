"""Any network by name: torchvision:NAME, timm:NAME and a user's package.module:factory, adapted
into augtune's feature extractor + heads so that every method runs with them; weights in the
network's own layout reproduce its logits; bad names exit 2 before anything is written."""
import json

import pytest
import torch
import yaml

from augtune.search.cli import main
from augtune.trainables.models import build_model

NETWORKS = {
    "torchvision": ("torchvision:resnet18", {}),
    "timm": ("timm:test_resnet", {}),
    "user": ("user_networks:small_cnn", {"width": 8}),
}
BASE = {"seed": 0, "data": {"name": "digits", "samples_per_class": 10, "val_per_class": 3, "image_size": 12},
        "teacher": {"train": {"epochs": 1, "batch_size": 32}},
        "student": {"train": {"epochs": 1, "batch_size": 32}}}


def _config(tmp_path, name, teacher, student, **extra):
    cfg = json.loads(json.dumps(BASE))
    cfg["teacher"].update(model=teacher[0], model_args=teacher[1])
    cfg["student"].update(model=student[0], model_args=student[1])
    cfg.update(name=name, output_dir=str(tmp_path / "runs"), **extra)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("kind", list(NETWORKS))
@pytest.mark.parametrize("method", ["kd", "sla", "ssd"])
def test_every_method_runs_with_foreign_networks(tmp_path, kind, method):
    """Teacher and student of the same kind (KD's logits, SLA's joint head, SSD's feature head,
    LWS and the two-head stage III all hang off the adapted feature extractor)."""
    extra = {"ssd": {"start_stage": 1, "lws": {"epochs": 1, "batch_size": 32}}} if method == "ssd" else {}
    path = _config(tmp_path, f"{method}-{kind}", NETWORKS[kind], NETWORKS[kind], **extra)
    assert main(["train", method, str(path), "--augmentation", "flip", "--no-progress"]) == 0
    summary = json.loads((tmp_path / "runs" / f"{method}-{kind}" / f"train-{method}" / "summary.json").read_text())
    assert torch.isfinite(torch.tensor(summary["test_loss"]))
    if method == "kd":  # the student checkpoint rebuilds the same network
        from augtune.trainables.engine import load_checkpoint

        student, payload = load_checkpoint(summary["student_checkpoint"])
        assert payload["model_name"] == NETWORKS[kind][0] and payload["model_args"] == NETWORKS[kind][1]


def _reference(kind):
    torch.manual_seed(0)
    if kind == "torchvision":
        import torchvision

        return torchvision.models.resnet18(num_classes=10).eval(), {"num_classes": 10}
    if kind == "timm":
        import timm

        return timm.create_model("test_resnet", num_classes=10).eval(), {"num_classes": 10}
    from user_networks import small_cnn

    return small_cnn(width=8).eval(), {"width": 8}


@pytest.mark.parametrize("kind", list(NETWORKS))
def test_weights_in_the_networks_own_layout_reproduce_its_logits(tmp_path, kind):
    """A state dict saved from the original module (its own key names) loads into the adapted
    network, whose main head is the original classifier: the same logits. On 1-channel data the
    first convolution's weights are summed over the colour channels, so a gray image gives the
    logits the original gives for that image repeated to 3 channels."""
    original, args = _reference(kind)
    path = tmp_path / "weights.pt"
    torch.save(original.state_dict(), path)
    weights = torch.load(path, weights_only=True)
    x = torch.rand(4, 3, 32, 32)
    network = build_model(NETWORKS[kind][0], 10, 3, args, weights=weights).eval()
    with torch.no_grad():
        assert torch.allclose(network(x), original(x), atol=1e-5)
        gray = build_model(NETWORKS[kind][0], 10, 1, args, weights=weights).eval()
        g = x[:, :1]
        assert torch.allclose(gray(g), original(g.repeat(1, 3, 1, 1)), atol=1e-4)


def test_weights_of_another_architecture_are_refused():
    import torchvision

    other = torchvision.models.resnet34(num_classes=10).state_dict()
    with pytest.raises(ValueError, match="do not fit this architecture"):
        build_model("torchvision:resnet18", 10, 3, {"num_classes": 10}, weights=other)


@pytest.mark.parametrize("model,args,text", [
    ("torchvision:resnet1800", {}, "torchvision has no classification model"),
    ("timm:not_a_model", {}, "timm has no model"),
    ("no_such_package.nets:make", {}, "cannot import"),
    ("user_networks:SmallCNNX", {}, "cannot import"),
    ("resnet8", {"width": 4}, "model_args"),
    ("resnet999", {}, "zoo name"),
])
def test_bad_network_names_exit_2_before_writing(tmp_path, capsys, model, args, text):
    path = _config(tmp_path, "bad", (model, args), ("resnet8", {}))
    assert main(["train", "kd", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "teacher" in err and text in err
    assert not (tmp_path / "runs").exists()


# ---- pretrained teachers: teacher.weights / teacher.pretrained


class _RunsCode:
    def __reduce__(self):
        return (print, ("this pickle ran code",))


def _write_teacher(tmp_path, name, teacher):
    cfg = json.loads(json.dumps(BASE))
    cfg["teacher"].update({"model": "torchvision:resnet18", "model_args": {"num_classes": 10}, **teacher})
    cfg["student"].update(model="resnet8")
    cfg.update(name=name, output_dir=str(tmp_path / "runs"))
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_teacher_weights_are_the_teacher_its_logits_unchanged(tmp_path):
    """teacher.weights (torchvision key names, 10 classes): no teacher training; the teacher the
    KD run distilled from gives the original module's logits (gray digits = the image repeated to
    RGB, by the first-conv rule)."""
    import torchvision

    from augtune.trainables.experiment_config import DataConfig
    from augtune.trainables.data import load_data
    from augtune.trainables.engine import InputPipeline, load_checkpoint

    torch.manual_seed(0)
    original = torchvision.models.resnet18(num_classes=10).eval()
    torch.save(original.state_dict(), tmp_path / "resnet18.pth")
    path = _write_teacher(tmp_path, "weights", {"weights": str(tmp_path / "resnet18.pth")})
    assert main(["train", "kd", str(path), "--no-progress"]) == 0
    teacher, payload = load_checkpoint(tmp_path / "runs" / "weights" / "teacher.pt")
    assert payload["extra"]["weights"].endswith("resnet18.pth")
    # the run normalised as torchvision's resnet18 weights expect (grey: their channel average)
    expected = torchvision.models.ResNet18_Weights.DEFAULT.transforms()
    assert payload["mean"] == pytest.approx([sum(expected.mean) / 3])
    assert payload["std"] == pytest.approx([sum(expected.std) / 3])
    data = load_data(DataConfig(**BASE["data"]))
    pipeline = InputPipeline(data, torch.device("cpu"))
    x = pipeline.normalise(pipeline.to_unit(data.test.images[:8]))
    with torch.no_grad():
        assert torch.allclose(teacher.eval()(x), original(x.repeat(1, 3, 1, 1)), atol=1e-4)


def test_a_classifier_of_another_size_is_refused_unless_fine_tuned(tmp_path, capsys):
    import torchvision

    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "imagenet.pth")  # 1000 classes
    path = _write_teacher(tmp_path, "imagenet", {"weights": str(tmp_path / "imagenet.pth"), "model_args": {}})
    assert main(["train", "kd", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "1000 classes" in err and "10" in err and "teacher.fine_tune" in err
    assert not (tmp_path / "runs").exists()
    tuned = _write_teacher(tmp_path, "tuned", {"weights": str(tmp_path / "imagenet.pth"), "model_args": {},
                                               "fine_tune": True})
    assert main(["train", "kd", str(tuned), "--no-progress"]) == 0
    assert (tmp_path / "runs" / "tuned" / "teacher.pt").is_file()


def test_a_state_dict_fine_tuned_for_the_datas_classes_loads_as_it_is(tmp_path, capsys):
    """torchvision's resnet18 trained for 10 classes, named without model_args: the network is built
    with the classifier its weights have; a 7-class one names both sizes and the settings."""
    import torchvision

    from augtune.trainables.experiment_config import ModelConfig

    torch.manual_seed(1)
    original = torchvision.models.resnet18(num_classes=10).eval()
    torch.save(original.state_dict(), tmp_path / "tuned10.pth")
    section = ModelConfig(model="torchvision:resnet18", weights=str(tmp_path / "tuned10.pth"))
    network = section.build(10, 3).eval()
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(network(x), original(x), atol=1e-5)
    torch.save(torchvision.models.resnet18(num_classes=7).state_dict(), tmp_path / "tuned7.pth")
    path = _write_teacher(tmp_path, "seven", {"weights": str(tmp_path / "tuned7.pth"), "model_args": {}})
    assert main(["train", "kd", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "has 7 classes and the data has 10" in err and "fine_tune" in err and "model_args.num_classes" in err
    assert "size mismatch" not in err


@pytest.mark.parametrize("make,text", [
    (lambda p: torch.save(__import__("torchvision").models.resnet34(num_classes=10).state_dict(), p),
     "do not fit this architecture"),
    (lambda p: torch.save({"w": _RunsCode()}, p), "not a plain state dict"),
    (lambda p: p.write_bytes(b"not a checkpoint"), "not a plain state dict"),
    (lambda p: None, "does not exist"),
])
def test_bad_teacher_weights_exit_2_before_writing(tmp_path, capsys, make, text):
    weights = tmp_path / "bad.pth"
    make(weights)
    path = _write_teacher(tmp_path, "bad", {"weights": str(weights)})
    assert main(["train", "kd", str(path), "--no-progress"]) == 2
    out = capsys.readouterr()
    assert "teacher.weights" in out.err and text in out.err
    assert "this pickle ran code" not in out.out + out.err
    assert not (tmp_path / "runs").exists()


def test_pretrained_offline_without_a_cached_file_names_the_cache(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    path = _write_teacher(tmp_path, "pretrained", {"pretrained": True, "model_args": {}})
    assert main(["train", "kd", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "teacher" in err and str(tmp_path / "torch-home") in err
    assert not (tmp_path / "runs").exists()


def test_safetensors_weights_of_a_timm_network_load(tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    original = timm.create_model("test_resnet", num_classes=10).eval()
    save_file(original.state_dict(), str(tmp_path / "w.safetensors"))
    from augtune.trainables.experiment_config import ModelConfig

    cfg = ModelConfig(model="timm:test_resnet", model_args={"num_classes": 10}, weights=tmp_path / "w.safetensors")
    network = cfg.build(10, 3).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(network(x), original(x), atol=1e-5)


@pytest.mark.parametrize("name", ["vit_b_16", "mobilenet_v3_small"])
def test_classifiers_inside_named_and_numbered_sequentials_are_found(name):
    """ViT keeps its Linear as `heads.head`, MobileNet as `classifier[3]`: both are cut off and
    become the main head, so the adapted network gives the original logits."""
    import torchvision

    torch.manual_seed(0)
    original = torchvision.models.get_model(name, num_classes=5).eval()
    network = build_model(f"torchvision:{name}", 5, 3, {"num_classes": 5}, weights=original.state_dict()).eval()
    assert not any(isinstance(m, torch.nn.Linear) and m.out_features == 5 for m in network.backbone.modules())
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(network(x), original(x), atol=1e-5)


# ---- input side and normalisation follow the network's weights, unless data.* sets them


def _distill(data, teacher, student=None):
    from augtune.trainables.experiment_config import DistillConfig, resolve_config

    return resolve_config(DistillConfig, {"data": data, "teacher": teacher, **({"student": student} if student else {})})


def _torchvision_weights(tmp_path):
    import torchvision

    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), path)
    return {"model": "torchvision:resnet18", "model_args": {"num_classes": 10}, "weights": str(path)}


def test_input_follows_torchvisions_weights_meta_on_grey_data(tmp_path):
    import torchvision

    transforms = torchvision.models.ResNet18_Weights.DEFAULT.transforms()
    cfg = _distill({"name": "digits"}, _torchvision_weights(tmp_path))
    assert cfg.data.image_size == transforms.crop_size[0]
    assert cfg.data.mean == pytest.approx([sum(transforms.mean) / 3])
    assert cfg.data.std == pytest.approx([sum(transforms.std) / 3])


def test_input_follows_timms_pretrained_config_on_rgb_data(tmp_path):
    import timm
    from safetensors.torch import save_file

    save_file(timm.create_model("test_resnet", num_classes=10).state_dict(), str(tmp_path / "w.safetensors"))
    teacher = {"model": "timm:test_resnet", "model_args": {"num_classes": 10}, "weights": str(tmp_path / "w.safetensors")}
    (tmp_path / "cifar").mkdir()
    cfg = _distill({"name": "cifar10", "root": str(tmp_path / "cifar")}, teacher)
    expected = timm.data.resolve_data_config(model=timm.create_model("test_resnet"))
    assert cfg.data.image_size == expected["input_size"][-1]
    assert cfg.data.mean == pytest.approx(list(expected["mean"]))
    assert cfg.data.std == pytest.approx(list(expected["std"]))


def test_what_the_config_sets_wins_and_the_rest_still_follows(tmp_path):
    import torchvision

    teacher = _torchvision_weights(tmp_path)
    sized = _distill({"name": "digits", "image_size": 16}, teacher)
    assert sized.data.image_size == 16
    assert sized.data.mean == pytest.approx([sum(torchvision.models.ResNet18_Weights.DEFAULT.transforms().mean) / 3])
    given = _distill({"name": "digits", "mean": [0.3], "std": [0.2]}, teacher)
    assert (given.data.mean, given.data.std) == ([0.3], [0.2]) and given.data.image_size == 224
    again = type(given).model_validate(given.model_dump(mode="json"))  # a logged config states them
    assert (again.data.image_size, again.data.mean, again.data.std) == (224, [0.3], [0.2])


def test_a_pretrained_student_decides_when_the_teacher_carries_nothing(tmp_path):
    student = _torchvision_weights(tmp_path)
    cfg = _distill({"name": "digits"}, {"model": "resnet8"}, student)
    assert cfg.data.image_size == 224
    scratch = _distill({"name": "digits"}, {"model": "torchvision:resnet18"}, {"model": "timm:test_resnet"})
    assert (scratch.data.image_size, scratch.data.mean, scratch.data.std) == (None, None, None)


def test_an_augtune_checkpoint_brings_the_normalisation_it_was_trained_with(tmp_path):
    from augtune.trainables.experiment_config import DataConfig
    from augtune.trainables.data import load_data
    from augtune.trainables.engine import save_checkpoint

    trained_on = load_data(DataConfig(name="digits", image_size=10, samples_per_class=20))
    save_checkpoint(tmp_path / "teacher.pt", build_model("resnet8", 10, 1), "resnet8", trained_on)
    cfg = _distill({"name": "digits", "samples_per_class": 5}, {"model": "resnet8",
                                                                 "checkpoint": str(tmp_path / "teacher.pt")})
    assert cfg.data.image_size == 10
    assert cfg.data.mean == pytest.approx(list(trained_on.mean)) and cfg.data.std == pytest.approx(list(trained_on.std))


def test_the_data_is_normalised_with_the_configured_statistics():
    from augtune.trainables.experiment_config import DataConfig
    from augtune.trainables.data import load_data
    from augtune.trainables.engine import InputPipeline

    own = load_data(DataConfig(name="digits", image_size=8))
    pixels = own.train.images.float() / 255
    assert own.mean == pytest.approx((pixels.mean().item(),)) and own.std == pytest.approx((pixels.std().item(),))
    given = load_data(DataConfig(name="digits", image_size=8, mean=[0.3], std=[0.2]))
    assert (given.mean, given.std) == ((0.3,), (0.2,))
    pipeline = InputPipeline(given, torch.device("cpu"))
    unit = pipeline.to_unit(given.test.images[:4])
    assert torch.allclose(pipeline.normalise(unit), (unit - 0.3) / 0.2)


def test_the_schema_reads_no_file_and_the_loader_reads_each_once(tmp_path, monkeypatch):
    """Validation (what every trial does with its config) opens no checkpoint and no weights; the
    loader every command uses reads them once, and names the field of one that is missing."""
    from augtune.trainables.experiment_config import DistillConfig, FileCheckError, resolve_config

    weights = _torchvision_weights(tmp_path)["weights"]
    raw = {"data": {"name": "digits", "image_size": 32, "mean": [0.5], "std": [0.25]},
           "teacher": {"model": "torchvision:resnet18", "weights": weights},
           "student": {"model": "resnet8", "checkpoint": str(tmp_path / "missing.pt")}}
    reads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: reads.append(a[0]) or real_load(*a, **k))
    for _ in range(3):
        DistillConfig.model_validate(raw)
    assert reads == []
    with pytest.raises(FileCheckError) as missing:
        resolve_config(DistillConfig, raw)
    assert missing.value.field == "student.checkpoint" and "does not exist" in missing.value.message
    assert [str(p) for p in reads] == [weights]  # the teacher's weights, once, before the student's check
