"""SLA: joint labels, aggregation against loops, colour orders, the detached SD target."""
import pytest
import torch

from augtune.spaces import label_transforms
from augtune.trainables.losses.sla import (aggregate_logits, joint_labels, self_distillation_loss, single_logits,
                                           sla_loss)


def test_joint_labels_are_y_times_m_plus_j():
    y = torch.tensor([3, 0, 9])
    m = 4
    labels = joint_labels(y, m)
    for j in range(m):
        for b in range(3):
            assert labels[j * 3 + b].item() == y[b].item() * m + j


@pytest.mark.parametrize("m", [4, 6, 24])
def test_aggregation_matches_loops(m):
    g = torch.Generator().manual_seed(m)
    b, c = 5, 7
    joint = torch.randn(m * b, c * m, generator=g, dtype=torch.float64)
    ours = aggregate_logits(joint, m)
    for s in range(b):
        for i in range(c):
            expected = sum(joint[j * b + s, i * m + j].item() for j in range(m)) / m
            assert ours[s, i].item() == pytest.approx(expected, abs=1e-6)
    si = single_logits(joint[:b], m)
    assert torch.equal(si, torch.stack([joint[:b, i * m] for i in range(c)], 1))


def test_colour_orders_are_the_documented_ones():
    x = torch.stack([torch.full((2, 2), float(v)) for v in (0, 1, 2)]).unsqueeze(0)  # R=0, G=1, B=2
    copies = label_transforms.expand(x, "colour")
    orders = [tuple(int(copies[k, ch, 0, 0]) for ch in range(3)) for k in range(6)]
    names = ["".join("RGB"[c] for c in o) for o in orders]
    assert names == ["RGB", "RBG", "GRB", "GBR", "BRG", "BGR"]


def test_rotation_and_composite_sets():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float).view(2, 3, 4, 4)
    rot = label_transforms.expand(x, "rotation")
    assert rot.shape[0] == 8 and torch.equal(rot[:2], x)
    assert torch.equal(rot[2:4], torch.rot90(x, 1, dims=(2, 3)))
    both = label_transforms.expand(x, "rotation_colour")
    assert both.shape[0] == 48 and torch.equal(both[:2], x)
    with pytest.raises(ValueError, match="3-channel"):
        label_transforms.expand(torch.zeros(1, 1, 4, 4), "colour")


def test_sla_loss_is_mean_ce_and_large_loss_scales_by_m():
    g = torch.Generator().manual_seed(1)
    joint = torch.randn(4 * 3, 5 * 4, generator=g)
    y = torch.tensor([1, 4, 2])
    labels = joint_labels(y, 4)
    manual = sum(-torch.log_softmax(joint[r], 0)[labels[r]] for r in range(12)) / 12
    assert sla_loss(joint, y, 4).item() == pytest.approx(manual.item(), abs=1e-6)
    assert sla_loss(joint, y, 4, large_loss=True).item() == pytest.approx(4 * manual.item(), abs=1e-5)


def test_sd_target_is_detached():
    joint = torch.randn(4 * 3, 5 * 4, requires_grad=True)
    single = torch.randn(3, 5, requires_grad=True)
    loss = self_distillation_loss(single, aggregate_logits(joint, 4), torch.tensor([0, 1, 2]), 2.0, 1.0)
    loss.backward()
    assert joint.grad is None, "the SD term must not reach the joint head"
    assert single.grad is not None and single.grad.abs().sum() > 0


def test_sla_runner_epoch_reports_all_heads():
    from augtune.trainables.experiment_config import DistillConfig
    from augtune.trainables.sla import SLARunner

    cfg = DistillConfig.model_validate({"data": {"name": "digits", "samples_per_class": 10},
                                        "student": {"model": "resnet8", "train": {"epochs": 1, "batch_size": 25}},
                                        "sla": {"transforms": "rotation", "augmentation": "cutout"}})
    runner = SLARunner(cfg)
    assert runner.model.heads["joint"].out_features == 40
    metrics = runner.run_epoch()
    for key in ("test_si_acc", "test_agg_acc", "test_sd_acc", "test_single_acc", "test_agg_loss"):
        assert 0 <= metrics[key] < 10
    assert metrics["test_acc"] == metrics["test_sd_acc"]


def test_sla_rejects_mixing_base_and_colour_on_greyscale():
    from pydantic import ValidationError

    from augtune.trainables.experiment_config import DistillConfig
    from augtune.trainables.sla import SLARunner

    with pytest.raises(ValidationError, match="greyscale"):
        DistillConfig.model_validate({"data": {"name": "digits"}, "sla": {"transforms": "colour"}})
    cfg = DistillConfig.model_validate({"data": {"name": "digits", "samples_per_class": 5},
                                        "sla": {"augmentation": "cutmix"}})
    with pytest.raises(ValueError, match="one label per image"):
        SLARunner(cfg)
