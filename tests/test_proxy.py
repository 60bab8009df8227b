"""T.stddev against an independent computation over the very probability vectors the teacher
produced, plus the identity property and the interval/early-stop behaviour."""
import math

import numpy as np
import pytest
import torch

from augtune.search.selection.proxy import bootstrap_interval, score_candidates, t_stddev
from augtune.spaces.candidates import parse_candidate
from augtune.trainables.experiment_config import DataConfig
from augtune.trainables.data import load_data
from augtune.trainables.models import build_model


class RecordingTeacher(torch.nn.Module):
    """A real network that keeps every batch it sees and the softmax it produced."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.inputs, self.probs = [], []

    def forward(self, x):
        out = self.net(x)
        self.inputs.append(x.detach().clone())
        self.probs.append(torch.softmax(out.float(), 1).detach().clone())
        return out


@pytest.fixture(scope="module")
def data():
    return load_data(DataConfig(name="digits", samples_per_class=20))


def _per_batch(recorded, batch_size):
    """Pair the recorded forwards back into the proxy's batches: each flush forwards the original
    views (x) of some batches, then the candidate's views (x') of the same batches."""
    batches = []
    for originals, augmented in zip(recorded[0::2], recorded[1::2]):
        for x, x_aug in zip(originals.split(batch_size), augmented.split(batch_size)):
            batches.append(torch.cat([x, x_aug]))
    return batches


def _groups_from(prob_batches, group_batches):
    groups, acc, n, seen = [], None, 0, 0
    for probs in prob_batches:
        for row in probs.double().tolist():
            acc = list(row) if acc is None else [a + b for a, b in zip(acc, row)]
            n += 1
        seen += 1
        if seen == group_batches:
            groups.append([a / n for a in acc])
            acc, n, seen = None, 0, 0
    return groups


def _std_mean(groups):
    k, c = len(groups), len(groups[0])
    total = 0.0
    for j in range(c):
        column = [g[j] for g in groups]
        mu = sum(column) / k
        total += math.sqrt(sum((v - mu) ** 2 for v in column) / (k - 1))
    return total / c


def test_t_stddev_matches_independent_loops(data):
    torch.manual_seed(0)
    teacher = RecordingTeacher(build_model("resnet8", 10, in_channels=1)).eval()
    scores = score_candidates(teacher, [parse_candidate("cutout")], data, torch.device("cpu"), passes=3,
                              group_batches=2, batch_size=16, bootstrap=0, progress=False, forward_batches=3)
    batches = _per_batch(teacher.probs, 16)  # 16 original + 16 augmented per batch
    assert len(batches) == 3 * (200 // 16)
    groups = _groups_from(batches, 2)
    assert scores[0].groups == len(groups) == (3 * (200 // 16)) // 2
    assert scores[0].t_stddev == pytest.approx(_std_mean(groups), abs=1e-6)
    # the teacher saw 3 batches per forward (the last of each pass may hold fewer)
    assert max(len(p) for p in teacher.probs) == 48


def test_identity_augmented_half_equals_original(data):
    teacher = RecordingTeacher(build_model("resnet8", 10, in_channels=1)).eval()
    score_candidates(teacher, [parse_candidate("identity")], data, torch.device("cpu"), passes=1,
                     group_batches=2, batch_size=16, bootstrap=0, progress=False)
    assert len(teacher.inputs) % 2 == 0
    for original, augmented in zip(teacher.inputs[0::2], teacher.inputs[1::2]):
        assert torch.equal(original, augmented)


def test_candidates_share_data_order_and_results_are_reproducible(data):
    torch.manual_seed(0)
    net = build_model("resnet8", 10, in_channels=1).eval()
    cands = [parse_candidate(c) for c in ("identity", "flip", "cutmix")]

    def run(order):
        out = score_candidates(net, order, data, torch.device("cpu"), passes=2, group_batches=2, batch_size=16,
                               bootstrap=50, progress=False)
        return {s.candidate: s for s in out}

    a, again, reordered = run(cands), run(cands), run(cands[::-1])
    assert {k: v.t_stddev for k, v in a.items()} == {k: v.t_stddev for k, v in again.items()}
    # identity draws nothing: its score depends only on the shared data order of each pass
    assert reordered["identity"].t_stddev == a["identity"].t_stddev
    assert sorted(s.rank for s in a.values()) == [1, 2, 3]
    assert all(s.low < s.high for s in a.values())


def test_bootstrap_interval_covers_the_true_value():
    """Simulated group means with a known per-class std: the 90% BCa interval should hold the
    true T.stddev in roughly 90% of repetitions, and always its own point estimate."""
    rng = np.random.default_rng(0)
    true_std = np.array([0.01, 0.02, 0.03, 0.015])
    hits, runs = 0, 200
    for _ in range(runs):
        means = 0.25 + rng.normal(size=(40, 4)) * true_std
        low, high = bootstrap_interval(means, 500, 0.9, seed=int(rng.integers(1 << 30)))
        assert low <= t_stddev(means) <= high
        hits += low <= true_std.mean() <= high
    assert 0.8 <= hits / runs <= 0.97


def test_early_stop_when_ranking_stable(data):
    torch.manual_seed(0)
    net = build_model("resnet8", 10, in_channels=1).eval()
    cands = [parse_candidate(c) for c in ("identity", "mixup")]
    scores = score_candidates(net, cands, data, torch.device("cpu"), passes=10, group_batches=2, batch_size=16,
                              bootstrap=0, stop_when_stable=True, min_passes=2, stable_passes=2, progress=False)
    assert 3 <= scores[0].passes < 10


def test_forward_batching_does_not_change_the_score(data):
    torch.manual_seed(0)
    net = build_model("resnet8", 10, in_channels=1).eval()
    cands = [parse_candidate("cutmix")]
    one = score_candidates(net, cands, data, torch.device("cpu"), passes=2, group_batches=2, batch_size=16,
                           bootstrap=0, progress=False, forward_batches=1)
    many = score_candidates(net, cands, data, torch.device("cpu"), passes=2, group_batches=2, batch_size=16,
                            bootstrap=0, progress=False, forward_batches=5)
    assert many[0].t_stddev == pytest.approx(one[0].t_stddev, rel=1e-5)


def _joint_forward_reference(net, candidates, data, passes, group_batches, batch_size, seed=0):
    """T.stddev as computed before the original view was shared: every candidate on its own,
    one forward of [x; x'] per batch."""
    from augtune.search.selection.proxy import _Stream, stream_seed
    from augtune.spaces.candidates import Context
    from augtune.trainables.data import BatchFeeder
    from augtune.trainables.engine import InputPipeline

    device = torch.device("cpu")
    pipeline = InputPipeline(data, device)
    logits = pipeline.scorer(net, True)
    feeder = BatchFeeder(data.train, batch_size, device, drop_last=True, seed=seed)
    base = torch.Generator(device=device)
    out = {}
    for i, candidate in enumerate(candidates):
        stream = _Stream(candidate, torch.Generator(device=device).manual_seed(stream_seed(seed, candidate.id)))
        context = Context(stream.generator, {"teacher": logits}, pipeline.padding)
        for pass_index in range(passes):
            feeder.generator.manual_seed(seed * 7919 + pass_index)
            base.manual_seed(seed * 7919 + pass_index)
            with torch.no_grad():
                for images, _ in feeder:
                    x = pipeline.base_augment(pipeline.to_unit(images), base)
                    both = torch.cat([x, candidate.apply(x, context)])
                    stream.add(torch.softmax(logits(both), 1), group_batches)
        out[candidate.id] = t_stddev(np.asarray(stream.group_means))
    return out


def test_shared_original_view_equals_the_joint_forward(data):
    torch.manual_seed(0)
    net = build_model("resnet8", 10, in_channels=1).eval()
    cands = [parse_candidate(c) for c in ("identity", "flip", "cutout", "mixup", "cutmix",
                                          "cutmix_pick(keep=0.5,pool=2)")]
    scores = score_candidates(net, cands, data, torch.device("cpu"), passes=2, group_batches=2, batch_size=16,
                              bootstrap=0, progress=False)
    reference = _joint_forward_reference(net, cands, data, passes=2, group_batches=2, batch_size=16)
    assert {s.candidate: s.t_stddev for s in scores} == pytest.approx(reference, rel=1e-6)


def _pass_labels(data, batch_size, passes, seed=0):
    """The labels of the proxy's batches, from a feeder of its own in the same data order."""
    from augtune.trainables.data import BatchFeeder

    feeder = BatchFeeder(data.train, batch_size, torch.device("cpu"), drop_last=True, seed=seed)
    labels = []
    for pass_index in range(passes):
        feeder.generator.manual_seed(seed * 7919 + pass_index)
        labels += [y for _, y in feeder]
    return labels


def test_zoo_equals_independent_loops_over_the_same_softmax(data):
    """Entropy / KL / agreement / accuracy from the very softmax vectors the teacher produced,
    recomputed image by image in plain Python."""
    torch.manual_seed(0)
    teacher = RecordingTeacher(build_model("resnet8", 10, in_channels=1)).eval()
    scores = score_candidates(teacher, [parse_candidate("cutmix")], data, torch.device("cpu"), passes=2,
                              group_batches=2, batch_size=16, bootstrap=0, progress=False, forward_batches=3)
    labels = _pass_labels(data, 16, passes=2)
    batches = _per_batch(teacher.probs, 16)
    assert len(batches) == len(labels)
    sums = {"entropy": 0.0, "kl": 0.0, "agreement": 0.0, "accuracy": 0.0}
    count = 0
    for both, y in zip(batches, labels):
        p_rows, q_rows = both[:16].double().tolist(), both[16:].double().tolist()
        for p, q, label in zip(p_rows, q_rows, y.tolist()):
            sums["entropy"] += -sum(v * math.log(max(v, 1e-12)) for v in q) / math.log(10)
            sums["kl"] += sum(a * (math.log(max(a, 1e-12)) - math.log(max(b, 1e-12))) for a, b in zip(p, q))
            sums["agreement"] += float(p.index(max(p)) == q.index(max(q)))
            sums["accuracy"] += float(q.index(max(q)) == label)
            count += 1
    expected = {k: v / count for k, v in sums.items()}
    assert scores[0].zoo == pytest.approx(expected, rel=1e-6, abs=1e-9)
    assert 0 < expected["agreement"] < 1 and expected["kl"] > 0  # cutmix moves the teacher


def test_zoo_adds_no_teacher_forward(data):
    """Counted: one forward of the original views per flush for all candidates, one per
    candidate for its x' — exactly what T.stddev alone needs."""
    teacher = RecordingTeacher(build_model("resnet8", 10, in_channels=1)).eval()
    cands = [parse_candidate(c) for c in ("identity", "cutout", "mixup")]
    scores = score_candidates(teacher, cands, data, torch.device("cpu"), passes=2, group_batches=2,
                              batch_size=16, bootstrap=0, progress=False, forward_batches=4)
    flushes_per_pass = math.ceil((200 // 16) / 4)
    assert len(teacher.probs) == 2 * flushes_per_pass * (1 + len(cands))
    assert all(set(s.zoo) == {"entropy", "kl", "agreement", "accuracy"} for s in scores)
    identity = next(s for s in scores if s.candidate == "identity")
    assert identity.zoo["agreement"] == 1.0 and identity.zoo["kl"] == pytest.approx(0.0, abs=1e-9)


def test_rank_by_a_zoo_score_follows_its_direction():
    from augtune.search.selection.proxy import ProxyScore, rank_scores

    def score(name, t, entropy):
        return ProxyScore(name, t, math.nan, math.nan, 0, 0, 0.0, zoo={"entropy": entropy})

    scores = [score("a", 0.1, 0.2), score("b", 0.3, 0.9), score("c", math.nan, 0.5)]
    assert [s.candidate for s in rank_scores(scores, "t_stddev")] == ["a", "b", "c"]  # lower first, NaN last
    ranked = rank_scores(scores, "entropy")  # higher first
    assert [s.candidate for s in ranked] == ["b", "c", "a"] and [s.rank for s in ranked] == [1, 2, 3]
