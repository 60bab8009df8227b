import pytest
import torch

from augtune.trainables.models import MODEL_REGISTRY, NATIVE_INPUT_SIZE, build_model

HE_ET_AL_PARAMS = {"resnet20": 0.27e6, "resnet32": 0.46e6, "resnet44": 0.66e6, "resnet56": 0.85e6,
                   "resnet110": 1.7e6}


@pytest.mark.parametrize("name,expected", HE_ET_AL_PARAMS.items())
def test_cifar_resnet_parameter_counts(name, expected):
    model = build_model(name, 10)
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - expected) / expected < 0.03, count


@pytest.mark.parametrize("name", sorted(MODEL_REGISTRY))
def test_every_model_runs_at_its_input_size(name):
    side = NATIVE_INPUT_SIZE[name]
    model = build_model(name, 7).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, side, side))
        feats = model.features(torch.randn(2, 3, side, side))
    assert out.shape == (2, 7)
    assert feats.shape == (2, model.feature_dim)


def test_heads_share_the_feature():
    model = build_model("resnet8", 10, in_channels=1).eval()
    model.add_head("joint", 40)
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        feats = model.features(x)
        assert torch.allclose(model(x, head="joint"), model.heads["joint"](feats))
        assert model(x).shape == (3, 10)
