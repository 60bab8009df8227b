"""The branches that run only on accelerators by default (bf16 autocast, channels_last, the fp32
islands inside autocast, bf16 teacher scoring), run here on the CPU: the CPU is added to
`ACCELERATED_DEVICE_TYPES` for these tests, so the first GPU user does not meet a line that never
ran. What still runs only on CUDA is listed in the README (fractional GPU resources, pinned
memory, CUDA synchronisation in the proxy's timing)."""
import numpy as np
import pytest
import torch

from augtune.trainables import engine

DIGITS = {"name": "digits", "samples_per_class": 20, "val_per_class": 5, "image_size": 16}
CPU = torch.device("cpu")


@pytest.fixture
def cpu_as_accelerator(monkeypatch):
    monkeypatch.setattr(engine, "ACCELERATED_DEVICE_TYPES", {"cuda", "cpu"})


@pytest.fixture(scope="module")
def teacher_and_data(tmp_path_factory):
    from augtune.trainables.experiment_config import DataConfig
    from augtune.trainables.data import load_data
    from augtune.trainables.models import build_model

    data = load_data(DataConfig(**DIGITS))
    torch.manual_seed(0)
    path = engine.save_checkpoint(tmp_path_factory.mktemp("t") / "teacher.pt", build_model("resnet8", 10, 1),
                                  "resnet8", data)
    return str(path), data


def _cfg(tmp_path, **extra):
    from augtune.trainables.experiment_config import DistillConfig

    return DistillConfig.model_validate({
        "device": "cpu", "data": DIGITS, "output_dir": str(tmp_path),
        "student": {"model": "resnet8", "train": {"epochs": 1, "batch_size": 32}},
        "teacher": {"model": "resnet8", "train": {"epochs": 1, "batch_size": 32}}, **extra})


def test_autocast_and_channels_last_are_on_for_an_accelerated_device(cpu_as_accelerator):
    with engine.autocast(CPU, True):
        a = torch.rand(4, 8)
        assert (a @ a.T).dtype == torch.bfloat16
        with engine.full_precision(CPU):
            assert (a @ a.T).dtype == torch.float32  # the fp32 island inside autocast
    with engine.autocast(CPU, False):
        assert (a @ a.T).dtype == torch.float32


def test_kd_epoch_bf16_channels_last(tmp_path, cpu_as_accelerator, teacher_and_data):
    from augtune.trainables.kd import KDRunner

    teacher, data = teacher_and_data
    runner = KDRunner(_cfg(tmp_path), "cutmix_pick(keep=0.5,pool=2)", teacher, data=data)
    assert runner.pipeline.channels_last
    conv = next(m for m in runner.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    seen = []
    original = runner.model.forward

    def spy(x, *args, **kwargs):
        seen.append((torch.is_autocast_enabled("cpu"), x.is_contiguous(memory_format=torch.channels_last)))
        return original(x, *args, **kwargs)

    runner.model.forward = spy
    metrics = runner.run_epoch()
    assert np.isfinite(metrics["train_loss"]) and np.isfinite(metrics["val_loss"])
    assert seen and all(autocast and channels_last for autocast, channels_last in seen)


def test_sla_and_ssd_epochs_bf16_channels_last(tmp_path, cpu_as_accelerator, teacher_and_data):
    from augtune.trainables.sla import SLARunner
    from augtune.trainables.ssd import SSDChainRunner

    _, data = teacher_and_data
    cfg = _cfg(tmp_path, ssd={"start_stage": 1, "lws": {"epochs": 1, "batch_size": 32}})
    assert np.isfinite(SLARunner(cfg, data=data).run_epoch()["train_loss"])
    chain = SSDChainRunner(cfg, work_dir=tmp_path / "ssd")
    losses = []
    while not chain.finished:
        losses.append(chain.run_epoch()["train_loss"])
    assert len(losses) >= 3 and np.isfinite(losses).all()  # one epoch per stage; LWS in fp32 inside autocast


def test_bf16_proxy_scoring_stays_close_to_fp32(cpu_as_accelerator, teacher_and_data):
    from augtune.search.selection.proxy import score_candidates
    from augtune.spaces.candidates import parse_candidate
    from augtune.trainables.models import build_model

    _, data = teacher_and_data
    torch.manual_seed(0)
    net = build_model("resnet8", 10, in_channels=1).eval().to(memory_format=torch.channels_last)
    cands = [parse_candidate(c) for c in ("identity", "cutmix", "cutmix_pick(keep=0.5,pool=2)")]
    kwargs = dict(passes=2, group_batches=2, batch_size=16, bootstrap=0, progress=False)
    bf16 = {s.candidate: s.t_stddev for s in score_candidates(net, cands, data, CPU, bf16=True, **kwargs)}
    fp32 = {s.candidate: s.t_stddev for s in score_candidates(net, cands, data, CPU, bf16=False, **kwargs)}
    assert all(np.isfinite(v) for v in bf16.values())
    assert bf16 != fp32  # the bf16 branch really ran
    assert bf16 == pytest.approx(fp32, rel=0.1)
