"""The GPU benchmark, one call on one device (it also runs on CPU at small sizes, as CI's smoke).

    .venv/bin/python benchmarks/gpu.py                 # CUDA if visible: CIFAR sizes, resnet56 -> resnet20
    .venv/bin/python benchmarks/gpu.py --smoke         # tiny sizes on CPU (what the test suite runs)

Prints four tables on the device it runs on:
(a) KD step images/s: augtune's device-resident pipeline (uint8 data on the device, per-sample
    crop+flip on the device) against a RepDistiller-style pipeline (PIL RandomCrop + flip +
    ToTensor + Normalize in DataLoader workers), the same teacher -> student pair, batch and
    precision, one view (plain KD) for both; plus augtune's two-view Good-DA step with CutMix.
(b) achieved TFLOP/s of the KD step (FLOPs counted by torch's FlopCounterMode: teacher forward,
    student forward + backward) in bf16, and its fraction of the device's dense bf16 peak.
(c) packing: 1, 2 and 4 KD trials at once on one device through fractional Ray GPU resources
    (`resources.gpu` 1, 0.5, 0.25): total images/s and the GPU busy % sampled from nvidia-smi.
(d) T.stddev seconds per candidate (the 11 candidates of configs/digits_recipe.yaml, shared x).
Data: CIFAR-sized random uint8 tensors (throughput does not depend on the pixels).
"""
from __future__ import annotations

import argparse
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
# dense bf16 tensor-core peak by device name (vendor data sheets, without sparsity)
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0}


