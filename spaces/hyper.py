"""Declarative hyperparameter spaces: one YAML form, read by Optuna (define-by-run) and Ray Tune.

    lr: {loguniform: [0.01, 0.1]}
    weight_decay: {choice: [1.0e-4, 5.0e-4]}
    kd.temperature: {uniform: [2, 6]}
    batch_size: {int: [32, 128]}
    kd.ce_weight: 0.1          # a constant
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Collection, Mapping

from augtune.spaces import candidates

# names every method reads from its trial config (student.train); a method adds its own settings
# (e.g. kd.temperature, declared by its registry entry) and `kind.param` names (e.g. cutmix.alpha)
# set that parameter of the trial's candidate when it is of that kind
TRAIN_HYPERPARAMETERS = ("lr", "weight_decay", "momentum", "batch_size", "epochs")
# what cannot change in the middle of a run (PBT, replayed schedules): the data order and the length
FIXED_DURING_RUN = ("batch_size", "epochs")


def is_known(name: str, method_settings: Collection[str] = ()) -> bool:
    return name in TRAIN_HYPERPARAMETERS or name in method_settings or name in candidates.numeric_params()


def changeable_during_run(name: str, method_settings: Collection[str] = (), fixed: Collection[str] = ()) -> bool:
    return is_known(name, method_settings) and name not in FIXED_DURING_RUN and name not in fixed


def check_names(spec: Mapping[str, Any], method_settings: Collection[str], method: str) -> None:
    """Refuse names that are neither a training setting, a setting of `method` nor kind.param."""
    for name in spec:
        if not is_known(name, method_settings):
            raise ValueError(f"unknown hyperparameter {name!r} for method {method}; searchable: "
                             f"{', '.join([*TRAIN_HYPERPARAMETERS, *method_settings])}, or kind.param for a numeric "
                             "parameter of a candidate (e.g. cutmix.alpha)")


@dataclass(frozen=True)
class Hyperparameter:
    name: str
    form: str  # loguniform | uniform | int | choice | constant
    args: tuple

    def suggest(self, trial) -> Any:
        """Optuna define-by-run suggestion."""
        if self.form == "loguniform":
            return trial.suggest_float(self.name, *self.args, log=True)
        if self.form == "uniform":
            return trial.suggest_float(self.name, *self.args)
        if self.form == "int":
            return trial.suggest_int(self.name, *self.args)
        if self.form == "choice":
            return trial.suggest_categorical(self.name, list(self.args))
        return self.args[0]

    def extremes(self) -> list:
        """The values a search can reach at its edges: bounds, every choice, the constant."""
        return list(self.args)

    def tune_domain(self):
        from ray import tune  # 1.3 s of import (measured): only a space handed to Tune needs it

        return {"loguniform": lambda: tune.loguniform(*self.args), "uniform": lambda: tune.uniform(*self.args),
                "int": lambda: tune.randint(self.args[0], self.args[1] + 1),
                "choice": lambda: tune.choice(list(self.args)), "constant": lambda: self.args[0]}[self.form]()


def _parse_one(name: str, spec: Any) -> Hyperparameter:
    hyper = _parse_form(name, spec)
    param = candidates.numeric_params().get(name)
    if param is not None:  # the candidate's own bounds are the field bounds
        if param.kind is int and hyper.form in ("uniform", "loguniform"):
            raise ValueError(f"{name} takes whole numbers; use {{int: [low, high]}} or a choice")
        for value in hyper.extremes():
            param.check(value, name.split(".")[0])
    return hyper


def _parse_form(name: str, spec: Any) -> Hyperparameter:
    if not isinstance(spec, Mapping):
        if isinstance(spec, (int, float)) and not isinstance(spec, bool):
            if not math.isfinite(spec):
                raise ValueError(f"{name}: {spec} is not a finite number")
            return Hyperparameter(name, "constant", (spec,))
        raise ValueError(f"{name}: give a number or one of loguniform/uniform/int/choice")
    if len(spec) != 1:
        raise ValueError(f"{name}: give exactly one of loguniform, uniform, int, choice")
    (form, args), = spec.items()
    if form not in ("loguniform", "uniform", "int", "choice"):
        raise ValueError(f"{name}: unknown form {form!r}; use loguniform, uniform, int or choice")
    if not isinstance(args, (list, tuple)) or not args:
        raise ValueError(f"{name}.{form}: give a list")
    if form == "choice":
        if any(isinstance(a, float) and not math.isfinite(a) for a in args):
            raise ValueError(f"{name}.choice: every value must be a finite number, got {list(args)}")
        return Hyperparameter(name, form, tuple(args))
    if len(args) != 2 or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
        raise ValueError(f"{name}.{form}: give [low, high] as numbers")
    if not all(math.isfinite(a) for a in args):
        raise ValueError(f"{name}.{form}: bounds must be finite numbers, got {list(args)}")
    low, high = args
    if not low < high:
        raise ValueError(f"{name}.{form}: low must be below high")
    if form == "loguniform" and low <= 0:
        raise ValueError(f"{name}.loguniform: bounds must be positive")
    if form == "int" and not (float(low).is_integer() and float(high).is_integer()):
        raise ValueError(f"{name}.int: bounds must be integers")
    return Hyperparameter(name, form, (int(low), int(high)) if form == "int" else (float(low), float(high)))


def parse_hyperparameters(spec: Mapping[str, Any]) -> list[Hyperparameter]:
    return [_parse_one(name, value) for name, value in spec.items()]
