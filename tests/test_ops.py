"""Per-sample augmentation ops: independence, exact CutMix areas, hole sizes, entropy picks."""
import math

import pytest
import torch

from augtune.spaces import autoaugment, ops
from augtune.spaces.candidates import Context, expand_candidates, parse_candidate


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _distinct_images(b=16, side=16):
    # every pixel of an image different, so each sample's transformation can be read back; every
    # image shifted by its own small offset, so samples are distinct too
    base = torch.arange(side * side, dtype=torch.float).view(1, 1, side, side) / (2 * side * side)
    return base.repeat(b, 3, 1, 1) + torch.arange(b).view(b, 1, 1, 1) / (4 * b)


def test_flip_differs_per_sample():
    x = _distinct_images(64)
    out = ops.random_flip(x, _gen())
    flipped = torch.tensor([torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x)])
    kept = torch.tensor([torch.equal(o, xi) for o, xi in zip(out, x)])
    assert bool((flipped | kept).all()) and 10 < int(flipped.sum()) < 54


def test_crop_offsets_differ_per_sample_and_match_a_window():
    x = _distinct_images(32)
    out = ops.random_crop(x, _gen(), padding=4)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    offsets = []
    for i in range(32):
        match = [(dy, dx) for dy in range(9) for dx in range(9)
                 if torch.equal(out[i], padded[i, :, dy:dy + 16, dx:dx + 16])]
        assert match, "each output is one window of the padded image"
        offsets.append(match[0])
    assert len(set(offsets)) > 10


def test_cutout_hole_size_clipped_and_per_sample():
    x = torch.ones(200, 1, 16, 16)
    out = ops.cutout(x, _gen(), size=4)
    holes = (out == 0)[:, 0]
    areas = holes.flatten(1).sum(1)
    assert int(areas.max()) == 16  # a full 4x4 hole when inside
    assert int(areas.min()) >= 4   # the centre is always inside: at least 2x2 survives clipping
    for hole in holes:
        rows, cols = hole.any(1).nonzero().flatten(), hole.any(0).nonzero().flatten()
        # the hole is one rectangle: side 4 unless it touches a border
        assert int(hole.sum()) == len(rows) * len(cols)
        if 0 < rows.min() and rows.max() < 15:
            assert len(rows) == 4
    centres = {(int(h.nonzero()[:, 0].float().mean()), int(h.nonzero()[:, 1].float().mean())) for h in holes}
    assert len(centres) > 50


def test_cutmix_lambda_is_exact_kept_area_and_per_sample():
    b = 64
    x = torch.arange(b, dtype=torch.float).view(b, 1, 1, 1).expand(b, 3, 20, 20).contiguous()
    mixed = ops.cutmix(x, _gen(1))
    own = (mixed.images == x).all(1).flatten(1).float().mean(1)
    assert torch.allclose(mixed.lam, own)
    assert (mixed.partner != torch.arange(b)).all(), "no sample is mixed with itself"
    from_partner = (mixed.images == x[mixed.partner]).all(1).flatten(1).float().mean(1)
    assert torch.allclose(from_partner, 1 - mixed.lam)
    assert len(set(mixed.lam.tolist())) > 20


def test_mixup_weights_per_sample():
    x = torch.rand(32, 3, 8, 8)
    m = ops.mixup(x, _gen(2))
    w = m.lam.view(-1, 1, 1, 1)
    assert torch.allclose(m.images, w * x + (1 - w) * x[m.partner])
    assert m.lam.std() > 0.1
    beta = ops.mixup(x, _gen(3), alpha=0.4).lam
    assert ((beta >= 0) & (beta <= 1)).all()


def test_derangement_has_no_fixed_point():
    for n in (2, 3, 17, 64):
        p = ops.derangement(n, _gen(n), "cpu")
        assert sorted(p.tolist()) == list(range(n))
        assert (p != torch.arange(n)).all()


def test_select_by_entropy_keep_and_threshold():
    logits = torch.randn(40, 10) * torch.linspace(0.1, 5, 40).view(-1, 1)
    h = ops.normalised_entropy(logits)
    p = torch.softmax(logits, 1)
    expected = -(p * p.log()).sum(1) / math.log(10)
    assert torch.allclose(h, expected, atol=1e-6)
    top = ops.select_by_entropy(h, keep=7)
    assert set(top.tolist()) == set(torch.argsort(h, descending=True)[:7].tolist())
    above = ops.select_by_entropy(h, threshold=0.5)
    assert set(above.tolist()) == set((h >= 0.5).nonzero().flatten().tolist())