def synthetic_bundle(images: int, side: int, classes: int = 100):
    from augtune.trainables.data import DataBundle, ImageSet

    generator = torch.Generator().manual_seed(0)
    def image_set(n):
        return ImageSet(torch.randint(0, classes, (n,), generator=generator),
                        torch.randint(0, 256, (n, 3, side, side), generator=generator, dtype=torch.uint8))
    return DataBundle(image_set(images), image_set(256), None, classes, 3, side, (0.5,) * 3, (0.25,) * 3,
                      [images // classes] * classes)


def kd_runner(args, device: torch.device, folder: Path, *, augmentation="identity", two_views=False):
    from augtune.trainables.experiment_config import DistillConfig
    from augtune.trainables.engine import save_checkpoint
    from augtune.trainables.kd import KDRunner
    from augtune.trainables.models import build_model

    data = synthetic_bundle(args.images, args.side)
    teacher = build_model(args.teacher, data.num_classes, 3)
    checkpoint = save_checkpoint(folder / f"{args.teacher}.pt", teacher, args.teacher, data)
    cfg = DistillConfig.model_validate({
        "device": device.type, "output_dir": str(folder), "teacher": {"model": args.teacher},
        "student": {"model": args.student, "train": {"epochs": 1000, "batch_size": args.batch, "lr": 0.05}},
        "kd": {"augmented_kd": two_views}})
    return KDRunner(cfg, augmentation, str(checkpoint), data=data), data


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def augtune_images_per_second(runner, epochs: int, device: torch.device) -> float:
    runner.train_epoch()  # warm-up: kernels, cuDNN autotuning
    _sync(device)
    start = time.perf_counter()
    for _ in range(epochs):
        runner.train_epoch()
    _sync(device)
    return epochs * len(runner.train_feeder) * runner.train_cfg.batch_size / (time.perf_counter() - start)


class _PILDataset(torch.utils.data.Dataset):
    """CIFAR-style dataset: HWC uint8 arrays through PIL transforms, one image per call."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        self.images = images.permute(0, 2, 3, 1).numpy()
        self.labels, self.transform = labels.numpy(), transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def baseline_images_per_second(runner, data, epochs: int, workers: int, device: torch.device) -> float:
    """The same KD step fed by a DataLoader with PIL transforms in worker processes."""
    import torchvision.transforms as T

    from augtune.trainables.engine import autocast
    from augtune.trainables.losses.kd import good_da_kd_loss

    transform = T.Compose([T.RandomCrop(data.image_size, padding=data.image_size // 8), T.RandomHorizontalFlip(),
                           T.ToTensor(), T.Normalize(data.mean, data.std)])
    loader = torch.utils.data.DataLoader(_PILDataset(data.train.images, data.train.labels, transform),
                                         batch_size=runner.train_cfg.batch_size, shuffle=True, drop_last=True,
                                         num_workers=workers, pin_memory=device.type == "cuda",
                                         persistent_workers=workers > 0)
    kd, model, teacher = runner.kd_cfg, runner.model, runner.teacher
    model.train()

    def epoch() -> int:
        seen = 0
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if runner.pipeline.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, runner.train_cfg.bf16):
                with torch.no_grad():
                    t = teacher(x)
                s = model(x)
            runner.optimise(good_da_kd_loss(s, t, y, None, None, temperature=kd.temperature,
                                            ce_weight=kd.ce_weight, kd_weight=kd.kd_weight))
            seen += len(x)
        return seen

    epoch()
    _sync(device)
    start = time.perf_counter()
    seen = sum(epoch() for _ in range(epochs))
    _sync(device)
    return seen / (time.perf_counter() - start)


def kd_step_flops(runner, device: torch.device) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    from augtune.trainables.engine import autocast

    x = torch.rand(runner.train_cfg.batch_size, 3, runner.data.image_size, runner.data.image_size, device=device)
    x = runner.pipeline.normalise(x)
    with FlopCounterMode(display=False) as counter:
        with autocast(device, runner.train_cfg.bf16):
            with torch.no_grad():
                runner.teacher(x)
            out = runner.model(x)
        out.float().sum().backward()
    runner.optimizer.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def _gpu_busy_sampler(stop: threading.Event, samples: list[float]) -> None:
    while not stop.is_set():
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=5).stdout.split()
            samples.append(float(out[0]))
        except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
            return
        stop.wait(0.5)


def packing(args, device: torch.device, counts: list[int]) -> list[tuple[int, float, float]]:
    """n KD trials at once, each on a 1/n share of the device through Ray's resources."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=max(counts), num_gpus=1 if device.type == "cuda" else 0, include_dashboard=False,
                 log_to_driver=False)

    def trial(seconds: float) -> float:
        torch.set_num_threads(1)
        with tempfile.TemporaryDirectory() as tmp:
            runner, _ = kd_runner(args, device, Path(tmp))
            runner.train_epoch()
            images, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                runner.train_epoch()
                images += len(runner.train_feeder) * runner.train_cfg.batch_size
            _sync(device)
            return images

    rows = []
    for n in counts:
        share = {"num_gpus": 1 / n} if device.type == "cuda" else {}
        remote = ray.remote(num_cpus=1, **share)(trial)
        stop, samples = threading.Event(), []
        sampler = threading.Thread(target=_gpu_busy_sampler, args=(stop, samples), daemon=True)
        if device.type == "cuda":
            sampler.start()
        start = time.perf_counter()
        images = sum(ray.get([remote.remote(args.pack_seconds) for _ in range(n)]))
        wall = time.perf_counter() - start
        stop.set()
        rows.append((n, images / wall, float(np.mean(samples)) if samples else float("nan")))
    if started:
        ray.shutdown()
    return rows


def proxy_seconds_per_candidate(device: torch.device, passes: int) -> float:
    from augtune.search.sweep_config import load_config
    from augtune.search.selection.proxy import score_candidates
    from augtune.trainables.data import load_data
    from augtune.trainables.models import build_model

    cfg = load_config(ROOT / "configs" / "digits_recipe.yaml")
    data = load_data(cfg.data)
    teacher = build_model(cfg.teacher.model, data.num_classes, data.channels).to(device).eval()
    candidates = cfg.space.resolved()
    start = time.perf_counter()
    score_candidates(teacher, candidates, data, device, passes=passes, group_batches=cfg.proxy.group_batches,
                     batch_size=cfg.proxy.batch_size, bootstrap=0, progress=False)
    _sync(device)
    return (time.perf_counter() - start) / len(candidates)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on CPU")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--teacher", default="resnet56")
    parser.add_argument("--student", default="resnet20")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--images", type=int, default=10_240)
    parser.add_argument("--side", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=8, help="DataLoader workers of the baseline")
    parser.add_argument("--pack", default="1,2,4")
    parser.add_argument("--pack-seconds", type=float, default=20.0)
    parser.add_argument("--proxy-passes", type=int, default=10)
    args = parser.parse_args(argv)
    if args.smoke:
        args.device, args.teacher, args.student, args.batch, args.images = "cpu", "resnet8", "resnet8", 16, 64
        args.side, args.epochs, args.workers, args.pack, args.pack_seconds, args.proxy_passes = 16, 1, 0, "1,2", 1.0, 1
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    results: dict = {"device": name}
    with tempfile.TemporaryDirectory() as tmp:
        runner, data = kd_runner(args, device, Path(tmp))
        ours = augtune_images_per_second(runner, args.epochs, device)
        theirs = baseline_images_per_second(runner, data, args.epochs, args.workers, device)
        two_view, _ = kd_runner(args, device, Path(tmp), augmentation="cutmix", two_views=True)
        ours_two = augtune_images_per_second(two_view, args.epochs, device)
        flops = kd_step_flops(runner, device)
    results.update(augtune=ours, baseline=theirs, augtune_two_views=ours_two, step_flops=flops)
    print(f"device: {name}; {args.teacher} -> {args.student}, batch {args.batch}, {args.side}x{args.side}, "
          f"{args.images} images, bf16 {'on' if device.type == 'cuda' else 'off (CPU)'}")
    print("\n(a) KD step throughput")
    print(f"{'pipeline':<44} {'images/s':>10}")
    print(f"{'RepDistiller-style (PIL in ' + str(args.workers) + ' workers), 1 view':<44} {theirs:>10.0f}")
    print(f"{'augtune device-resident, 1 view':<44} {ours:>10.0f}")
    print(f"{'augtune device-resident, 2 views (CutMix)':<44} {ours_two:>10.0f}")
    print(f"ratio augtune / baseline (1 view): {ours / theirs:.2f}x")

    steps_per_second = ours / args.batch
    achieved = flops * steps_per_second / 1e12
    peak = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)
    results.update(tflops=achieved, peak_fraction=achieved / peak if peak else None)
    print("\n(b) achieved compute of the KD step (1 view)")
    print(f"{flops / 1e9:.1f} GFLOP per step x {steps_per_second:.1f} steps/s = {achieved:.2f} TFLOP/s"
          + (f" = {100 * achieved / peak:.1f}% of the {peak:.0f} TFLOP/s dense bf16 peak" if peak else
             " (no bf16 peak known for this device)"))

    counts = [int(c) for c in args.pack.split(",")]
    rows = packing(args, device, counts)
    results["packing"] = rows
    print("\n(c) trials packed on one device (fractional resources)")
    print(f"{'trials':>6} {'total images/s':>15} {'GPU busy %':>11}")
    for n, rate, busy in rows:
        print(f"{n:>6} {rate:>15.0f} {busy:>11.0f}")

    per_candidate = proxy_seconds_per_candidate(device, args.proxy_passes)
    results["proxy_seconds_per_candidate"] = per_candidate
    print(f"\n(d) T.stddev: {per_candidate:.2f} s per candidate ({args.proxy_passes} passes, digits default, "
          "11 candidates, shared original view)")
    return results


if __name__ == "__main__":
    main()
