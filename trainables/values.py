"""Where a named value goes: a trial's sampled values into the experiment config, and values that
change during one run (a PBT exploit's, a replayed `schedule:`) on a runner, with the per-epoch
record of them. The config schema (trainables/experiment_config.py) and the runner's loop (runner.py) know
nothing of these names; they are routed here, once.

A name is one of four kinds (`value_kind`): `augmentation` (the method's candidate), `train`
(student.train: lr, weight_decay, ...), `section` (a method's setting: kd.temperature, ...) or
`candidate` (a parameter of the candidate of that kind: cutmix.alpha, ...).
"""
from __future__ import annotations

import copy
from typing import Any, Iterable, Literal

from augtune.spaces.hyper import TRAIN_HYPERPARAMETERS, changeable_during_run
from augtune.trainables.method import REGISTRY, method_names
from augtune.spaces.candidates import numeric_params, parse_candidate, with_values

ValueKind = Literal["augmentation", "train", "section", "candidate"]


def value_kind(name: str) -> ValueKind:
    if name == "augmentation":
        return "augmentation"
    if name in TRAIN_HYPERPARAMETERS:
        return "train"
    return "section" if name.partition(".")[0] in method_names() else "candidate"


# ---------------------------------------------------------------- into a config

def apply_trial_values(experiment: dict, values: dict, method: str) -> dict:
    """A copy of the experiment dict with a trial's values written in: lr/weight_decay/momentum/
    batch_size/epochs to student.train, `kd.x`/`sla.x`/`ssd.x` to that section, `augmentation` to
    `method`'s augmentation, and `kind.param` values into that augmentation's id when it is of
    that kind. Other keys (seed, Optuna's own) are not settings."""
    out = copy.deepcopy(experiment)
    candidate_values = {}
    for key, value in values.items():
        kind = value_kind(key)
        if kind == "augmentation":
            out.setdefault(method, {})["augmentation"] = value
        elif kind == "train":
            out.setdefault("student", {}).setdefault("train", {})[key] = value
        elif kind == "section":
            section, _, name = key.partition(".")
            out.setdefault(section, {})[name] = value
        elif "." in key:
            candidate_values[key] = value
    if candidate_values:
        section = out.setdefault(method, {})
        resolved = with_values(parse_candidate(section.get("augmentation", "identity")), candidate_values)
        section["augmentation"] = resolved.id
    return out


def check_schedule_value(cfg, name: str, value, where: str) -> None:
    """Refuse a value a run cannot switch to mid-way (`cfg` a DistillConfig), naming `where` it
    came from."""
    method_settings = {n for m in REGISTRY.values() for n in m.hyperparameters}
    fixed = {n for m in REGISTRY.values() for n in m.fixed_during_run}

    def refuse(reason: str):
        raise ValueError(f"{where}: {reason}")

    kind = value_kind(name)
    if kind == "augmentation":
        if not isinstance(value, str):
            refuse("give a candidate id such as cutmix(alpha=1.0)")
        try:
            parse_candidate(value)
        except ValueError as exc:
            refuse(str(exc))
        return
    if not changeable_during_run(name, method_settings, fixed):
        refuse(f"{name} cannot change during a run; schedulable: augmentation, lr, weight_decay, momentum, "
               "the methods' numeric settings (e.g. kd.temperature) and kind.param candidate parameters")
    try:
        if kind == "candidate":
            numeric_params()[name].check(value, name.split(".")[0])
        elif kind == "train":
            type(cfg.student.train).model_validate({**cfg.student.train.model_dump(), name: value})
        else:
            section, field = name.split(".", 1)
            section_cfg = cfg.section(section)
            type(section_cfg).model_validate({**section_cfg.model_dump(), field: value})
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        refuse(str(exc).splitlines()[-1].strip() if "validation error" in str(exc) else str(exc))


# ---------------------------------------------------------------- on a runner, during a run

