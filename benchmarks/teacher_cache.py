"""KD step with and without the teacher base-view cache, beside a plain student step, and the
cost of filling the cache, in one run on one device.

    .venv/bin/python benchmarks/teacher_cache.py [--device cpu|cuda] [--steps 20] [--rounds 15] [--config ...]

Every row trains the config's student on the same batches of [x; x'] (x' = the config's fixed
candidate, or cutmix): "plain student" is cross-entropy on both views with no teacher, "KD" adds
the teacher's forward on [x; x'] (untrained weights: the same work), "KD cached" reads the teacher's logits on x from the cache and
forwards x' only. The fill row is the whole cache: every base view of every training image.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _batches(runner, count: int) -> list:
    batches = []
    while len(batches) < count:
        batches += list(runner.train_feeder.indexed())
    return batches[:count]


def _seconds_per_step(runner, step, batches) -> float:
    runner.train_mode()
    if runner.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for indices, images, labels in batches:
        runner.batch_indices = indices
        step(runner, images, labels)
    if runner.device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / len(batches)


def _interleaved(rows: dict, batches: list, rounds: int) -> dict:
    """Median seconds per step of each (runner, step), measured in turns (A B C A B C ...), so
    that drift in the machine's speed falls on every row alike; one warm-up turn each."""
    times = {name: [] for name in rows}
    for turn in range(rounds + 1):
        for name, (runner, step) in rows.items():
            seconds = _seconds_per_step(runner, step, batches)
            if turn:
                times[name].append(seconds)
    return {name: statistics.median(values) for name, values in times.items()}


def _kd_step(runner, images, labels):
    loss, _ = runner.loss(images, labels)
    runner.optimise(loss)


def _plain_step(runner, images, labels):
    both, n = runner.two_views(images)
    logits = runner.model(both)
    runner.optimise(torch.nn.functional.cross_entropy(logits, torch.cat([labels, labels])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=20, help="steps per turn")
    parser.add_argument("--rounds", type=int, default=15, help="turns of each row")
    parser.add_argument("--config", default=str(ROOT / "configs" / "digits_recipe.yaml"))
    args = parser.parse_args()

    from augtune.search.sweep_config import load_config
    from augtune.trainables.data import load_data
    from augtune.trainables.engine import save_checkpoint
    from augtune.trainables.experiment_config import DistillConfig
    from augtune.trainables.kd import KDRunner
    from augtune.trainables.teacher_cache import ensure_cache

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(args.config, {"output_dir": tmp, "device": args.device,
                                        "tracking.uri": f"sqlite:///{tmp}/m.db"})
        data = load_data(cfg.data)
        # untrained weights: the same work per step as a trained teacher's, without training one
        teacher = save_checkpoint(Path(tmp) / "teacher.pt", cfg.teacher.build(data.num_classes, data.channels),
                                  cfg.teacher.model, data)
        distill = DistillConfig.model_validate(cfg.distill_dict())
        candidate = cfg.search.prune.candidate or "cutmix"
        candidate = candidate if isinstance(candidate, str) else "cutmix"

        def runner(cache: str):
            distill.section("kd").teacher_cache = cache
            return KDRunner(distill, candidate, str(teacher), data=data, seed=0)

        info = ensure_cache(distill, teacher)
        with_cache = runner("auto")
        assert with_cache.teacher_cache is not None
        rows = {"plain student": (runner("off"), _plain_step), "KD": (runner("off"), _kd_step),
                "KD cached": (with_cache, _kd_step)}
        median = _interleaved(rows, _batches(with_cache, args.steps), args.rounds)
        plain, uncached, cached = median["plain student"], median["KD"], median["KD cached"]
        epoch_steps = len(with_cache.train_feeder)
        print(f"\nKD step vs a plain student step ({cfg.teacher.model} -> {cfg.student.model}, {args.device}, "
              f"batch {cfg.student.train.batch_size} + x', x' = {candidate})")
        print(f"{'step (median of ' + str(args.rounds) + ' turns)':<30}{'ms/step':>10}{'x plain':>10}")
        for name, seconds in (("plain student", plain), ("KD", uncached), ("KD cached", cached)):
            print(f"{name:<30}{seconds * 1000:>10.2f}{seconds / plain:>10.2f}")
        epoch = uncached * epoch_steps
        print(f"\ncache fill: {info['images']} images x {info['views']} views, {info['bytes'] / 1024**2:.1f} MiB, "
              f"{info['seconds']:.1f} s = {info['seconds'] / epoch:.1f} uncached KD epochs; each cached epoch saves "
              f"{(uncached - cached) * epoch_steps:.2f} s, so the fill pays after "
              f"{info['seconds'] / max((uncached - cached) * epoch_steps, 1e-9):.0f} trial-epochs")


if __name__ == "__main__":
    main()
