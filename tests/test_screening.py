"""Screening many policies: x forwarded once per batch for all of them (counted), a policy's
T.stddev the same scored alone or among others, racing that keeps the full screen's winner."""
import numpy as np
import pytest
import torch

from augtune.search.selection.proxy import ForwardCounts, jackknife_interval, score_candidates, t_stddev
from augtune.spaces.candidates import parse_candidate
from augtune.spaces.policies import DEFAULT_POLICY_SPACE
from augtune.trainables.experiment_config import DataConfig
from augtune.trainables.data import load_data
from augtune.trainables.models import build_model

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data():
    return load_data(DataConfig(name="digits", samples_per_class=20))


@pytest.fixture(scope="module")
def teacher(data):
    """A resnet8 trained a few epochs on the fixture's data: real, if weak, predictions."""
    from augtune.trainables.engine import InputPipeline
    from augtune.trainables.data import BatchFeeder

    torch.manual_seed(0)
    net = build_model("resnet8", 10, in_channels=1)
    pipeline = InputPipeline(data, CPU)
    optimiser = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    feeder = BatchFeeder(data.train, 32, CPU, seed=0)
    for _ in range(6):
        for images, labels in feeder:
            loss = torch.nn.functional.cross_entropy(net(pipeline.normalise(pipeline.to_unit(images))), labels)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return net.eval()


def test_screening_forwards_x_once_per_batch_for_every_policy(data, teacher):
    policies = DEFAULT_POLICY_SPACE.sample(12, seed=4)
    counts = ForwardCounts()
    score_candidates(teacher, policies, data, CPU, passes=2, group_batches=2, batch_size=16, bootstrap=0,
                     progress=False, forward_batches=3, policies_per_forward=4, counts=counts)
    assert counts.batches == 2 * (200 // 16)
    assert counts.images_on_x == counts.batches * 16  # each batch's x once, not once per policy
    assert counts.forwards_on_x == 2 * -(-(200 // 16) // 3)  # one per flush of 3 batches
    # x' of 4 policies per forward: 3 forwards per flush for 12 policies
    assert counts.forwards_on_augmented == 3 * counts.forwards_on_x
    assert counts.images_on_augmented >= 12 * counts.images_on_x * 0.99  # picks keep their share of a pool


def test_a_policys_score_does_not_depend_on_its_company(data, teacher):
    policies = DEFAULT_POLICY_SPACE.sample(6, seed=9)
    together = {s.candidate: s for s in score_candidates(
        teacher, policies, data, CPU, passes=2, group_batches=2, batch_size=16, bootstrap=0, progress=False,
        policies_per_forward=3)}
    for policy in policies[::2]:
        alone = score_candidates(teacher, [policy], data, CPU, passes=2, group_batches=2, batch_size=16,
                                 bootstrap=0, progress=False)[0]
        assert together[policy.id].t_stddev == pytest.approx(alone.t_stddev, rel=1e-6)
        assert together[policy.id].zoo["kl"] == pytest.approx(alone.zoo["kl"], rel=1e-6, abs=1e-9)


def test_jackknife_interval_matches_the_formula():
    rng = np.random.default_rng(0)
    means = rng.dirichlet(np.ones(5), size=6)
    low, high = jackknife_interval(means, 2.0)
    loo = np.array([t_stddev(np.delete(means, i, axis=0)) for i in range(6)])
    se = np.sqrt(5 / 6 * ((loo - loo.mean()) ** 2).sum())
    assert (low, high) == pytest.approx((t_stddev(means) - 2 * se, t_stddev(means) + 2 * se))


def test_racing_keeps_the_full_screens_winner_and_saves_teacher_work(data, teacher):
    # a few mild policies near the top and many that wreck the image: racing has work to do
    mild = ["identity", "flip", "crop_flip", "cutout(size=2)", "subpolicy(op1=Rotate,p1=0.2,m1=2,op2=ShearX,p2=0.2,m2=2)"]
    harsh = [f"subpolicy(op1=Invert,p1=0.8,m1=0,op2={op},p2=0.8,m2=8)" for op in
             ("Solarize", "Posterize", "Rotate", "ShearY", "TranslateX", "Equalize")] + \
            ["randaugment(num_ops=3,magnitude=15)", "mixup(alpha=0.2)", "cutout(size=8)+cutmix(alpha=1.0)"]
    policies = [parse_candidate(p) for p in mild + harsh]
    kwargs = dict(passes=6, group_batches=2, batch_size=16, bootstrap=0, progress=False, policies_per_forward=4)
    full_counts, raced_counts = ForwardCounts(), ForwardCounts()
    full = score_candidates(teacher, policies, data, CPU, counts=full_counts, **kwargs)
    raced = score_candidates(teacher, policies, data, CPU, counts=raced_counts, race_top_k=3, race_min_passes=2,
                             **kwargs)
    dropped = [s.candidate for s in raced if s.raced_out]
    assert dropped, "the fixture must make racing drop something"
    assert full[0].candidate not in dropped
    assert raced[0].candidate == full[0].candidate  # the winner ran every pass: the same score
    assert raced[0].t_stddev == pytest.approx(full[0].t_stddev, rel=1e-9) and raced[0].passes == 6
    assert all(s.passes < 6 for s in raced if s.raced_out)
    assert raced_counts.images_on_augmented < full_counts.images_on_augmented
    assert raced_counts.images_on_x == full_counts.images_on_x