def value_of(runner, name: str) -> Any:
    """The value `name` has on `runner` (an EpochRunner) now; None where it does not apply."""
    kind, (section, _, field) = value_kind(name), name.partition(".")
    if kind == "augmentation":
        return runner.candidate.id if runner.candidate is not None else None
    if kind == "train":
        return getattr(runner.train_cfg, name)
    if kind == "section":
        return getattr(runner.cfg.section(section), field)
    if runner.candidate is not None and runner.candidate.kind == section:
        return runner.candidate.params.get(field)
    return None


def set_values(runner, values: dict[str, Any]) -> None:
    """Switch `runner` to `values` from its next batch on: the augmentation first, then its
    parameters, the optimiser's lr / weight decay / momentum, the method's settings."""
    if "augmentation" in values and runner.candidate is not None:
        runner.candidate = parse_candidate(values["augmentation"])
        runner.cfg.section(runner.method_section).augmentation = runner.candidate.id
    if runner.candidate is not None:
        runner.candidate = with_values(runner.candidate, values)
    for name, value in values.items():
        section, _, field = name.partition(".")
        if value_kind(name) == "train":
            setattr(runner.train_cfg, name, value)
        elif value_kind(name) == "section" and field != "augmentation":
            setattr(runner.cfg.section(section), field, value)
    runner.apply_optimiser_settings()


CURVE_PREFIXES = ("train_", "val_", "test_")  # the per-epoch metrics a lineage carries


class RunValues:
    """A run's changing values: the config's `schedule:` steps it replays, the names it records
    every epoch (`track`: the schedule's, or PBT's mutations), and that record, one row per epoch
    (`log`); and every epoch's metrics (`curves`, with the tracked values beside them). Both are
    saved with the checkpoint, so a PBT exploit copies the donor's: the lineage of the network,
    every epoch of it, even those a member skipped by taking a donor's later checkpoint; and a
    resumed run has the epochs its checkpoint holds, even those a killed driver never logged."""

    def __init__(self, schedule_steps: Iterable = ()):
        self.steps = list(schedule_steps)
        self.tracked: tuple[str, ...] = ()
        self.log: list[dict[str, Any]] = []
        self.curves: list[dict[str, float]] = []
        self.track(name for step in self.steps for name in step.values)

    def track(self, names: Iterable[str]) -> None:
        """Record these names' values every epoch (plus the augmentation)."""
        names = list(names)
        if names:
            names.insert(0, "augmentation")
        self.tracked = tuple(dict.fromkeys([*self.tracked, *names]))

    def scheduled(self, epoch: int) -> dict[str, Any]:
        """The schedule's values in force at `epoch` (later steps override earlier ones)."""
        values: dict[str, Any] = {}
        for step in self.steps:
            if step.epoch <= epoch:
                values.update(step.values)
        return values

    def before_epoch(self, runner) -> None:
        """Switch to the values the schedule sets for the runner's next epoch."""
        scheduled = self.scheduled(runner.epoch + 1)
        if scheduled and scheduled != {k: value_of(runner, k) for k in scheduled}:
            set_values(runner, scheduled)

    def after_epoch(self, runner, metrics: dict[str, Any]) -> dict[str, float]:
        """Record the epoch's metrics, and its values where names are tracked; returns the numeric
        values as `schedule.NAME` metrics."""
        self.curves.append({"epoch": runner.epoch, "lr": metrics["lr"],
                            **{k: v for k, v in metrics.items() if k.startswith(CURVE_PREFIXES)}})
        if not self.tracked:
            return {}
        values = {name: value for name in self.tracked if (value := value_of(runner, name)) is not None}
        self.log.append({"epoch": runner.epoch, **values})
        scheduled = {f"schedule.{k}": v for k, v in values.items() if isinstance(v, (int, float))}
        self.curves[-1].update(scheduled)
        return scheduled

    def state_dict(self) -> dict[str, Any]:
        return {"schedule_log": [dict(row) for row in self.log], "lineage_curves": [dict(row) for row in self.curves]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.log = [dict(row) for row in state.get("schedule_log", [])]
        self.curves = [dict(row) for row in state.get("lineage_curves", [])]
