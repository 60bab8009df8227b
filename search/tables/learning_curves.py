"""Learning-curve tables: every candidate x student seed trained in full, with per-epoch curves
and per-epoch seconds, and every candidate's proxy scores from several proxy seeds. Searches are
replayed against a table (search/tables/replay.py) instead of training.

File format `augtune-learning-curves`, version 2 (version 1 is read too): one gzip-compressed JSON document
    {"format": "augtune-learning-curves", "version": 1, "protocol": "...", "machine": "...",
     "regimes": {NAME: REGIME, ...}}
    REGIME = {"overrides": {config key: value}, "epochs": E, "candidates": [id, ...] (C),
              "seeds": [seed, ...] (S), "teacher": {...},
              "curves": {metric: C x S lists, each an E-list of floats, or null (not run)},
              "proxy_seeds": [seed, ...] (P), "proxy": {score: C x P floats or null},
              "proxy_seconds": C x P floats or null, "run_workers": [...], "commits": [...]}
Curve values are stored to 6 decimals. Curve metrics: val_loss, val_acc, test_loss, test_acc,
epoch_seconds (wall seconds of training + evaluation of that epoch) and, from version 2 on where
measured, epoch_cpu_seconds (the run's own CPU seconds of that epoch: not inflated by runs side by
side; replays charge them when present). Proxy scores: search/selection/proxy.py ZOO names. Seconds were
measured as stated in "machine" and "run_workers" (runs side by side share it).
"""
from __future__ import annotations

import gzip
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

FORMAT = "augtune-learning-curves"
VERSION = 2
READABLE_VERSIONS = (1, 2)
CURVE_METRICS = ("val_loss", "val_acc", "test_loss", "test_acc", "epoch_seconds", "epoch_cpu_seconds")


@dataclass
class Regime:
    """One regime's table as arrays: curves[metric] is [candidate, seed, epoch] (NaN: not run),
    proxy[score] is [candidate, proxy seed]."""

    name: str
    candidates: list[str]
    seeds: list[int]
    epochs: int
    curves: dict[str, np.ndarray]
    proxy: dict[str, np.ndarray] = field(default_factory=dict)
    proxy_seconds: Optional[np.ndarray] = None
    meta: dict[str, Any] = field(default_factory=dict)

    def index(self, candidate: str) -> int:
        return self.candidates.index(candidate)

    def ran(self) -> np.ndarray:
        """[candidate, seed]: whether that run is in the table."""
        return ~np.isnan(self.curves["val_loss"][:, :, -1])

    def complete_seeds(self) -> list[int]:
        """Seed positions run for every candidate."""
        return [s for s in range(len(self.seeds)) if self.ran()[:, s].all()]

    def final(self, metric: str) -> np.ndarray:
        """[candidate, seed] value at the last epoch."""
        return self.curves[metric][:, :, -1]

    @property
    def seconds_curve(self) -> str:
        """The per-epoch seconds replays charge: CPU seconds where the table has them, else wall."""
        return "epoch_cpu_seconds" if "epoch_cpu_seconds" in self.curves else "epoch_seconds"

    def epoch_seconds(self) -> np.ndarray:
        """[candidate] mean seconds of one epoch over the runs in the table (NaN: none ran)."""
        with warnings.catch_warnings():  # a candidate not run yet has no seconds: NaN, quietly
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(self.curves[self.seconds_curve], axis=(1, 2))

    def exhaustive_seconds(self) -> float:
        """One full-length run of every candidate at its mean per-epoch seconds."""
        return float(self.epochs * self.epoch_seconds().sum())

    def seed_sd(self, metric: str = "test_loss") -> float:
        """Pooled within-candidate standard deviation of the final metric over seeds."""
        return pooled_seed_sd(self.final(metric))

    # -- serialisation
    def to_document(self) -> dict[str, Any]:
        def lists(array: np.ndarray):
            out = []
            for row in array:
                out.append([None if np.isnan(cell).all() else [round(float(v), 6) for v in cell] for cell in row])
            return out

        def cells(array: np.ndarray):
            return [[None if np.isnan(v) else float(v) for v in row] for row in array]

        return {"epochs": self.epochs, "candidates": list(self.candidates), "seeds": list(self.seeds),
                "curves": {m: lists(a) for m, a in self.curves.items()},
                "proxy_seeds": list(self.meta.get("proxy_seeds", range(self.proxy_width()))),
                "proxy": {k: cells(v) for k, v in self.proxy.items()},
                "proxy_seconds": cells(self.proxy_seconds) if self.proxy_seconds is not None else None,
                **{k: v for k, v in self.meta.items() if k != "proxy_seeds"}}

    def proxy_width(self) -> int:
        return next(iter(self.proxy.values())).shape[1] if self.proxy else 0

    @classmethod
    def from_document(cls, name: str, doc: dict[str, Any]) -> "Regime":
        try:
            candidates, seeds, epochs = list(doc["candidates"]), list(doc["seeds"]), int(doc["epochs"])
            curves = {}
            for metric, rows in doc["curves"].items():
                array = np.full((len(candidates), len(seeds), epochs), np.nan)
                for c, row in enumerate(rows):
                    for s, cell in enumerate(row):
                        if cell is not None:
                            array[c, s, :len(cell)] = cell
                curves[metric] = array
            proxy = {k: np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=float)
                     for k, rows in (doc.get("proxy") or {}).items()}
            seconds = doc.get("proxy_seconds")
            proxy_seconds = (np.array([[np.nan if v is None else v for v in row] for row in seconds], dtype=float)
                             if seconds else None)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"learning-curve table, regime {name!r}: malformed ({exc!r})") from None
        missing = [m for m in ("val_loss", "test_loss", "epoch_seconds") if m not in curves]
        if missing:
            raise ValueError(f"learning-curve table, regime {name!r}: no curves for {', '.join(missing)}")
        meta = {k: v for k, v in doc.items() if k not in ("epochs", "candidates", "seeds", "curves", "proxy",
                                                          "proxy_seconds")}
        return cls(name, candidates, seeds, epochs, curves, proxy, proxy_seconds, meta)


