"""Speed of augtune's batched per-sample ops against a per-image torchvision pipeline, and of the
T.stddev proxy against one KD training epoch. One run prints both tables.

    .venv/bin/python benchmarks/augment_ops.py [--device cuda] [--batch 256] [--side 32]

Each row times the same work on the same device: `batched` is spaces.candidates applied to a
whole batch (per-sample draws); `per-image` loops torchvision.transforms.v2 over the images of
the batch (also per-sample draws, one Python call per image). Ratio = batched / per-image speed.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch


def _timed(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up (kernels, caches)
    samples = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def augmentation_table(device: torch.device, batch: int, side: int, repeats: int) -> list[tuple]:
    import torchvision.transforms.v2 as T

    from augtune.spaces.candidates import Context, parse_candidate

    pad, hole = side // 8, side // 4
    per_image = {
        "flip": T.RandomHorizontalFlip(),
        "crop_flip": T.Compose([T.RandomCrop(side, padding=pad), T.RandomHorizontalFlip()]),
        "cutout": T.RandomErasing(p=1.0, scale=(hole * hole / side**2,) * 2, ratio=(1.0, 1.0), value=0),
        "autoaugment": T.AutoAugment(T.AutoAugmentPolicy.CIFAR10),
        "randaugment": T.RandAugment(),
        "trivialaugment": T.TrivialAugmentWide(),
    }
    images = torch.rand(batch, 3, side, side, device=device)
    images_u8 = (images * 255).to(torch.uint8)  # torchvision's autoaugment family wants uint8
    ctx = Context(torch.Generator(device=device).manual_seed(0), {}, pad)
    rows = []
    for name, transform in per_image.items():
        candidate = parse_candidate(name)
        source = images_u8 if name in ("autoaugment", "randaugment", "trivialaugment") else images
        ours = _timed(lambda: candidate.apply(images, ctx), repeats, device)
        theirs = _timed(lambda: torch.stack([transform(img) for img in source]), max(1, repeats // 2), device)
        rows.append((name, batch / ours, batch / theirs, theirs / ours))
    for name in ("mixup", "cutmix"):  # torchvision's v2 versions draw one lambda per batch
        candidate = parse_candidate(name)
        ours = _timed(lambda: candidate.apply(images, ctx), repeats, device)
        mixer = T.CutMix(num_classes=10) if name == "cutmix" else T.MixUp(num_classes=10)
        labels = torch.zeros(1, dtype=torch.long, device=device)
        pairs = images.view(batch // 2, 2, 3, side, side)
        theirs = _timed(lambda: [mixer(pair, labels.expand(2)) for pair in pairs], max(1, repeats // 2), device)
        rows.append((name, batch / ours, batch / theirs, theirs / ours))
    return rows


def proxy_vs_epoch(device: torch.device) -> list[tuple]:
    """Proxy seconds per candidate (official 10 passes and a 3-pass early stop) vs one KD epoch."""
    from augtune.search.sweep_config import SweepConfig
    from augtune.search.selection.proxy import score_candidates
    from augtune.search.standalone.teacher import train_teacher
    from augtune.spaces.candidates import parse_candidate
    from augtune.trainables.data import load_data
    from augtune.trainables.engine import load_checkpoint
    from augtune.trainables.kd import KDRunner
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        cfg = SweepConfig.model_validate({
            "output_dir": tmp, "device": device.type, "data": {"name": "digits", "image_size": 32},
            "teacher": {"model": "resnet20", "train": {"epochs": 1, "batch_size": 64}},
            "student": {"model": "resnet8", "train": {"epochs": 1, "batch_size": 64}}})
        data = load_data(cfg.data)
        path, _ = train_teacher(cfg, data, progress=False)
        teacher, _ = load_checkpoint(path, data, device)
        rows = []
        for name in ("crop_flip", "cutmix", "cutmix_pick"):
            runner = KDRunner(cfg, name, str(path), data)
            runner.run_epoch()  # warm-up
            epoch = _timed(runner.run_epoch, 2, device)
            proxy = {}
            for passes in (10, 3):
                start = time.perf_counter()
                score_candidates(teacher, [parse_candidate(name)], data, device, passes=passes, bootstrap=0,
                                 progress=False)
                proxy[passes] = time.perf_counter() - start
            rows.append((name, proxy[10], proxy[3], epoch, proxy[10] / epoch))
        return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--side", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"batch {args.batch} of 3x{args.side}x{args.side}\n")
    print(f"{'augmentation':<15} {'batched img/s':>14} {'per-image img/s':>16} {'ratio':>7}")
    for name, ours, theirs, ratio in augmentation_table(device, args.batch, args.side, args.repeats):
        print(f"{name:<15} {ours:>14.0f} {theirs:>16.0f} {ratio:>6.1f}x")
    print(f"\nT.stddev vs one KD epoch (digits at 32x32, resnet20 -> resnet8, {device})")
    print(f"{'candidate':<15} {'proxy 10 passes s':>18} {'proxy 3 passes s':>17} {'KD epoch s':>11} {'proxy/epoch':>12}")
    for name, p10, p3, epoch, ratio in proxy_vs_epoch(device):
        print(f"{name:<15} {p10:>18.2f} {p3:>17.2f} {epoch:>11.2f} {ratio:>11.2f}x")


if __name__ == "__main__":
    main()
