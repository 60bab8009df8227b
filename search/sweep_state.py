"""The sweep's resumable state: which stage it reached and what the finished stages produced.

Written atomically after every step that must survive a killed driver (the parent run opened,
the proxy done, an audit phase started or finished, a Ray experiment renamed or topped up, the
sweep finished), so `augtune sweep CONFIG --resume` continues from the last one.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Optional

STATE_FILE = "sweep_state.json"
Stage = Literal["proxy", "search"]


@dataclass
class SweepState:
    parent_run_id: str
    ray_experiment: str  # the search phase's Tune experiment (audit phases and the top-up derive theirs)
    validate_proxy: bool
    stage: Stage = "proxy"  # "proxy": teacher + T.stddev + pruning still to do; "search": Ray phases
    teacher_path: Optional[str] = None
    scores: list[dict[str, Any]] = field(default_factory=list)  # ProxyScore rows, best first
    kept: list[str] = field(default_factory=list)  # what the pruning kept
    survivors: list[str] = field(default_factory=list)  # what the search runs over (after the audit)
    audit_done: bool = True
    audit: Optional[dict[str, Any]] = None  # AuditOutcome.as_dict()
    audit_phases: list[dict[str, Any]] = field(default_factory=list)  # {candidates, name, values, seconds, trials}
    # trials restored search experiments lost, run again: one {experiment, lost} per round (a
    # restored top-up can lose trials too; tuners.fit_with_top_ups). Audit phases keep their own.
    topups: list[dict[str, Any]] = field(default_factory=list)
    # the recipe baseline's phase: {experiment, topups, rows (None until trained), comparison}
    baseline: Optional[dict[str, Any]] = None
    finished: Optional[dict[str, Any]] = None  # {best, compute, trials} once the summary is logged

    def save(self, folder: Path) -> None:
        """Atomically: a driver killed mid-write leaves the previous state, never half a file."""
        path = Path(folder) / STATE_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.replace(tmp, path)

    @classmethod
    def load(cls, folder: Path) -> Optional["SweepState"]:
        path = Path(folder) / STATE_FILE
        if not path.is_file():
            return None
        raw = json.loads(path.read_text())
        if raw.get("topup_experiment"):  # a state written before top-ups had rounds
            raw["topups"] = [{"experiment": raw["topup_experiment"], "lost": raw["topup_trials"]}]
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})
