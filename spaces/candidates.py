"""Named augmentation candidates: declarative specs with stable ids, validated parameters.

A candidate is a kind (registered below) plus parameter values; a policy (`Policy`) composes
up to three of them, one per stage (base, erase, mix), and its id joins theirs with '+'. Its id, e.g.
`cutmix_pick(entropy=teacher,pool=2,keep=0.5)`, names it everywhere: proxy tables, MLflow runs,
reports. `parse_candidate` accepts that string form or a mapping `{name: ..., param: value}`;
a list value (`keep: [0.3, 0.5]`) expands into one candidate per value (`expand_candidates`).

Applying a candidate: `candidate.apply(images, context)` on float images in [0, 1] (the context
holds the generator, the scoring networks and the crop padding);
pick kinds need a scorer (teacher or student forward) to rank pool images by entropy.
"""
from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import torch

from augtune.spaces import autoaugment, moco, ops


@dataclass(frozen=True)
class Param:
    name: str
    kind: type  # int, float or str
    default: Any
    low: Optional[float] = None
    high: Optional[float] = None
    choices: Optional[tuple] = None
    optional: bool = False  # None is allowed (and is the default when default is None)

    def check(self, value: Any, owner: str) -> Any:
        where = f"{owner}.{self.name}"
        if value is None:
            if self.optional:
                return None
            raise ValueError(f"{where} must be set")
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if self.kind is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, self.kind) or isinstance(value, bool):
            raise ValueError(f"{where} must be {self.kind.__name__}, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{where} must be a finite number, got {value!r}")
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{where} must be one of {list(self.choices)}, got {value!r}")
        if self.low is not None and value < self.low or self.high is not None and value > self.high:
            raise ValueError(f"{where} must lie in [{self.low}, {self.high}], got {value!r}")
        return value


@dataclass(frozen=True)
class Context:
    """What a candidate may need besides the images."""

    generator: torch.Generator
    scorers: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] = field(default_factory=dict)
    base_padding: int = 4  # crop padding for this image size (side / 8)
    # when a list: a pick appends, per call, the index in the input batch that each output image
    # was made from (the proxy pairs x' with its x); other kinds keep the batch's order
    sources: Optional[list] = None


@dataclass(frozen=True)
class Kind:
    name: str
    params: tuple[Param, ...]
    apply: Callable[..., torch.Tensor]  # (images, context, **params) -> images
    description: str
    mixes: bool = False

    def needs_scorer(self, values: Mapping[str, Any]) -> Optional[str]:
        return values.get("entropy") if any(p.name == "entropy" for p in self.params) else None


REGISTRY: dict[str, Kind] = {}


def register(kind: Kind) -> Kind:
    REGISTRY[kind.name] = kind
    return kind


# ------------------------------------------------------------------ kinds

def _pick(images: torch.Tensor, ctx: Context, base: Callable[[torch.Tensor], torch.Tensor],
          entropy: str, pool: int, keep: float, tau: Optional[float]) -> torch.Tensor:
    """Draw `pool` independent augmentations of the batch, score them by the entropy of the
    chosen network's softmax (T = 1), keep the `keep` fraction with the highest entropy, or
    every image whose entropy / log C >= tau."""
    if entropy not in ctx.scorers:
        raise RuntimeError(f"pick with entropy={entropy} needs a {entropy} network to score images; "
                           + ("give proxy.student_checkpoint" if entropy == "student" else "load a teacher"))
    candidates = torch.cat([base(images) for _ in range(pool)])
    with torch.no_grad():
        score = ops.normalised_entropy(ctx.scorers[entropy](candidates))
    if tau is None:
        chosen = ops.select_by_entropy(score, keep=max(1, round(keep * len(candidates))))
    else:
        chosen = ops.select_by_entropy(score, threshold=tau)
    if ctx.sources is not None:
        ctx.sources.append(chosen % len(images))
    return candidates[chosen]


_PICK_PARAMS = (
    Param("entropy", str, "teacher", choices=("teacher", "student")),
    Param("pool", int, 2, low=1, high=16),
    Param("keep", float, 0.5, low=0.01, high=1.0, optional=True),
    Param("tau", float, None, low=0.0, high=1.0, optional=True),
)

register(Kind("identity", (), lambda x, ctx: x, "x' = x"))
register(Kind("flip", (Param("p", float, 0.5, 0.0, 1.0),),
              lambda x, ctx, p: ops.random_flip(x, ctx.generator, p), "horizontal flip per sample"))
