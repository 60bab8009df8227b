"""Augmentation schedules: what a PBT trial trained with, epoch by epoch.

A trial's `schedule_log` is one row per epoch, `{"epoch": e, "augmentation": id, name: value, ...}`:
the values in force during epoch e of the lineage that produced its network (a PBT exploit
copies the donor's rows with its checkpoint). Here it becomes a table (CSV), a plot, and the
compact `schedule:` steps of a config that `augtune train` replays.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Sequence


def to_steps(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Config `schedule:` steps: the first epoch's values, then only the values that change."""
    steps, current = [], {}
    for row in rows:
        values = {k: v for k, v in row.items() if k != "epoch"}
        changed = {k: v for k, v in values.items() if current.get(k, object()) != v}
        if changed:
            steps.append({"epoch": int(row["epoch"]), "values": changed})
            current.update(changed)
    return steps


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    names = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=names)
        writer.writeheader()
        writer.writerows(rows)
    return path


def plot(rows: Sequence[dict[str, Any]], path: Path, title: str) -> Path:
    """One panel per numeric value over the epochs; the augmentation named where it changes."""
    import matplotlib  # 0.5 s of import (measured), for the plot only

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    numeric = [k for k in dict.fromkeys(k for row in rows for k in row)
               if k != "epoch" and all(isinstance(row.get(k), (int, float)) for row in rows)]
    panels = max(1, len(numeric))
    fig, axes = plt.subplots(panels, 1, figsize=(7, 1.9 * panels + 0.8), sharex=True, squeeze=False)
    epochs = [row["epoch"] for row in rows]
    for axis, name in zip(axes[:, 0], numeric):
        axis.step(epochs, [row[name] for row in rows], where="post")
        axis.set_ylabel(name, fontsize=8)
        axis.grid(alpha=0.3)
    top = axes[0, 0]
    previous = None
    for row in rows:
        if row.get("augmentation") != previous:
            previous = row.get("augmentation")
            top.axvline(row["epoch"], color="grey", lw=0.6, ls="--")
            top.annotate(str(previous), (row["epoch"], 1.0), xycoords=("data", "axes fraction"), fontsize=6,
                         rotation=20, va="bottom")
    axes[-1, 0].set_xlabel("epoch")
    fig.suptitle(title, fontsize=9, y=1.0)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
