import math

import pytest
import torch

from augtune.trainables.losses.kd import good_da_kd_loss, kl_at_temperature


def _softmax(row, t):
    m = max(row)
    e = [math.exp((v - m) / t) for v in row]
    s = sum(e)
    return [v / s for v in e]


def _reference(student, teacher, labels, s_aug, t_aug, T, a, b):
    """0.1*CE + 0.9*(T^2 KL(x) + T^2 KL(x')), with loops over rows and classes."""
    def ce(rows, ys):
        return sum(-math.log(_softmax(r, 1.0)[y]) for r, y in zip(rows, ys)) / len(rows)

    def kl(s_rows, t_rows):
        total = 0.0
        for s, t in zip(s_rows, t_rows):
            p, q = _softmax(t, T), _softmax(s, T)
            total += sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))
        return T * T * total / len(s_rows)

    return a * ce(student, labels) + b * (kl(student, teacher) + kl(s_aug, t_aug))


@pytest.mark.parametrize("T,a,b", [(4.0, 0.1, 0.9), (2.0, 1.0, 0.5)])
def test_good_da_kd_loss_matches_formula(T, a, b):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(8, 5, generator=g) * 3, torch.randn(8, 5, generator=g) * 3
    s2, t2 = torch.randn(6, 5, generator=g) * 3, torch.randn(6, 5, generator=g) * 3  # picks change x' size
    y = torch.randint(0, 5, (8,), generator=g)
    ours = good_da_kd_loss(s.double(), t.double(), y, s2.double(), t2.double(), temperature=T, ce_weight=a,
                           kd_weight=b).item()
    ref = _reference(s.tolist(), t.tolist(), y.tolist(), s2.tolist(), t2.tolist(), T, a, b)
    assert ours == pytest.approx(ref, abs=1e-6)


def test_kl_is_zero_for_equal_logits_and_positive_otherwise():
    x = torch.randn(4, 7)
    assert kl_at_temperature(x, x, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    assert kl_at_temperature(x, x.flip(1), 4.0).item() > 0


def test_kd_runner_trains_student_against_frozen_teacher(tmp_path):
    from augtune.search.sweep_config import SweepConfig
    from augtune.search.standalone.teacher import train_teacher
    from augtune.trainables.kd import KDRunner

    cfg = SweepConfig.model_validate({
        "output_dir": str(tmp_path), "data": {"name": "digits", "samples_per_class": 20},
        "teacher": {"model": "resnet8", "train": {"epochs": 2, "batch_size": 32}},
        "student": {"model": "resnet8", "train": {"epochs": 2, "batch_size": 32}}})
    path, _ = train_teacher(cfg, progress=False)
    runner = KDRunner(cfg, "cutmix_pick(keep=0.5,pool=2)", str(path))
    before = {k: v.clone() for k, v in runner.teacher.state_dict().items()}
    metrics = runner.run_epoch()
    assert {"train_loss", "test_acc", "test_loss", "images_per_second"} <= set(metrics)
    for k, v in runner.teacher.state_dict().items():
        assert torch.equal(v, before[k]), f"teacher changed: {k}"


def test_trial_values_reach_their_sections():
    from augtune.trainables.tune_trainables import _method_config

    experiment = {"data": {"name": "digits"}, "student": {"model": "resnet8", "train": {"epochs": 3}}}
    cfg = _method_config({"lr": 0.02, "kd.temperature": 2.0, "sla.beta": 0.5, "augmentation": "cutout",
                          "seed": 4}, experiment, "sla")
    assert cfg.student.train.lr == 0.02 and cfg.student.train.epochs == 3
    assert cfg.kd.temperature == 2.0 and cfg.sla.beta == 0.5 and cfg.sla.augmentation == "cutout"
