"""Screening a policy space with T.stddev: policies per second and the cost as a fraction of one
student trial of the embedded default, with and without racing, in one run on one device.

    .venv/bin/python benchmarks/screening_speed.py [--policies 256] [--device cpu|cuda] [--passes 10]

The teacher is the embedded default's (configs/digits_recipe.yaml: resnet20, long-tailed digits),
trained once into --work and reused. One student trial = the default's KD run (resnet8, 30 epochs,
CutMixPick keep 0.5), timed over --trial-epochs epochs and scaled to 30. Policies: --policies
drawn from the default space (seed 0); the config's proxy settings (groups of 5 batches of 32),
8 policies per teacher forward. Racing: race_top_k 8, first drop after 2 passes, +-2 jackknife
errors. Seconds are wall and process CPU seconds (single-threaded with --threads 1).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policies", type=int, default=256)
    parser.add_argument("--passes", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--trial-epochs", type=int, default=3)
    parser.add_argument("--work", default="runs/screening-bench")
    args = parser.parse_args()

    import torch

    from augtune.search.sweep_config import load_config
    from augtune.search.selection.proxy import ForwardCounts, score_candidates
    from augtune.search.standalone.teacher import obtain_teacher
    from augtune.spaces.policies import DEFAULT_POLICY_SPACE
    from augtune.trainables.data import load_data
    from augtune.trainables.kd import KDRunner

    torch.set_num_threads(args.threads)
    cfg = load_config(ROOT / "configs" / "digits_recipe.yaml", {"output_dir": args.work, "device": args.device})
    data = load_data(cfg.data)
    device = torch.device(args.device)
    teacher, teacher_path, _ = obtain_teacher(cfg, data, device, progress=False)

    def timed(work):
        wall, cpu = time.perf_counter(), time.process_time()
        out = work()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out, time.perf_counter() - wall, time.process_time() - cpu

    runner = KDRunner(cfg, "cutmix_pick(entropy=teacher,pool=2,keep=0.5)",
                      str(teacher_path), seed=0)
    runner.run_epoch()  # warm-up (allocations, first forward)
    _, epoch_wall, epoch_cpu = timed(lambda: [runner.run_epoch() for _ in range(args.trial_epochs)])
    epochs = cfg.student.train.epochs
    trial_wall, trial_cpu = epoch_wall / args.trial_epochs * epochs, epoch_cpu / args.trial_epochs * epochs

    policies = DEFAULT_POLICY_SPACE.sample(args.policies, seed=0)
    p = cfg.proxy
    rows = []
    for label, race in (("no racing", 0), ("racing (top 8)", 8)):
        counts = ForwardCounts()
        scores, wall, cpu = timed(lambda race=race, counts=counts: score_candidates(
            teacher, policies, data, device, passes=args.passes, group_batches=p.group_batches,
            batch_size=p.batch_size, bootstrap=0, progress=False, bf16=True, policies_per_forward=8,
            race_top_k=race, counts=counts))
        rows.append((label, wall, cpu, counts, scores))

    print(f"T.stddev screening of {args.policies} policies ({args.passes} passes, {len(data.train)} training "
          f"images), {args.device}, {args.threads} thread(s); one KD trial of the default = {trial_wall:.1f} s wall, "
          f"{trial_cpu:.1f} s CPU (from {args.trial_epochs} epochs x {epochs / args.trial_epochs:.0f})")
    print(f"{'screening':<16}{'wall s':>9}{'CPU s':>9}{'policies/s':>12}{'x one trial':>13}"
          f"{'teacher img on x':>18}{'on x-prime':>12}{'raced out':>11}")
    for label, wall, cpu, counts, scores in rows:
        print(f"{label:<16}{wall:>9.1f}{cpu:>9.1f}{args.policies / wall:>12.2f}{cpu / trial_cpu:>13.2f}"
              f"{counts.images_on_x:>18}{counts.images_on_augmented:>12}{sum(s.raced_out for s in scores):>11}")
    full, raced = rows[0][4], rows[1][4]
    print(f"racing speed-up {rows[0][2] / rows[1][2]:.2f}x (CPU); the full screen's best "
          f"{full[0].candidate} is {'kept' if not next(s for s in raced if s.candidate == full[0].candidate).raced_out else 'DROPPED'} "
          f"by racing; top 8 shared: {len({s.candidate for s in full[:8]} & {s.candidate for s in raced[:8]})}/8")


if __name__ == "__main__":
    main()
