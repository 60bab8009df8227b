"""Data-parallel trials (`search.resources.workers_per_trial`, trainables/distributed.py), on
two gloo processes on this CPU: they take the steps one process takes on the whole batch, stay
identical to each other, and each draws its own augmentations, the same on every rerun. A sweep of
2-worker trials under ASHA, killed and resumed: tests/test_kill_resume.py."""
import torch
import torch.multiprocessing as mp

from augtune.trainables.experiment_config import DistillConfig
from augtune.trainables.data import load_data
from augtune.trainables.engine import save_checkpoint
from augtune.trainables.kd import KDRunner
from augtune.trainables.models import build_model

EPOCHS = 2


def _experiment(tmp_path, **train) -> dict:
    """A BatchNorm-free student (BatchNorm would normalise each rank's slice by its own statistics)."""
    return {"output_dir": str(tmp_path), "seed": 0,
            "data": {"name": "digits", "samples_per_class": 16, "val_per_class": 4, "image_size": 12},
            "teacher": {"model": "resnet8"},
            "student": {"model": "user_networks:small_cnn", "model_args": {"width": 4, "batchnorm": False},
                        "train": {"epochs": EPOCHS, "batch_size": 32, **train}},
            "kd": {"augmentation": "identity"}}


def _teacher(tmp_path, experiment) -> str:
    data = load_data(DistillConfig.model_validate(experiment).data)
    torch.manual_seed(0)
    return str(save_checkpoint(tmp_path / "teacher.pt", build_model("resnet8", data.num_classes, data.channels),
                               "resnet8", data))


def _two_ranks(tmp_path, experiment, teacher, tag: str) -> list[dict]:
    from parallel_worker import run_rank

    init = tmp_path / f"init-{tag}"
    outs = [str(tmp_path / f"{tag}-rank{r}.pt") for r in range(2)]
    mp.start_processes(_spawned, args=(run_rank, 2, str(init), experiment, teacher, EPOCHS, outs), nprocs=2,
                       start_method="spawn")
    return [torch.load(out, weights_only=False) for out in outs]


def _spawned(rank, run_rank, world, init, experiment, teacher, epochs, outs):
    run_rank(rank, world, init, experiment, teacher, epochs, outs[rank])


def test_two_workers_take_the_single_process_steps(tmp_path):
    experiment = _experiment(tmp_path, crop_padding=0, flip=False)  # the same global batches, no draws
    teacher = _teacher(tmp_path, experiment)
    ranks = _two_ranks(tmp_path, experiment, teacher, "fixed")
    torch.manual_seed(0)
    single = KDRunner(DistillConfig.model_validate(experiment), None, teacher)
    initial = {name: value.clone() for name, value in single.model.state_dict().items()}
    single_metrics = [single.run_epoch() for _ in range(EPOCHS)]
    for name, value in single.model.state_dict().items():
        assert torch.equal(ranks[0]["model"][name], ranks[1]["model"][name]), name  # the ranks stay in step
        # the same steps up to the order of float sums (a mean over two half-batch means)
        assert torch.allclose(ranks[0]["model"][name], value, rtol=1e-4, atol=1e-6), name
    moved = [name for name, value in initial.items() if not torch.allclose(value, ranks[0]["model"][name])]
    assert len(moved) == len(initial)  # every parameter trained: the agreement is not the initial weights'
    for key in ("train_loss", "val_loss", "test_loss"):  # the global batch's mean, not one slice's
        assert abs(ranks[0]["metrics"][-1][key] - single_metrics[-1][key]) < 1e-4, key
        assert ranks[0]["metrics"][-1][key] == ranks[1]["metrics"][-1][key], key


def test_each_rank_draws_its_own_augmentations_the_same_on_a_rerun(tmp_path):
    experiment = _experiment(tmp_path)  # random crops and flips
    experiment["kd"]["augmentation"] = "cutout"
    teacher = _teacher(tmp_path, experiment)
    first = _two_ranks(tmp_path, experiment, teacher, "first")
    again = _two_ranks(tmp_path, experiment, teacher, "again")
    assert len(first[0]["draws"]) == EPOCHS
    assert first[0]["draws"] != first[1]["draws"]  # independent across ranks
    assert len(set(first[0]["draws"])) == EPOCHS  # and across epochs
    assert [r["draws"] for r in first] == [r["draws"] for r in again]  # reproducible from the trial seed
    for name, value in first[0]["model"].items():
        assert torch.equal(value, first[1]["model"][name]) and torch.equal(value, again[0]["model"][name]), name
