"""What a fresh trial actor's process pays before its first epoch, alone and two at once (a sweep's
2 slots start their actors together on 2 cores), in one run: the floor under a sweep's Tune
overhead per trial that no change inside augtune can remove.

    .venv/bin/python benchmarks/actor_start.py [--repeats 3]

Each measurement is a new Python process that does, in order, what a Ray worker hosting one of
the sweep's trial actors does before its first epoch: start the interpreter, import Ray, torch,
Ray Tune and augtune's trainables, then build a torch optimiser (its first call imports torch's
compiler stack, `torch._dynamo`, which every torch optimiser's methods are wrapped in). Times are
seconds since the parent launched the process; medians over `--repeats`. Then the same work as
the set-up of a Tune trainable, in `--repeats` Tune experiments of 2 trials on a local Ray of 2
CPUs, timed from `Tuner.fit()`: when Ray created each actor's process, and when its set-up ended;
the difference to the plain process is Ray's and Tune's own part (the worker connecting to Ray,
the actor's registration, the Trainable's set-up). The last table spreads two actors' start over a
sweep's trials, as `make run`'s 2 slots do.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

STAGES = ("interpreter", "ray", "torch", "ray.tune", "augtune trainables", "first optimiser")
SLOTS = 2


def child() -> None:
    marks = [time.time()]
    import ray  # noqa: F401
    marks.append(time.time())
    import torch  # noqa: F401
    marks.append(time.time())
    import ray.tune  # noqa: F401
    marks.append(time.time())
    import augtune.trainables.tune_trainables  # noqa: F401
    marks.append(time.time())
    actor_work()
    marks.append(time.time())
    print(json.dumps(marks))


def actor_work() -> None:
    import torch

    import augtune.trainables.tune_trainables  # noqa: F401
    torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1).zero_grad()


def in_tune(repeats: int) -> list[tuple[float, float]]:
    """(process created, set-up done), seconds since `fit()`, of every actor of `repeats` Tune
    experiments of 2 trials each on one local Ray."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's older output is silent at verbose 0: the tables only
    import psutil
    import ray
    import torch  # noqa: F401  the sweep's driver has it before its first experiment
    from ray import tune

    class Ready(tune.Trainable):
        def setup(self, config):
            actor_work()
            self.ready = time.time()

        def step(self):
            return {"created": psutil.Process().create_time(), "ready": self.ready}

        def save_checkpoint(self, checkpoint_dir):  # Tune saves a class trainable at its end
            pass

        def load_checkpoint(self, checkpoint_dir):
            pass

    ray.init(num_cpus=SLOTS, include_dashboard=False, log_to_driver=False)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeats):
            start = time.time()
            grid = tune.Tuner(Ready, param_space={"slot": tune.grid_search(list(range(SLOTS)))},
                              run_config=tune.RunConfig(storage_path=tmp, verbose=0,
                                                        stop={"training_iteration": 1})).fit()
            out += [(r.metrics["created"] - start, r.metrics["ready"] - start) for r in grid]
    ray.shutdown()
    return out


def launch(together: int) -> list[list[float]]:
    """Stage end times (seconds since launch) of `together` processes started at once."""
    launched = time.time()
    procs = [subprocess.Popen([sys.executable, __file__, "--child"], stdout=subprocess.PIPE, text=True)
             for _ in range(together)]
    return [[mark - launched for mark in json.loads(proc.communicate()[0].strip().splitlines()[-1])]
            for proc in procs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child()
        return
    launch(1)  # warm the file cache: every measured run reads the same files
    alone = [launch(1)[0] for _ in range(args.repeats)]
    together = [marks for _ in range(args.repeats) for marks in launch(SLOTS)]
    median = {name: [statistics.median(run[i] for run in runs) for i in range(len(STAGES))]
              for name, runs in (("alone", alone), ("two at once", together))}
    print(f"A fresh trial actor's process, seconds since launch (median of {args.repeats}; two at once: "
          f"each of the {SLOTS} processes)")
    print(f"{'stage done':<20} {'alone':>7} {'+stage':>7} {'two at once':>12} {'+stage':>7}")
    for i, stage in enumerate(STAGES):
        steps = {name: marks[i] - (marks[i - 1] if i else 0.0) for name, marks in median.items()}
        print(f"{stage:<20} {median['alone'][i]:>7.2f} {steps['alone']:>7.2f} "
              f"{median['two at once'][i]:>12.2f} {steps['two at once']:>7.2f}")
    actors = in_tune(args.repeats)
    created = statistics.median(c for c, _ in actors)
    ready = statistics.median(r for _, r in actors)
    plain = median["two at once"][-1]
    print(f"\nThe same work as a Tune trainable's set-up, seconds since Tuner.fit() (median of {len(actors)} actors, "
          f"{args.repeats} experiments of {SLOTS} trials)")
    print(f"{'process created':<34} {created:>6.2f}  (psutil's start times are in clock ticks)")
    print(f"{'set-up done':<34} {ready:>6.2f}")
    print(f"{'of which Ray and Tune (- plain)':<34} {ready - plain:>6.2f}")
    print(f"\nThe floor under Tune's overhead per trial, once per Tune experiment: {SLOTS} slots x seconds / trials")
    print(f"{'trials':>7} {'plain process':>14} {'in Tune':>8}")
    for trials in (11, 16, 27, 60):
        print(f"{trials:>7} {SLOTS * plain / trials:>14.2f} {SLOTS * ready / trials:>8.2f}")


if __name__ == "__main__":
    main()
