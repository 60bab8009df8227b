"""Which way a metric improves: decided here once (losses go down, everything else up)."""
from __future__ import annotations

from typing import Literal


def metric_mode(metric: str) -> Literal["min", "max"]:
    """Ray Tune's and Optuna's `mode` for `metric`."""
    return "min" if metric.endswith("loss") else "max"


def lower_is_better(metric: str) -> bool:
    return metric_mode(metric) == "min"


def metric_sign(metric: str) -> int:
    """+1 where lower is better, -1 where higher is: `sorted(key=sign * value)` puts the best first."""
    return 1 if lower_is_better(metric) else -1
