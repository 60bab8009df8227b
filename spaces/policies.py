"""A space of composed augmentation policies: a base op, an erasing op and a mixing op per policy.

Declared in a config's `space.policies` (or `DEFAULT_SPACE`) as, per stage, the kinds it may use
and each parameter's allowed values:

    base:  {crop_flip: {}, randaugment: {num_ops: [1, 2, 3], magnitude: [3, 9, 15]}, subpolicy: {...}}
    erase: {none: {}, cutout: {size: [2, 4]}}
    mix:   {none: {}, cutmix_pick: {keep: [0.25, 0.5], pool: [2]}}

`crop_flip` as the base and `none` add no op: the loader's crop+flip view alone. A policy is a
`spaces.candidates.Policy` (or the Candidate of its one stage), with a canonical id. The space
counts its policies, samples N distinct ones reproducibly from a seed (uniform over each stage's
kinds, then over that kind's values: each kind gets its share however many values it has),
suggests one to Optuna define-by-run (conditional: a kind's parameters exist only when it is
chosen), mutates one for PBT (one stage's kind or one parameter one step along its grid), and says
whether a policy lies inside it.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from augtune.spaces.autoaugment import SUBPOLICY_OPS
from augtune.spaces.candidates import (REGISTRY, STAGES, Candidate, Policy, compose, parse_candidate,
                                       stage_of)

NO_OP = {"base": "crop_flip", "erase": "none", "mix": "none"}  # the choice that adds no op to the stage

DEFAULT_SPACE: dict[str, dict[str, dict[str, list]]] = {
    "base": {
        "crop_flip": {},
        "randaugment": {"num_ops": [1, 2, 3], "magnitude": [3, 6, 9, 12, 15]},
        "trivialaugment": {},
        "autoaugment": {},
        "subpolicy": {"op1": list(SUBPOLICY_OPS), "p1": [0.2, 0.5, 0.8], "m1": [2, 5, 8],
                      "op2": list(SUBPOLICY_OPS), "p2": [0.2, 0.5, 0.8], "m2": [2, 5, 8]},
    },
    # pixel sides, for the 16 x 16 embedded default; declare your own for other image sizes
    "erase": {"none": {}, "cutout": {"size": [2, 4, 6, 8]}},
    "mix": {
        "none": {},
        "mixup": {"alpha": [0.2, 0.4, 1.0]},
        "cutmix": {"alpha": [0.5, 1.0]},
        "cutmix_pick": {"keep": [0.25, 0.5, 0.75], "pool": [2, 4]},
    },
}


@dataclass(frozen=True)
class StageChoice:
    """One kind a stage may use, with the values each of its parameters may take (in order)."""

    kind: str  # a registered kind, or the stage's NO_OP
    grid: tuple[tuple[str, tuple], ...] = ()

    @property
    def size(self) -> int:
        return math.prod(len(values) for _, values in self.grid)

    def candidate(self, values: Mapping[str, Any]) -> Optional[Candidate]:
        if self.kind in NO_OP.values():
            return None
        return parse_candidate({"name": self.kind, **values})


class PolicySpace:
    def __init__(self, stages: Mapping[str, Sequence[StageChoice]]):
        self.stages = {name: tuple(stages[name]) for name in STAGES}

    # ------------------------------------------------------------ reading a declaration
    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], where: str = "space.policies") -> "PolicySpace":
        """Validate a declaration; a ValueError names the field (`where.stage.kind.param`)."""
        unknown = set(spec) - set(STAGES)
        if unknown:
            raise ValueError(f"{where}.{sorted(unknown)[0]}: unknown stage; the stages are {', '.join(STAGES)}")
        stages = {}
        for stage in STAGES:
            choices = spec.get(stage, {NO_OP[stage]: {}})
            if not isinstance(choices, Mapping) or not choices:
                raise ValueError(f"{where}.{stage}: give a mapping of kinds to their parameter values, e.g. "
                                 f"{{{NO_OP[stage]}: {{}}}}")
            stages[stage] = tuple(_stage_choice(stage, kind, params, f"{where}.{stage}.{kind}")
                                  for kind, params in choices.items())
        return cls(stages)

    # ------------------------------------------------------------ size, membership
    def size(self) -> int:
        """How many distinct policies the space holds."""
        return math.prod(sum(choice.size for choice in choices) for choices in self.stages.values())

    def _choice_for(self, stage: str, candidate: Optional[Candidate]) -> Optional[StageChoice]:
        kind = NO_OP[stage] if candidate is None else candidate.kind
        return next((c for c in self.stages[stage] if c.kind == kind), None)

    def why_outside(self, policy: Union[Candidate, Policy]) -> Optional[str]:
        """None when `policy` is one of the space's policies, else the reason."""
        by_stage: dict[str, Candidate] = {}
        for op in policy.stages:
            stage = stage_of(op.kind)
            if stage in by_stage or op.kind not in REGISTRY:
                return f"{policy.id} is not a policy of base, erase and mix stages"
            by_stage[stage] = op
        for stage in STAGES:
            op = by_stage.get(stage)
            choice = self._choice_for(stage, op)
            if choice is None:
                allowed = ", ".join(c.kind for c in self.stages[stage])
                return f"its {stage} stage {op.id if op else NO_OP[stage]} is not among the space's ({allowed})"
            if op is None:
                continue
            grid = dict(choice.grid)
            for name, value in op.values:
                if name in grid and value not in grid[name]:
                    return f"{op.kind}.{name} = {value!r} is not among the space's values {list(grid[name])}"
                if name not in grid and value is not None and value != _default(op.kind, name):
                    return f"{op.kind}.{name} = {value!r}: the space keeps {op.kind}.{name} at its default"
        return None

    def __contains__(self, policy: Union[Candidate, Policy]) -> bool:
        return self.why_outside(policy) is None

    # ------------------------------------------------------------ drawing
    def _draw_stage(self, stage: str, rng: np.random.Generator) -> Optional[Candidate]:
        choices = self.stages[stage]
        choice = choices[int(rng.integers(len(choices)))]
        return choice.candidate({name: values[int(rng.integers(len(values)))] for name, values in choice.grid})

    def draw(self, rng: np.random.Generator) -> Union[Candidate, Policy]:
        return compose([op for stage in STAGES if (op := self._draw_stage(stage, rng)) is not None])

    def sample(self, n: int, seed: int = 0) -> list[Union[Candidate, Policy]]:
        """N distinct policies, the same for the same seed (kinds first, then their values)."""
        if n > self.size():
            raise ValueError(f"{n} policies asked for, the space holds {self.size()}")
        rng = np.random.default_rng(seed)
        seen: dict[str, Union[Candidate, Policy]] = {}
        tries = 0
        while len(seen) < n:
            policy = self.draw(rng)
            seen.setdefault(policy.id, policy)
            tries += 1
            if tries > 1000 * n:  # a tiny space nearly exhausted: take what is left in order
                for rest in self.enumerate():
                    seen.setdefault(rest.id, rest)
                    if len(seen) == n:
                        break
        return list(seen.values())

    def enumerate(self):
        """Every policy, in a fixed order (use on small spaces)."""
        def ops(stage):
            for choice in self.stages[stage]:
                names = [name for name, _ in choice.grid]
                for values in itertools.product(*(v for _, v in choice.grid)):
                    yield choice.candidate(dict(zip(names, values)))

        for combo in itertools.product(*(list(ops(stage)) for stage in STAGES)):
            yield compose([op for op in combo if op is not None])

    # ------------------------------------------------------------ Optuna, PBT
    def suggest(self, trial, prefix: str = "policy") -> str:
        """Optuna define-by-run: each stage's kind, then only that kind's parameters. Returns the id."""
        ops = []
        for stage in STAGES:
            choices = {c.kind: c for c in self.stages[stage]}
            kind = trial.suggest_categorical(f"{prefix}.{stage}", list(choices))
            values = {name: trial.suggest_categorical(f"{prefix}.{stage}.{kind}.{name}", list(options))
                      for name, options in choices[kind].grid}
            op = choices[kind].candidate(values)
            if op is not None:
                ops.append(op)
        return compose(ops).id

    def mutate(self, policy: Union[Candidate, Policy], rng: np.random.Generator,
               resample_probability: float = 0.25) -> Union[Candidate, Policy]:
        """A neighbour inside the space: with `resample_probability` a fresh draw; otherwise one stage
        changes, either its kind (a fresh op of another kind) or one parameter one step along its grid."""
        if policy not in self or rng.random() < resample_probability:
            return self.draw(rng)
        ops = {stage_of(op.kind): op for op in policy.stages}
        stage = STAGES[int(rng.integers(len(STAGES)))]
        choice = self._choice_for(stage, ops.get(stage))
        grid = [(name, values) for name, values in choice.grid if len(values) > 1]
        if grid and rng.random() < 0.5:
            name, values = grid[int(rng.integers(len(grid)))]
            current = values.index(ops[stage].params[name])
            step = int(rng.choice([-1, 1])) if 0 < current < len(values) - 1 else (1 if current == 0 else -1)
            ops[stage] = parse_candidate({"name": choice.kind, **ops[stage].params, name: values[current + step]})
        else:
            others = [c for c in self.stages[stage] if c.kind != choice.kind] or [choice]
            other = others[int(rng.integers(len(others)))]
            op = other.candidate({name: values[int(rng.integers(len(values)))] for name, values in other.grid})
            ops.pop(stage, None)
            if op is not None:
                ops[stage] = op
        return compose([ops[stage] for stage in STAGES if stage in ops])

    def describe(self) -> str:
        parts = []
        for stage in STAGES:
            kinds = ", ".join(f"{c.kind}" + (f" ({c.size})" if c.size > 1 else "") for c in self.stages[stage])
            parts.append(f"{stage}: {kinds}")
        return f"{self.size():,} policies = " + " x ".join(parts)