def pooled_seed_sd(values: np.ndarray) -> float:
    """Pooled within-row standard deviation of [candidate, seed] values (NaN: not run)."""
    squares, dof = 0.0, 0
    for row in values:
        row = row[~np.isnan(row)]
        if len(row) > 1:
            squares += float(((row - row.mean()) ** 2).sum())
            dof += len(row) - 1
    return math.sqrt(squares / dof) if dof else float("nan")


def write_table(path: Union[str, Path], regimes: dict[str, Regime], **header: Any) -> Path:
    """Write regimes in the versioned format (gzip, deterministic bytes for the same content)."""
    path = Path(path)
    document = {"format": FORMAT, "version": VERSION, **header,
                "regimes": {name: regime.to_document() for name, regime in regimes.items()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = json.dumps(document, separators=(",", ":"), allow_nan=False).encode()
    path.write_bytes(gzip.compress(payload, mtime=0))
    return path


def load_table(path: Union[str, Path]) -> dict[str, Regime]:
    """Read a table; a wrong format or version is refused with the reason."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"learning-curve table {path}: no such file")
    try:
        document = json.loads(gzip.decompress(path.read_bytes()))
    except (OSError, EOFError, json.JSONDecodeError) as exc:
        raise ValueError(f"learning-curve table {path}: not a gzip-compressed JSON document ({exc})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ValueError(f"learning-curve table {path}: format is not {FORMAT!r}")
    if document.get("version") not in READABLE_VERSIONS:
        raise ValueError(f"learning-curve table {path}: version {document.get('version')!r}; this augtune reads "
                         f"versions {', '.join(map(str, READABLE_VERSIONS))}")
    return {name: Regime.from_document(name, doc) for name, doc in document["regimes"].items()}


def regime_from_runs(name: str, candidates: list[str], seeds: list[int], epochs: int, runs: list[dict],
                     proxy_rows: list[dict], meta: dict[str, Any]) -> Regime:
    """Runs (one dict per (candidate, seed) with per-epoch lists) and proxy rows (one per proxy
    seed) -> a table Regime. A run of another candidate or seed is ignored; two runs of one
    (candidate, seed) is an error (a table holds each once)."""
    metrics = [m for m in CURVE_METRICS if any(run.get(m) for run in runs)] or list(CURVE_METRICS[:5])
    curves = {m: np.full((len(candidates), len(seeds), epochs), np.nan) for m in metrics}
    seen = set()
    for run in runs:
        if run["candidate"] not in candidates or run["seed"] not in seeds:
            continue
        key = (run["candidate"], run["seed"])
        if key in seen:
            raise ValueError(f"two finished runs of {key[0]} seed {key[1]}; a table holds each once")
        seen.add(key)
        c, s = candidates.index(run["candidate"]), seeds.index(run["seed"])
        for m in metrics:
            values = run.get(m) or []
            curves[m][c, s, :min(len(values), epochs)] = values[:epochs]
    proxy_rows = sorted(proxy_rows, key=lambda r: r["proxy_seed"])
    names = sorted({k for r in proxy_rows for scores in r["scores"].values() for k in scores})
    nan = float("nan")
    proxy = {n: np.array([[r["scores"].get(c, {}).get(n, nan) for r in proxy_rows] for c in candidates],
                         dtype=float).reshape(len(candidates), len(proxy_rows)) for n in names}
    seconds = (np.array([[r["seconds"].get(c, nan) for r in proxy_rows] for c in candidates], dtype=float)
               if proxy_rows else None)
    meta = {**meta, "proxy_seeds": [r["proxy_seed"] for r in proxy_rows]}
    return Regime(name, list(candidates), list(seeds), epochs, curves, proxy, seconds, meta)


def read_jsonl(path: Union[str, Path]) -> list[dict]:
    """Rows of a JSON-lines log (a resumable job's record of what it finished); a line cut by a
    kill is skipped, so that piece of work is simply done again."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows
