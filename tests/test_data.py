import pytest
import torch

from fixtures import trust_cifar_fixture, write_cifar, write_image_folder
from augtune.trainables.experiment_config import DataConfig
from augtune.trainables.data import BatchFeeder, load_data, long_tail_counts, sample_order


def test_digits_split_is_fixed_stratified_and_real():
    a, b = load_data(DataConfig(name="digits")), load_data(DataConfig(name="digits"))
    assert torch.equal(a.train.images, b.train.images)
    assert len(a.train) + len(a.test) == 1797
    train_share = torch.bincount(a.train.labels, minlength=10).float() / torch.bincount(
        torch.cat([a.train.labels, a.test.labels]), minlength=10).float()
    assert torch.allclose(train_share, torch.full((10,), 0.75), atol=0.02)
    assert a.train.images.dtype == torch.uint8 and a.train.images.shape[1:] == (1, 8, 8)


def test_digits_few_shot_long_tail_and_upscaling():
    data = load_data(DataConfig(name="digits", samples_per_class=40, imbalance_factor=10, image_size=16))
    assert data.class_counts == [int(40 * 10 ** (-i / 9)) for i in range(10)]
    assert data.train.images.shape[-2:] == (16, 16)
    assert len(data.test) == 450  # test split stays balanced and whole


def test_cifar_lt_counts_follow_formula():
    for factor in (100, 50, 10):
        counts = long_tail_counts(500, 100, factor)
        for i, n in enumerate(counts):
            assert n == int(500 * factor ** (-i / 99))
        assert counts[0] == 500 and counts[-1] == 500 // factor


def test_cifar10_fixture_through_torchvision(tmp_path, monkeypatch):
    folder = write_cifar(tmp_path, 10, per_class_train=6, per_class_test=2)
    trust_cifar_fixture(monkeypatch, folder)
    data = load_data(DataConfig(name="cifar10", root=tmp_path, val_per_class=1))
    assert data.num_classes == 10 and data.channels == 3 and data.image_size == 32
    assert len(data.train) == 50 and len(data.val) == 10 and len(data.test) == 20
    assert torch.bincount(data.val.labels, minlength=10).tolist() == [1] * 10
    # pixel order: the pickle's channel-major rows become C x H x W
    import pickle
    raw = pickle.load(open(folder / "test_batch", "rb"), encoding="latin1")
    assert torch.equal(data.test.images[0], torch.from_numpy(raw["data"][0].reshape(3, 32, 32)))
    assert data.test.labels[0].item() == raw["labels"][0]


def test_cifar100_lt_fixture(tmp_path, monkeypatch):
    folder = write_cifar(tmp_path, 100, per_class_train=10, per_class_test=1)
    trust_cifar_fixture(monkeypatch, folder)
    data = load_data(DataConfig(name="cifar100", root=tmp_path, imbalance_factor=10))
    assert data.class_counts == long_tail_counts(10, 100, 10)
    assert len(data.test) == 100


def test_image_folder_with_split_lists(tmp_path):
    train_list, test_list = write_image_folder(tmp_path, classes=3, per_class=4)
    for in_memory in ("device", "loader"):
        cfg = DataConfig(name="imagefolder", root=tmp_path, train_list=train_list, test_list=test_list,
                         image_size=16, in_memory=in_memory, num_workers=0)
        data = load_data(cfg)
        assert data.num_classes == 3 and len(data.train) == 9 and len(data.test) == 3
        feeder = BatchFeeder(data.train, 4, "cpu", shuffle=False, num_workers=0)
        images, labels = zip(*feeder)
        images, labels = torch.cat(images), torch.cat(labels)
        assert images.shape == (9, 3, 16, 16) and images.dtype == torch.uint8
        # the red channel encodes the class: labels line up with pixels
        assert torch.equal(images[:, 0, 8, 8].long(), labels * 40)


def test_bad_split_line_names_file_and_line(tmp_path):
    train_list, test_list = write_image_folder(tmp_path, classes=2, per_class=2)
    train_list.write_text("class_0/img_0.png zero\n")
    with pytest.raises(ValueError, match="train.txt:1"):
        load_data(DataConfig(name="imagefolder", root=tmp_path, train_list=train_list, test_list=test_list))


