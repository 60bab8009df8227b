"""The CUDA paths: device-resident data, per-sample ops with device generators, bf16 autocast,
channels_last, the proxy and one epoch of each method on the GPU. Skipped without CUDA; run on a
GPU machine with `pytest -m gpu`."""
import numpy as np
import pytest
import torch

from fixtures import assert_accuracy_of

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

CUDA = torch.device("cuda")
DIGITS = {"name": "digits", "samples_per_class": 20, "val_per_class": 5, "image_size": 16}


def _teacher(tmp_path):
    from augtune.trainables.data import load_data
    from augtune.trainables.experiment_config import DataConfig
    from augtune.trainables.engine import save_checkpoint
    from augtune.trainables.models import build_model

    data = load_data(DataConfig(**DIGITS))
    torch.manual_seed(0)
    return str(save_checkpoint(tmp_path / "teacher.pt", build_model("resnet8", 10, 1), "resnet8", data)), data


@pytest.mark.parametrize("name", ["crop_flip", "cutout", "autoaugment", "randaugment", "trivialaugment", "mixup",
                                  "cutmix"])
def test_ops_on_device_are_per_sample_and_seeded(name):
    from augtune.spaces.candidates import Context, parse_candidate

    x = torch.rand(64, 3, 32, 32, device=CUDA)
    def run(seed):
        return parse_candidate(name).apply(x, Context(torch.Generator(device=CUDA).manual_seed(seed), {}, 4))
    a, b = run(0), run(0)
    assert a.device.type == "cuda" and a.shape == x.shape and torch.equal(a, b)
    changed = (a - x).flatten(1).abs().sum(1) > 0
    assert 0 < changed.sum() and not torch.equal(a, run(1))


def test_kd_epoch_bf16_channels_last(tmp_path):
    from augtune.trainables.experiment_config import DistillConfig
    from augtune.trainables.kd import KDRunner

    teacher, data = _teacher(tmp_path)
    cfg = DistillConfig.model_validate({"device": "cuda", "data": DIGITS, "output_dir": str(tmp_path),
                                        "student": {"model": "resnet8", "train": {"epochs": 1, "batch_size": 32}}})
    runner = KDRunner(cfg, "cutmix_pick(keep=0.5,pool=2)", teacher, data=data)
    assert next(runner.model.parameters()).device.type == "cuda" and runner.pipeline.channels_last
    metrics = runner.run_epoch()
    assert np.isfinite(metrics["train_loss"])
    assert_accuracy_of(metrics["val_acc"], len(runner.data.val))


def test_sla_and_ssd_epochs_on_cuda(tmp_path):
    from augtune.trainables.experiment_config import DistillConfig
    from augtune.trainables.sla import SLARunner
    from augtune.trainables.ssd import SSDChainRunner

    cfg = DistillConfig.model_validate({"device": "cuda", "data": DIGITS, "output_dir": str(tmp_path),
                                        "student": {"model": "resnet8", "train": {"epochs": 1, "batch_size": 32}},
                                        "teacher": {"model": "resnet8", "train": {"epochs": 1, "batch_size": 32}},
                                        "ssd": {"start_stage": 1, "lws": {"epochs": 1, "batch_size": 32}}})
    assert np.isfinite(SLARunner(cfg).run_epoch()["train_loss"])
    chain = SSDChainRunner(cfg, work_dir=tmp_path / "ssd")
    while not chain.finished:
        metrics = chain.run_epoch()
    assert_accuracy_of(metrics["test_acc"], 450)  # the digits test split


def test_proxy_on_cuda_equals_its_joint_forward_reference(tmp_path):
    from augtune.search.selection.proxy import score_candidates
    from augtune.spaces.candidates import parse_candidate
    from augtune.trainables.models import build_model

    _, data = _teacher(tmp_path)
    torch.manual_seed(0)
    net = build_model("resnet8", 10, in_channels=1).to(CUDA).eval()
    cands = [parse_candidate(c) for c in ("identity", "cutmix", "cutmix_pick(keep=0.5,pool=2)")]
    scores = score_candidates(net, cands, data, CUDA, passes=2, group_batches=2, batch_size=16, bootstrap=50,
                              progress=False)
    assert all(np.isfinite(s.t_stddev) and s.low <= s.t_stddev <= s.high for s in scores)
    again = score_candidates(net, cands, data, CUDA, passes=2, group_batches=2, batch_size=16, bootstrap=50,
                             progress=False)
    assert [s.t_stddev for s in scores] == pytest.approx([s.t_stddev for s in again], rel=1e-3)
