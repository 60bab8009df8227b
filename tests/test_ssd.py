"""SSD: LWS touches only the scales, masked negatives contribute nothing, shot groups by hand,
the MoCo momentum rule, and the stage chain with its checkpoints."""
import copy
import json
import math

import pytest
import torch

from augtune.trainables.experiment_config import DistillConfig
from augtune.trainables.losses.moco import masked_contrastive_loss
from augtune.trainables.metrics import shot_accuracy, shot_groups


def _cfg(tmp_path=None, **ssd):
    return DistillConfig.model_validate({
        "output_dir": str(tmp_path or "runs"),
        "data": {"name": "digits", "samples_per_class": 30, "imbalance_factor": 10,
                 "many_shot_threshold": 15, "few_shot_threshold": 6},
        "teacher": {"model": "resnet8", "train": {"epochs": 1, "batch_size": 32}},
        "student": {"model": "resnet8", "train": {"epochs": 1, "batch_size": 32}},
        "ssd": {"lws": {"epochs": 1, "batch_size": 32, "lr": 0.2, "sampler": "class_balanced"}, **ssd}})


def test_masked_negative_contributes_nothing():
    torch.manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    k = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    queue = torch.nn.functional.normalize(torch.randn(6, 8), dim=1).requires_grad_(True)
    queue_labels = torch.tensor([0, 1, 2, 3, 1, 5])
    labels = torch.tensor([1, 2, 3, 4])
    loss = masked_contrastive_loss(q, k, queue, queue_labels, labels, 0.2)
    loss.backward()
    # entry 1 and 4 carry label 1 = query 0's label: no gradient from query 0 ...
    changed = queue.detach().clone()
    changed[1] = torch.nn.functional.normalize(torch.randn(8), dim=0)
    only_q0 = masked_contrastive_loss(q[:1], k[:1], changed, queue_labels, labels[:1], 0.2)
    same_q0 = masked_contrastive_loss(q[:1], k[:1], queue.detach(), queue_labels, labels[:1], 0.2)
    assert only_q0.item() == pytest.approx(same_q0.item(), abs=1e-7)
    # ... and against the unmasked formula the masked entries are simply absent
    pos = (q[0] * k[0]).sum() / 0.2
    negs = [(q[0] * queue[j]).sum() / 0.2 for j in range(6) if queue_labels[j] != labels[0]]
    expected = -pos + torch.logsumexp(torch.stack([pos, *negs]), 0)
    assert same_q0.item() == pytest.approx(expected.item(), abs=1e-5)


def test_shot_groups_and_accuracy_match_hand_count():
    counts = [50, 30, 12, 8, 3]  # many > 20, few < 10
    assert shot_groups(counts, 20, 10) == {"many": [0, 1], "medium": [2], "few": [3, 4]}
    labels = torch.tensor([0, 0, 1, 2, 2, 3, 4, 4])
    predicted = torch.tensor([0, 1, 1, 2, 0, 3, 0, 4])  # right: 0, 2, 3, 5, 7
    logits = torch.nn.functional.one_hot(predicted, 5).float()
    acc = shot_accuracy(logits, labels, counts, 20, 10)
    assert acc["acc"] == pytest.approx(5 / 8)
    assert acc["many_acc"] == pytest.approx(2 / 3)   # images 0,1,2: right 0 and 2
    assert acc["medium_acc"] == pytest.approx(1 / 2)  # images 3,4
    assert acc["few_acc"] == pytest.approx(2 / 3)    # images 5,6,7: right 5 and 7
    assert math.isnan(shot_accuracy(logits[:2], labels[:2], counts, 20, 10)["few_acc"])


def test_stage_two_changes_only_the_scales():
    from augtune.trainables.ssd import LWSRunner, SSLStageRunner

    cfg = _cfg()
    stage1 = SSLStageRunner(cfg)
    stage1.run_epoch()
    before = copy.deepcopy(stage1.model.state_dict())
    lws = LWSRunner(cfg, stage1.model, "main", "stage2", stage1.data)
    lws.run_epoch()
    after = lws.network.state_dict()
    assert before.keys() == after.keys()
    for key in before:  # weights, classifier, BatchNorm running statistics and counters
        assert torch.equal(before[key], after[key]), key
    assert not torch.equal(lws.scaled.scales.detach(), torch.ones_like(lws.scaled.scales))
    folded = lws.folded_network()
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(folded(x), lws.scaled(lws.network.features(x)), atol=1e-5)


