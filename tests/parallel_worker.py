"""One rank of a data-parallel KD run over a gloo process group, without Ray: the processes
tests/test_data_parallel.py spawns (a module of its own, so the spawned processes import it)."""
import hashlib

import torch
import torch.distributed as dist


def run_rank(rank: int, world: int, init_file: str, experiment: dict, teacher: str, epochs: int, out: str) -> None:
    from augtune.trainables.experiment_config import DistillConfig
    from augtune.trainables.distributed import DataParallel
    from augtune.trainables.kd import KDRunner

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        runner = KDRunner(DistillConfig.model_validate(experiment), None, teacher)
        runner.make_data_parallel(DataParallel.current())
        # the state of the augmentation generator at each epoch's first batch: what this rank draws from
        draws, train_batch = [], runner.pipeline.train_batch_with_views  # what two_views draws through

        def recording(images, generator):
            if len(draws) < runner.epoch + 1:
                draws.append(hashlib.sha256(generator.get_state().numpy().tobytes()).hexdigest())
            return train_batch(images, generator)

        runner.pipeline.train_batch_with_views = recording
        metrics = [runner.run_epoch() for _ in range(epochs)]
        torch.save({"model": runner.model.state_dict(), "metrics": metrics, "draws": draws}, out)
    finally:
        dist.destroy_process_group()