def test_cutmix_pick_keeps_requested_count_of_highest_entropy():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10))
    scored = {}

    def scorer(images):
        logits = net(images) * 3
        scored["logits"], scored["images"] = logits, images
        return logits

    x = torch.rand(16, 3, 8, 8)
    ctx = Context(_gen(), {"teacher": scorer})
    out = parse_candidate("cutmix_pick(keep=0.25,pool=4)").apply(x, ctx)
    assert len(scored["images"]) == 64 and len(out) == 16
    h = ops.normalised_entropy(scored["logits"])
    expected = scored["images"][torch.argsort(h, descending=True)[:16]]
    assert torch.equal(torch.sort(out.flatten(1), 0).values, torch.sort(expected.flatten(1), 0).values)
    thresh = parse_candidate("cutmix_pick(tau=0.9,pool=2)").apply(x, ctx)
    h = ops.normalised_entropy(scored["logits"])
    assert len(thresh) == int((h >= 0.9).sum()) or (len(thresh) == 1 and int((h >= 0.9).sum()) == 0)


def test_student_pick_without_student_says_so():
    with pytest.raises(RuntimeError, match="student"):
        parse_candidate("cutmix_pick(entropy=student)").apply(torch.rand(4, 3, 8, 8), Context(_gen(), {}))


def test_candidate_ids_roundtrip_and_grid_expansion():
    for spec in ["identity", "cutout(size=8)", "cutmix_pick(keep=0.5,pool=2)", "cutmix_pick(tau=0.6)",
                 "pick(base=autoaugment,keep=0.3)", "randaugment(num_ops=1,magnitude=5)"]:
        c = parse_candidate(spec)
        assert parse_candidate(c.id) == c
    grid = expand_candidates([{"name": "cutmix_pick", "keep": [0.3, 0.5], "pool": [2, 4]}])
    assert len(grid) == 4 and len({c.id for c in grid}) == 4
    with pytest.raises(ValueError, match="listed twice"):
        expand_candidates(["flip", "flip(p=0.5)"])
    with pytest.raises(ValueError, match="keep or tau"):
        parse_candidate("cutmix_pick(keep=0.5,tau=0.5)")


@pytest.mark.parametrize("name", ["autoaugment", "randaugment", "trivialaugment", "crop_flip", "cutout",
                                  "mixup", "cutmix", "flip", "pick(base=trivialaugment)"])
def test_every_op_keeps_shape_range_and_varies_per_sample(name):
    x = torch.rand(64, 3, 16, 16)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(768, 10))
    out = parse_candidate(name).apply(x, Context(_gen(5), {"teacher": net}))
    assert out.shape[1:] == x.shape[1:] and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 1
    assert len(out) == len(x)
    changed = (out != x).flatten(1).any(1)
    assert changed.float().mean() > 0.2


def _to_uint8(x):
    return (x * 255).round().to(torch.uint8)


def test_colour_ops_match_torchvision_per_image():
    import torchvision.transforms.v2.functional as F

    x = _to_uint8(torch.rand(6, 3, 12, 12)).float() / 255
    for i in range(6):
        img = _to_uint8(x[i])
        ours = _to_uint8(autoaugment.equalize(x[i:i + 1], None)[0])
        assert (ours.int() - F.equalize(img).int()).abs().max() <= 1
        ours = _to_uint8(autoaugment.posterize(x[i:i + 1], torch.tensor([3.0]))[0])
        assert torch.equal(ours, F.posterize(img, 3))
        ours = _to_uint8(autoaugment.solarize(x[i:i + 1], torch.tensor([0.5]))[0])
        assert (ours.int() - F.solarize(img, 128).int()).abs().max() <= 1
        ours = _to_uint8(autoaugment.autocontrast(x[i:i + 1], None)[0])
        assert (ours.int() - F.autocontrast(img).int()).abs().max() <= 1
        ours = _to_uint8(autoaugment.contrast(x[i:i + 1], torch.tensor([1.5]))[0])
        assert (ours.int() - F.adjust_contrast(img, 1.5).int()).abs().max() <= 2
        ours = _to_uint8(autoaugment.sharpness(x[i:i + 1], torch.tensor([1.7]))[0])
        assert (ours.int() - F.adjust_sharpness(img, 1.7).int()).abs().max() <= 2