def _default(kind: str, name: str) -> Any:
    return next(p.default for p in REGISTRY[kind].params if p.name == name)


def _stage_choice(stage: str, kind: str, params: Any, where: str) -> StageChoice:
    if kind == NO_OP[stage]:
        if params not in (None, {}):
            raise ValueError(f"{where}: {kind} adds no op and takes no parameters; write {kind}: {{}}")
        return StageChoice(kind)
    if kind not in REGISTRY or kind == "identity":
        raise ValueError(f"{where}: unknown op; choose from {', '.join(_kinds_of(stage))} or {NO_OP[stage]}")
    if stage_of(kind) != stage:
        raise ValueError(f"{where}: {kind} is a {stage_of(kind)} op, not a {stage} op; move it to "
                         f"space.policies.{stage_of(kind)}")
    params = {} if params is None else params
    if not isinstance(params, Mapping):
        raise ValueError(f"{where}: give its parameters as a mapping of name to a list of values")
    declared = {p.name: p for p in REGISTRY[kind].params}
    grid = []
    for name, values in params.items():
        if name not in declared:
            allowed = ", ".join(declared) or "none"
            raise ValueError(f"{where}.{name}: {kind} has no parameter {name!r} (allowed: {allowed})")
        values = _values(values, f"{where}.{name}")
        try:
            checked = tuple(declared[name].check(v, kind) for v in values)
        except ValueError as exc:
            raise ValueError(f"{where}.{name}: {exc}") from None
        if len(set(checked)) != len(checked):
            raise ValueError(f"{where}.{name}: a value is listed twice")
        grid.append((name, checked))
    if "keep" in params and "tau" in params:
        raise ValueError(f"{where}: give keep or tau values, not both (a pick keeps a share or uses a threshold)")
    choice = StageChoice(kind, tuple(grid))
    try:
        choice.candidate({name: values[0] for name, values in grid})
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    return choice


def _values(values: Any, where: str) -> list:
    if isinstance(values, Mapping) and set(values) == {"int"}:
        bounds = values["int"]
        if (not isinstance(bounds, (list, tuple)) or len(bounds) != 2
                or not all(isinstance(b, int) and not isinstance(b, bool) for b in bounds)):
            raise ValueError(f"{where}.int: give [low, high] as whole numbers")
        if bounds[0] > bounds[1]:
            raise ValueError(f"{where}.int: empty range {list(bounds)}; low must not exceed high")
        return list(range(bounds[0], bounds[1] + 1))
    if not isinstance(values, (list, tuple)):
        values = [values]
    if not values:
        raise ValueError(f"{where}: empty list; give at least one value")
    return list(values)


def _kinds_of(stage: str) -> list[str]:
    return [name for name in REGISTRY if name != "identity" and stage_of(name) == stage]


DEFAULT_POLICY_SPACE = PolicySpace.from_spec(DEFAULT_SPACE)