def test_class_balanced_sampler_uniform_over_classes():
    labels = torch.tensor([0] * 800 + [1] * 150 + [2] * 40 + [3] * 10)
    gen = torch.Generator().manual_seed(0)
    drawn = torch.cat([sample_order(labels, "class_balanced", gen) for _ in range(40)])
    freq = torch.bincount(labels[drawn], minlength=4).float() / len(drawn)
    # 40,000 draws: the standard error of each frequency is about 0.002
    assert torch.allclose(freq, torch.full((4,), 0.25), atol=0.01)
    inst = torch.bincount(labels[sample_order(labels, "instance", gen)], minlength=4)
    assert inst.tolist() == [800, 150, 40, 10]


def test_device_feeder_covers_epoch_once():
    data = load_data(DataConfig(name="digits"))
    feeder = BatchFeeder(data.train, 100, "cpu", seed=3)
    seen = torch.cat([y for _, y in feeder])
    assert len(seen) == len(data.train)
    assert torch.equal(torch.bincount(seen, minlength=10), torch.bincount(data.train.labels, minlength=10))


def _rows(images: torch.Tensor) -> set:
    return {bytes(row) for row in images.flatten(1).numpy()}


@pytest.mark.parametrize("extra", [{}, {"samples_per_class": 30}, {"samples_per_class": 100, "imbalance_factor": 20}])
def test_digits_val_split_balanced_disjoint_and_fixed(extra):
    cfg = DataConfig(name="digits", val_per_class=20, **extra)
    a, b = load_data(cfg), load_data(cfg)
    assert torch.equal(a.val.images, b.val.images) and torch.equal(a.val.labels, b.val.labels)
    assert torch.bincount(a.val.labels, minlength=10).tolist() == [20] * 10  # balanced even for a long tail
    # disjoint from train and test, compared on pixels (ignoring the few images digits holds twice)
    from sklearn.datasets import load_digits
    raw = torch.from_numpy((load_digits().images * (255.0 / 16.0)).round().astype("uint8"))[:, None]
    from collections import Counter
    once = {row for row, n in Counter(bytes(r) for r in raw.flatten(1).numpy()).items() if n == 1}
    val_rows = _rows(a.val.images) & once
    assert len(val_rows) >= 190
    assert not (val_rows & _rows(a.train.images)) and not (val_rows & _rows(a.test.images))
    if "imbalance_factor" in extra:
        assert a.class_counts == [int(100 * 20 ** (-i / 9)) for i in range(10)]


def test_val_split_does_not_change_with_training_subset():
    small = load_data(DataConfig(name="digits", val_per_class=10, samples_per_class=20))
    large = load_data(DataConfig(name="digits", val_per_class=10, samples_per_class=60))
    assert torch.equal(small.val.images, large.val.images)  # one validation set for every regime
    assert torch.equal(small.test.images, large.test.images)


def test_val_per_class_larger_than_a_class_is_refused():
    with pytest.raises(ValueError, match="val_per_class"):
        load_data(DataConfig(name="digits", val_per_class=500))


def test_cifar_lt_val_is_balanced_and_lt_rule_applies_to_the_rest(tmp_path, monkeypatch):
    folder = write_cifar(tmp_path, 100, per_class_train=12, per_class_test=1)
    trust_cifar_fixture(monkeypatch, folder)
    data = load_data(DataConfig(name="cifar100", root=tmp_path, imbalance_factor=10, val_per_class=2))
    assert torch.bincount(data.val.labels, minlength=100).tolist() == [2] * 100
    assert data.class_counts == long_tail_counts(10, 100, 10)
    assert not (_rows(data.val.images) & _rows(data.train.images))


def test_image_folder_val_per_class(tmp_path):
    train_list, test_list = write_image_folder(tmp_path, classes=3, per_class=5)
    data = load_data(DataConfig(name="imagefolder", root=tmp_path, train_list=train_list, test_list=test_list,
                                image_size=16, val_per_class=1, in_memory="device"))
    assert len(data.train) == 9 and torch.bincount(data.val.labels).tolist() == [1, 1, 1]
    assert not (_rows(data.val.images) & _rows(data.train.images))


def test_val_size_points_to_its_replacement():
    with pytest.raises(ValueError, match="val_per_class"):
        DataConfig(name="digits", val_size=10)
