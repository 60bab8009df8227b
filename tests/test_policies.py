"""The policy space: canonical ids, the first table's ids unchanged, reproducible sampling, per-sample
draws in every stage, Optuna's conditional space, PBT mutation inside the space, bad declarations."""
import gzip
import json
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch

from augtune.spaces import autoaugment, ops
from augtune.spaces.candidates import REGISTRY, Candidate, Context, Policy, compose, parse_candidate
from augtune.spaces.policies import DEFAULT_POLICY_SPACE, DEFAULT_SPACE, PolicySpace

TABLE = Path(__file__).resolve().parents[1] / "benchmarks" / "tables" / "digits-kd-lc.json.gz"
SMALL = {"base": {"crop_flip": {}, "randaugment": {"num_ops": [1, 2], "magnitude": {"int": [4, 6]}}},
         "erase": {"none": {}, "cutout": {"size": [2, 4]}},
         "mix": {"none": {}, "cutmix": {"alpha": [1.0]}}}


torch.manual_seed(0)
TEACHER = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 10))


def _context(seed=0, sources=None, teacher=TEACHER):
    return Context(torch.Generator().manual_seed(seed), {"teacher": teacher}, 2, sources=sources)


def _distinct_images(b=32, side=16):
    base = torch.arange(side * side, dtype=torch.float).view(1, 1, side, side) / (2 * side * side)
    return base.repeat(b, 3, 1, 1) + torch.arange(b).view(b, 1, 1, 1) / (4 * b)


def test_policy_ids_round_trip():
    for policy in DEFAULT_POLICY_SPACE.sample(300, seed=11):
        again = parse_candidate(policy.id)
        assert again == policy and again.id == policy.id
        assert isinstance(policy, Policy) == ("+" in policy.id)


def test_every_first_table_id_parses_to_the_same_operations():
    ids = json.loads(gzip.decompress(TABLE.read_bytes()))["regimes"]["lt100-if10-r8"]["candidates"]
    x = _distinct_images(16)
    for cid in ids:
        candidate = parse_candidate(cid)
        assert isinstance(candidate, Candidate) and candidate.id == cid
        assert compose([candidate]) == candidate  # a one-stage policy is the candidate itself
        direct = REGISTRY[candidate.kind].apply(x, _context(3), **candidate.params)
        assert torch.equal(candidate.apply(x, _context(3)), direct)


def test_default_space_holds_over_a_thousand_policies_and_counts_exactly():
    assert DEFAULT_POLICY_SPACE.size() >= 1000
    small = PolicySpace.from_spec(SMALL)
    everything = [p.id for p in small.enumerate()]
    assert len(everything) == len(set(everything)) == small.size() == (1 + 6) * 3 * 2


def test_sampling_is_reproducible_distinct_and_inside_the_space():
    first = [p.id for p in DEFAULT_POLICY_SPACE.sample(64, seed=5)]
    assert first == [p.id for p in DEFAULT_POLICY_SPACE.sample(64, seed=5)]
    assert first != [p.id for p in DEFAULT_POLICY_SPACE.sample(64, seed=6)]
    assert len(set(first)) == 64
    assert all(parse_candidate(p) in DEFAULT_POLICY_SPACE for p in first)
    small = PolicySpace.from_spec(SMALL)
    assert sorted(p.id for p in small.sample(small.size(), seed=0)) == sorted(p.id for p in small.enumerate())
    with pytest.raises(ValueError, match="holds 42"):
        small.sample(43)


def test_sampling_gives_each_kind_of_a_stage_its_share():
    rng = np.random.default_rng(1)
    drawn = [DEFAULT_POLICY_SPACE.draw(rng) for _ in range(1000)]
    kinds = [p.stages[0].kind if p.stages and p.stages[0].kind in DEFAULT_SPACE["base"] else "crop_flip"
             for p in drawn]
    counts = {k: kinds.count(k) for k in DEFAULT_SPACE["base"]}
    # 5 base kinds, uniform: each about 200 of 1000 although subpolicy has 15,876 settings
    assert all(150 < c < 250 for c in counts.values()), counts


def test_a_policy_applies_its_stages_in_order_with_the_same_draws():
    policy = parse_candidate("subpolicy(op1=Rotate,p1=0.5,m1=8,op2=Color,p2=0.5,m2=5)+cutout(size=4)+cutmix(alpha=1.0)")
    x = _distinct_images()
    by_hand_ctx = _context(7)
    by_hand = x
    for stage in policy.stages:
        by_hand = stage.apply(by_hand, by_hand_ctx)
    assert torch.equal(policy.apply(x, _context(7)), by_hand)