def test_moco_key_encoder_follows_momentum_rule():
    from augtune.trainables.ssd import _MoCoBranch
    from augtune.trainables.models import build_model

    model = build_model("resnet8", 10, 1)
    branch = _MoCoBranch(model, 16, 32, momentum=0.9)
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(1.0)
    old = [p.clone() for p in branch.key_backbone.parameters()]
    branch.update_key_encoder(model)
    for key, prev, query in zip(branch.key_backbone.parameters(), old, model.backbone.parameters()):
        assert torch.allclose(key, 0.9 * prev + 0.1 * query)
    keys = torch.nn.functional.normalize(torch.randn(40, 16), dim=1)
    branch.enqueue(keys, torch.arange(40))
    assert torch.equal(branch.queue[:8], keys[32:].to(branch.queue.dtype)) and int(branch.pointer) == 8


def test_chain_runs_all_stages_saves_outputs_and_resumes(tmp_path):
    from augtune.trainables.ssd import SSDChainRunner

    cfg = _cfg(tmp_path, start_stage=1, stage4=True, augmentation="cutmix")
    chain = SSDChainRunner(cfg, work_dir=tmp_path)
    seen = []
    while not chain.finished:
        metrics = chain.run_epoch()
        seen.append(metrics["stage"])
        if metrics["stage"] == 3:
            for head in ("hard", "soft"):
                for group in ("many", "medium", "few"):
                    assert f"test_stage3_{head}_{group}_acc" in metrics
            state = copy.deepcopy(chain.state_dict())
    assert seen == [1, 2, 3, 4]
    assert {p.name for p in tmp_path.glob("ssd_stage*.pt")} == {"ssd_stage1.pt", "ssd_stage2.pt", "ssd_stage3.pt"}
    resumed = SSDChainRunner(cfg, work_dir=tmp_path / "again")
    resumed.load_state_dict(state)
    assert resumed.stage == 4
    final = resumed.run_epoch()
    assert final["stage"] == 4 and "test_stage1_classifier_acc" in final and "test_stage3_soft_few_acc" in final


def test_chain_resumed_after_any_epoch_ends_exactly_as_the_uninterrupted_run(tmp_path):
    """A restore into every stage: mid stage I, the start of II (LWS on the saved network),
    III (the saved teacher) and IV; each resumed chain finishes with the same numbers."""
    from augtune.trainables.ssd import SSDChainRunner

    cfg = _cfg(tmp_path, start_stage=1, stage4=True, augmentation="cutmix")
    cfg.teacher.train.epochs = 2  # a restore in the middle of stage I too
    chain = SSDChainRunner(cfg, work_dir=tmp_path / "first")
    states = []
    while not chain.finished:
        last = chain.run_epoch()
        states.append((chain.stage, copy.deepcopy(chain.state_dict())))
    assert [stage for stage, _ in states] == [1, 2, 3, 4, 4]  # after each epoch, the stage that runs next
    # the chain's curves count its own epochs across the stages (a stage counts from 1)
    assert [row["epoch"] for row in chain.values.curves] == [1, 2, 3, 4, 5]
    expected = {k: v for k, v in last.items() if k.startswith(("test_", "val_", "train_"))}
    for index, (stage, state) in enumerate(states[:-1]):
        resumed = SSDChainRunner(cfg, work_dir=tmp_path / f"resume{index}")
        resumed.load_state_dict(state)
        assert resumed.stage == stage
        # the epochs before the restore come with the state (a resumed trial logs from them what it lacks)
        assert json.dumps(resumed.values.curves) == json.dumps(chain.values.curves[:index + 1])
        while not resumed.finished:
            final = resumed.run_epoch()
        got = {k: v for k, v in final.items() if k in expected}
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            assert got[key] == value or (math.isnan(got[key]) and math.isnan(value)), (index, key)