register(Kind("crop_flip", (Param("padding", int, None, 0, 64, optional=True),),
              lambda x, ctx, padding: ops.random_flip(
                  ops.random_crop(x, ctx.generator, ctx.base_padding if padding is None else padding),
                  ctx.generator), "zero-pad crop then flip; padding defaults to side/8"))
register(Kind("cutout", (Param("size", int, None, 1, 512, optional=True),),
              lambda x, ctx, size: ops.cutout(x, ctx.generator, size or max(1, x.shape[-1] // 4)),
              "one square hole per sample; side defaults to a quarter of the image side"))
register(Kind("autoaugment", (), lambda x, ctx: autoaugment.auto_augment(x, ctx.generator),
              "AutoAugment CIFAR-10 policy, one sub-policy per sample"))
register(Kind("randaugment", (Param("num_ops", int, 2, 1, 5), Param("magnitude", int, 9, 0, 30)),
              lambda x, ctx, num_ops, magnitude: autoaugment.rand_augment(x, ctx.generator, num_ops, magnitude),
              "RandAugment, ops and signs per sample"))
register(Kind("trivialaugment", (), lambda x, ctx: autoaugment.trivial_augment(x, ctx.generator),
              "TrivialAugmentWide, one op and magnitude per sample"))
register(Kind("moco_v2", (), lambda x, ctx: moco.moco_v2(x, ctx.generator),
              "MoCo-v2 view: resized crop, colour jitter, grayscale, blur, flip; per sample"))
_STEP_PARAMS = tuple(p for i in (1, 2) for p in (
    Param(f"op{i}", str, "Rotate", choices=tuple(autoaugment.SUBPOLICY_OPS)),
    Param(f"p{i}", float, 0.5, 0.0, 1.0),
    Param(f"m{i}", int, 5, 0, 9)))
register(Kind("subpolicy", _STEP_PARAMS,
              lambda x, ctx, op1, p1, m1, op2, p2, m2: autoaugment.sub_policy(
                  x, ctx.generator, [(op1, p1, m1), (op2, p2, m2)]),
              "AutoAugment/PBA sub-policy: two ops, each with its probability and magnitude bin (0-9), per sample"))
register(Kind("mixup", (Param("alpha", float, 1.0, 0.01, 10.0),),
              lambda x, ctx, alpha: ops.mixup(x, ctx.generator, alpha).images,
              "mixup with a per-sample lambda ~ Beta(alpha, alpha)", mixes=True))
register(Kind("cutmix", (Param("alpha", float, 1.0, 0.01, 10.0),),
              lambda x, ctx, alpha: ops.cutmix(x, ctx.generator, alpha).images,
              "CutMix with per-sample boxes; lambda = exact kept area", mixes=True))
register(Kind("cutmix_pick", _PICK_PARAMS,
              lambda x, ctx, entropy, pool, keep, tau: _pick(
                  x, ctx, lambda b: ops.cutmix(b, ctx.generator).images, entropy, pool, keep, tau),
              "CutMixPick: the highest-entropy CutMix images of a pool", mixes=True))


def _generic_pick(x, ctx, base, entropy, pool, keep, tau):
    inner = REGISTRY[base]
    defaults = {p.name: p.default for p in inner.params}
    return _pick(x, ctx, lambda b: inner.apply(b, ctx, **defaults), entropy, pool, keep, tau)


register(Kind("pick", (Param("base", str, "cutout", choices=tuple(
    n for n in REGISTRY if n not in ("identity", "cutmix_pick", "subpolicy"))),) + _PICK_PARAMS,
    _generic_pick, "DA pick: the highest-entropy images of a pool of any base augmentation"))

# The nine schemes compared by Wang et al. (NeurIPS 2022), on top of crop+flip.
PAPER_SCHEMES = ["identity", "flip", "crop_flip", "cutout", "autoaugment", "mixup", "cutmix",
                 "cutmix_pick", "cutmix_pick(entropy=student)"]
# The recipe every sweep compares its choice with unless the config names another (search.baseline)
DEFAULT_BASELINE = "cutmix_pick(entropy=teacher,pool=2,keep=0.5)"
# What a space holds unless the config says otherwise: every scheme that needs no student.
DEFAULT_CANDIDATES = [c for c in PAPER_SCHEMES if "student" not in c] + ["randaugment", "trivialaugment"]


# ------------------------------------------------------------------ candidates

@dataclass(frozen=True)
class Candidate:
    kind: str
    values: tuple[tuple[str, Any], ...]

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.values)

    @property
    def id(self) -> str:
        shown = [f"{k}={_format(v)}" for k, v in self.values if v is not None]
        return f"{self.kind}({','.join(shown)})" if shown else self.kind

    @property
    def scorer(self) -> Optional[str]:
        """'teacher' or 'student' when applying needs that network, else None."""
        return REGISTRY[self.kind].needs_scorer(self.params)

    @property
    def mixes(self) -> bool:
        return REGISTRY[self.kind].mixes or self.params.get("base") in ("mixup", "cutmix")

    @property
    def stages(self) -> tuple["Candidate", ...]:
        """The ops applied in order: this one (none for identity)."""
        return () if self.kind == "identity" else (self,)

    def numeric_value(self, name: str) -> Any:
        """The value of `kind.param` (e.g. `cutmix.alpha`) when this candidate is of that kind."""
        kind, _, param = name.partition(".")
        return self.params.get(param) if kind == self.kind else None

    def apply(self, images: torch.Tensor, ctx: Context) -> torch.Tensor:
        return REGISTRY[self.kind].apply(images, ctx, **self.params)

    def __str__(self) -> str:
        return self.id


# A policy composes at most one op of each stage, in this order, on the loader's crop+flip view:
# a base op (geometric / colour), an erasing op, a mixing op (which may pick by entropy).
STAGES = ("base", "erase", "mix")
ERASE_KINDS = ("cutout",)


def stage_of(kind: str) -> str:
    if kind in ERASE_KINDS:
        return "erase"
    return "mix" if REGISTRY[kind].mixes or kind == "pick" else "base"


@dataclass(frozen=True)
class Policy:
    """Stages applied one after the other: `randaugment(num_ops=2,magnitude=9)+cutout(size=4)+cutmix(alpha=1.0)`.
    The id joins the stages' ids with '+' in stage order, so it is canonical; a policy of one stage
    is that candidate itself (`compose` returns the Candidate), so every candidate id keeps its meaning."""

    stages: tuple[Candidate, ...]
    kind = "policy"

    @property
    def id(self) -> str:
        return "+".join(stage.id for stage in self.stages)

    @property
    def scorer(self) -> Optional[str]:
        return next((stage.scorer for stage in self.stages if stage.scorer), None)

    @property
    def mixes(self) -> bool:
        return any(stage.mixes for stage in self.stages)

    @property
    def params(self) -> dict[str, Any]:
        return {f"{stage.kind}.{k}": v for stage in self.stages for k, v in stage.values}

    def numeric_value(self, name: str) -> Any:
        return next((v for stage in self.stages if (v := stage.numeric_value(name)) is not None), None)

    def apply(self, images: torch.Tensor, ctx: Context) -> torch.Tensor:
        # stages before a pick keep the batch's order, so the pick's sources still index x
        for stage in self.stages:
            images = stage.apply(images, ctx)
        return images

    def __str__(self) -> str:
        return self.id


def compose(stages: Sequence[Candidate]) -> Union[Candidate, Policy]:
    """The policy of these stages (identity stages dropped); one stage is that candidate, none is
    identity. Refuses two ops of one stage and stages out of order (ids would not be canonical)."""
    stages = tuple(stage for stage in stages if stage.kind != "identity")
    order = [STAGES.index(stage_of(stage.kind)) for stage in stages]
    for (first, a), (second, b) in zip(zip(order, stages), zip(order[1:], stages[1:])):
        if second <= first:
            raise ValueError(f"policy {'+'.join(c.id for c in stages)}: {b.id} is a {STAGES[second]}-stage op and "
                             f"cannot follow {a.id} (a {STAGES[first]}-stage op); give at most one op per stage, in the "
                             f"order {' + '.join(STAGES)}")
    if not stages:
        return parse_candidate("identity")
    return stages[0] if len(stages) == 1 else Policy(stages)


def _format(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def _literal(text: str) -> Any:
    text = text.strip()
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return None if text in ("None", "null") else text


_ID = re.compile(r"^\s*([a-z_]+)\s*(?:\((.*)\))?\s*$")


def parse_candidate(spec: Union[str, Mapping[str, Any]]) -> Union[Candidate, Policy]:
    """'cutmix_pick(keep=0.5,pool=2)' or {'name': 'cutmix_pick', 'keep': 0.5} -> Candidate;
    'randaugment(num_ops=2,magnitude=9)+cutmix(alpha=1.0)' -> Policy (stages joined by '+')."""
    if isinstance(spec, str) and "+" in spec:
        parts = [part.strip() for part in spec.split("+")]
        if not all(parts) or "identity" in parts:
            raise ValueError(f"cannot read policy {spec!r}; join op ids with '+', e.g. "
                             "randaugment(num_ops=2,magnitude=9)+cutout(size=4)+cutmix(alpha=1.0)")
        return compose([parse_candidate(part) for part in parts])
    if isinstance(spec, str):
        match = _ID.match(spec)
        if not match:
            raise ValueError(f"cannot read augmentation {spec!r}; write name or name(param=value,...)")
        name, args = match.group(1), match.group(2)
        values = {}
        for item in filter(None, (a.strip() for a in (args or "").split(","))):
            if "=" not in item:
                raise ValueError(f"augmentation {spec!r}: write parameters as param=value")
            key, value = item.split("=", 1)
            values[key.strip()] = _literal(value)
    elif isinstance(spec, Mapping):
        values = dict(spec)
        name = values.pop("name", None)
        if not isinstance(name, str):
            raise ValueError(f"augmentation {dict(spec)!r} needs a 'name'")
    else:
        raise ValueError(f"an augmentation is a string or a mapping, got {spec!r}")
    if name not in REGISTRY:
        raise ValueError(f"unknown augmentation {name!r}; choose one of: {', '.join(REGISTRY)}")
    kind = REGISTRY[name]
    known = {p.name for p in kind.params}
    unknown = set(values) - known
    if unknown:
        allowed = ", ".join(sorted(known)) or "none"
        raise ValueError(f"augmentation {name!r} has no parameter {sorted(unknown)[0]!r} (allowed: {allowed})")
    if values.get("tau") is not None:  # the threshold form replaces the keep ratio
        if values.get("keep") is not None:
            raise ValueError(f"augmentation {name!r}: give keep or tau, not both")
        values["keep"] = None
    checked = tuple((p.name, p.check(values.get(p.name, p.default), name)) for p in kind.params)
    if name in ("cutmix_pick", "pick") and dict(checked)["keep"] is None and dict(checked)["tau"] is None:
        raise ValueError(f"augmentation {name!r}: give keep or tau")
    return Candidate(name, checked)


def numeric_params() -> dict[str, Param]:
    """Every numeric candidate parameter as `kind.param` (e.g. `cutmix.alpha`, `randaugment.magnitude`):
    the names a search or a schedule can set for the candidate of that kind."""
    return {f"{kind.name}.{p.name}": p for kind in REGISTRY.values() for p in kind.params
            if p.kind in (int, float)}


def with_values(candidate: Union[Candidate, Policy], values: Mapping[str, Any]) -> Union[Candidate, Policy]:
    """`candidate` with the `kind.param` entries of `values` that belong to its kind set (other
    entries are ignored); a policy sets them on its stage of that kind. A parameter the candidate
    leaves unset stays unset: a threshold pick (tau) is not turned into a keep-ratio pick by a
    `cutmix_pick.keep` value."""
    if isinstance(candidate, Policy):
        return Policy(tuple(with_values(stage, values) for stage in candidate.stages))
    prefix = f"{candidate.kind}."
    chosen = {k[len(prefix):]: v for k, v in values.items() if k.startswith(prefix)}
    if not chosen:
        return candidate
    params = REGISTRY[candidate.kind].params
    updated = tuple((p.name, p.check(chosen[p.name], candidate.kind) if p.name in chosen and value is not None
                     else value) for p, (_, value) in zip(params, candidate.values))
    return Candidate(candidate.kind, updated)


def expand_candidates(specs: Sequence[Union[str, Mapping[str, Any]]]) -> list[Union[Candidate, Policy]]:
    """Parse specs; a mapping with list values becomes one candidate per combination.
    Duplicates (same id) are an error: they would be scored and logged twice."""
    out: list[Candidate] = []
    for spec in specs:
        if isinstance(spec, Mapping) and any(isinstance(v, (list, tuple)) for v in spec.values()):
            keys = list(spec)
            grids = [v if isinstance(v, (list, tuple)) else [v] for v in spec.values()]
            out += [parse_candidate(dict(zip(keys, combo))) for combo in itertools.product(*grids)]
        else:
            out.append(parse_candidate(spec))
    seen: set[str] = set()
    for c in out:
        if c.id in seen:
            raise ValueError(f"augmentation {c.id} is listed twice")
        seen.add(c.id)
    return out
