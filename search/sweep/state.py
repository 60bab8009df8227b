"""The sweep's resumable state: which stage it reached and what the finished stages produced.

Written atomically after every step that must survive a killed driver (the parent run opened,
the proxy done, a Tune phase started, renamed, topped up or finished, the sweep finished), so
`augtune sweep CONFIG --resume` continues from the last one. Typed in memory; JSON on disk.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Optional, Union

from augtune.search.results.trials import TrialRow
from augtune.search.selection.proxy import ProxyScore

STATE_FILE = "sweep_state.json"
Stage = Literal["proxy", "search"]
Point = dict[str, Any]  # one grid trial: {"augmentation": id, "seed": n}


@dataclass
class TopUp:
    """One round of trials a restored experiment lost, run again in an experiment of its own."""
    experiment: str
    lost: Union[int, list[Point]]  # a trial count (the search) or the exact points (a grid)

    @property
    def size(self) -> int:
        return self.lost if isinstance(self.lost, int) else len(self.lost)


@dataclass
class PhaseRecord:
    """What the state keeps of one Tune phase: its experiment (renamed when an unusable one was
    in the way), its top-up rounds in order, and its trial rows once it finished."""
    experiment: str
    topups: list[TopUp] = field(default_factory=list)
    rows: Optional[list[TrialRow]] = None

    def as_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["topups"] = [asdict(t) for t in self.topups]
        out["rows"] = None if self.rows is None else [r.as_dict() for r in self.rows]
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "PhaseRecord":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in raw.items() if k in known}
        values["topups"] = [TopUp(**t) for t in raw.get("topups") or []]
        values["rows"] = None if raw.get("rows") is None else [TrialRow.from_dict(r) for r in raw["rows"]]
        return cls(**values)


@dataclass
class AuditRecord(PhaseRecord):
    """One batch of the sentinel audit: its candidates and, once trained, each one's values."""
    candidates: list[str] = field(default_factory=list)
    values: Optional[dict[str, list[float]]] = None

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "AuditRecord":
        if "name" in raw and "experiment" not in raw:  # written before phases were typed
            raw = {**raw, "experiment": raw["name"]}
        return super().from_dict(raw)  # type: ignore[return-value]


@dataclass
class BaselineRecord(PhaseRecord):
    """The recipe baseline's phase and, once trained, its comparison (BaselineComparison.as_dict())."""
    comparison: Optional[dict[str, Any]] = None


@dataclass
class SweepState:
    parent_run_id: str
    search: PhaseRecord  # the search phase (or a validation sweep's grid); other phases derive their names
    validate_proxy: bool
    stage: Stage = "proxy"  # "proxy": teacher + T.stddev + pruning still to do; "search": Ray phases
    teacher_path: Optional[str] = None
    scores: list[ProxyScore] = field(default_factory=list)  # best first
    kept: list[str] = field(default_factory=list)  # what the pruning kept
    survivors: list[str] = field(default_factory=list)  # what the search runs over (after the audit)
    audit_done: bool = True
    audit: Optional[dict[str, Any]] = None  # AuditOutcome.as_dict()
    audit_phases: list[AuditRecord] = field(default_factory=list)
    baseline: Optional[BaselineRecord] = None
    finished: Optional[dict[str, Any]] = None  # {best, compute, trials} once the summary is logged

    def audit_rows(self) -> list[TrialRow]:
        """The sentinel audit's trials (full length, at the config's own values)."""
        return [t for record in self.audit_phases for t in record.rows or []]

    def as_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["search"] = self.search.as_dict()
        out["scores"] = [s.as_row() for s in self.scores]
        out["audit_phases"] = [p.as_dict() for p in self.audit_phases]
        out["baseline"] = None if self.baseline is None else self.baseline.as_dict()
        return out

    def save(self, folder: Path) -> None:
        """Atomically: a driver killed mid-write leaves the previous state, never half a file."""
        path = Path(folder) / STATE_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.as_dict(), indent=2))
        os.replace(tmp, path)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "SweepState":
        raw = dict(raw)
        if "search" not in raw:  # written before phases were typed: the search's experiment and rounds
            if raw.get("topup_experiment"):  # ... and before top-ups had rounds
                raw["topups"] = [{"experiment": raw["topup_experiment"], "lost": raw["topup_trials"]}]
            raw["search"] = {"experiment": raw["ray_experiment"], "topups": raw.get("topups") or []}
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in raw.items() if k in known}
        values["search"] = PhaseRecord.from_dict(raw["search"])
        values["scores"] = [ProxyScore.from_row(r) for r in raw.get("scores") or []]
        values["audit_phases"] = [AuditRecord.from_dict(p) for p in raw.get("audit_phases") or []]
        values["baseline"] = None if raw.get("baseline") is None else BaselineRecord.from_dict(raw["baseline"])
        return cls(**values)

    @classmethod
    def load(cls, folder: Path) -> Optional["SweepState"]:
        path = Path(folder) / STATE_FILE
        return cls.from_dict(json.loads(path.read_text())) if path.is_file() else None