@pytest.mark.parametrize("stage", ["subpolicy(op1=Rotate,p1=0.5,m1=8,op2=ShearX,p2=0.5,m2=8)",
                                   "randaugment(num_ops=1,magnitude=12)", "trivialaugment", "autoaugment",
                                   "cutout(size=4)"])
def test_base_and_erase_stages_draw_per_sample(stage):
    same = _distinct_images(1).repeat(64, 1, 1, 1)
    out = parse_candidate(stage + "+mixup(alpha=1.0)").apply(same, _context(1))  # mixing copies changes nothing
    distinct = {tuple(o.flatten().tolist()) for o in out}
    assert len(distinct) > 8


def test_mix_stage_draws_per_sample_and_a_pick_reports_its_sources():
    x = _distinct_images(32)
    sources = []
    out = parse_candidate("cutout(size=2)+cutmix_pick(pool=2,keep=0.5)").apply(x, _context(2, sources))
    assert out.shape == x.shape and len(sources) == 1 and sources[0].shape == (32,)
    generator = torch.Generator().manual_seed(0)
    kept = ops.cutmix(x, generator).lam
    assert len(set(kept.tolist())) > 8  # per-sample boxes


def test_subpolicy_probability_and_magnitude():
    x = _distinct_images(200)
    always = autoaugment.sub_policy(x, torch.Generator().manual_seed(0), [("Invert", 1.0, 0), ("Invert", 0.0, 0)])
    assert torch.allclose(always, 1 - x)
    half = autoaugment.sub_policy(x, torch.Generator().manual_seed(0), [("Invert", 0.5, 0), ("Invert", 0.0, 0)])
    inverted = sum(bool(torch.allclose(h, 1 - xi)) for h, xi in zip(half, x))
    assert 60 < inverted < 140
    table = autoaugment.magnitude_table(10, 16)
    assert float(table["Rotate"][9]) == pytest.approx(30.0) and float(table["Rotate"][0]) == 0.0


def test_optuna_conditional_space_suggests_only_the_chosen_kinds_parameters():
    space = PolicySpace.from_spec(SMALL)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=5))
    seen = set()
    for _ in range(25):
        trial = study.ask()
        policy = parse_candidate(space.suggest(trial))
        assert policy in space
        seen.add(policy.id)
        base = trial.params["policy.base"]
        own = {k for k in trial.params if k.startswith("policy.base.")}
        assert own == ({"policy.base.randaugment.num_ops", "policy.base.randaugment.magnitude"}
                       if base == "randaugment" else set())
        study.tell(trial, float(len(policy.id)))
    assert len(seen) > 5


def test_pbt_mutation_stays_inside_the_space_and_moves():
    rng = np.random.default_rng(0)
    policy = DEFAULT_POLICY_SPACE.sample(1, seed=3)[0]
    moved = 0
    for _ in range(200):
        neighbour = DEFAULT_POLICY_SPACE.mutate(policy, rng, resample_probability=0.0)
        assert neighbour in DEFAULT_POLICY_SPACE
        moved += neighbour.id != policy.id
        policy = neighbour
    assert moved > 150


@pytest.mark.parametrize("spec, field", [
    ({"base": {"randaugment": {"magnitude": []}}}, "space.policies.base.randaugment.magnitude"),
    ({"base": {"randaugment": {"magnitude": {"int": [9, 3]}}}}, "space.policies.base.randaugment.magnitude.int"),
    ({"base": {"rotate_everything": {}}}, "space.policies.base.rotate_everything"),
    ({"base": {"randaugment": {"magnitude": [40]}}}, "space.policies.base.randaugment.magnitude"),
    ({"base": {"subpolicy": {"op1": ["Teleport"]}}}, "space.policies.base.subpolicy.op1"),
    ({"erase": {"cutmix": {}}}, "space.policies.erase.cutmix"),
    ({"mix": {"cutmix_pick": {"keep": [0.5], "tau": [0.6]}}}, "space.policies.mix.cutmix_pick"),
    ({"mix": {}}, "space.policies.mix"),
    ({"blend": {}}, "space.policies.blend"),
])
def test_bad_declarations_name_the_field(spec, field):
    with pytest.raises(ValueError) as info:
        PolicySpace.from_spec(spec)
    assert str(info.value).startswith(field + ":")


def test_membership_names_what_lies_outside():
    space = PolicySpace.from_spec(SMALL)
    assert space.why_outside(parse_candidate("cutout(size=4)+cutmix(alpha=1.0)")) is None
    assert "cutout.size = 6" in space.why_outside(parse_candidate("cutout(size=6)"))
    assert "mix stage mixup" in space.why_outside(parse_candidate("mixup(alpha=1.0)"))
