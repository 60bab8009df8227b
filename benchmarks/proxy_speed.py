"""T.stddev cost for every candidate of configs/digits_recipe.yaml, two ways, in one run:

- shared: one `score_candidates` call over all candidates; the teacher forwards the original view
  x once per batch position, then each candidate's x' (what augtune does);
- per candidate: one call per candidate, so x is forwarded again for each (the cost before the
  original view was shared, and what scoring candidates one at a time costs).

Also one KD training epoch of the same teacher -> student pair on the same data, to state a
candidate's proxy cost as a fraction of a full 240-epoch KD trial (the Good-DA recipe's length).
Timings are wall seconds on one device; weights are random (the cost does not depend on them).

    .venv/bin/python benchmarks/proxy_speed.py [--device cpu|cuda] [--passes 10] [--side 16]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RECIPE_EPOCHS = 240


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--passes", type=int, default=10)
    parser.add_argument("--side", type=int, default=16, help="image side (the embedded default is 16)")
    args = parser.parse_args()

    from augtune.search.sweep_config import load_config
    from augtune.search.selection.proxy import score_candidates
    from augtune.trainables.data import load_data
    from augtune.trainables.engine import save_checkpoint
    from augtune.trainables.kd import KDRunner
    from augtune.trainables.models import build_model

    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(ROOT / "configs" / "digits_recipe.yaml",
                          {"data.image_size": args.side, "output_dir": tmp, "device": device.type})
        data = load_data(cfg.data)
        torch.manual_seed(0)
        teacher = build_model(cfg.teacher.model, data.num_classes, data.channels).to(device).eval()
        candidates = cfg.space.resolved()
        p = cfg.proxy
        settings = dict(passes=args.passes, group_batches=p.group_batches, batch_size=p.batch_size, bootstrap=0,
                        progress=False, bf16=True)

        def timed(fn) -> float:
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - start

        shared = timed(lambda: score_candidates(teacher, candidates, data, device, **settings))
        alone = timed(lambda: [score_candidates(teacher, [c], data, device, **settings) for c in candidates])
        checkpoint = save_checkpoint(Path(tmp) / "teacher.pt", teacher, cfg.teacher.model, data)
        runner = KDRunner(cfg, "cutmix", str(checkpoint), data=data)
        runner.run_epoch()  # warm-up
        epoch = timed(runner.run_epoch)

    n = len(candidates)
    per_candidate = shared / n
    print(f"T.stddev, {n} candidates, {args.passes} passes, digits {args.side}x{args.side} "
          f"({len(data.train)} training images), {cfg.teacher.model} -> {cfg.student.model}, {device}")
    print(f"{'scoring':<16} {'seconds':>8} {'per candidate':>14} {'teacher forwards / batch':>25}")
    print(f"{'per candidate':<16} {alone:>8.2f} {alone / n:>14.2f} {2 * n:>25}")
    print(f"{'shared x':<16} {shared:>8.2f} {per_candidate:>14.2f} {n + 1:>25}")
    print(f"speed-up {alone / shared:.2f}x")
    print(f"one KD epoch: {epoch:.2f} s; a {RECIPE_EPOCHS}-epoch KD trial: {RECIPE_EPOCHS * epoch:.0f} s; "
          f"one candidate's T.stddev = {100 * per_candidate / (RECIPE_EPOCHS * epoch):.2f}% of it")


if __name__ == "__main__":
    main()
