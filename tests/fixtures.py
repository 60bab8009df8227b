"""Tiny datasets written in the real on-disk formats, for the real loaders to read."""
from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np


def md5(path: Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def write_cifar(root: Path, classes: int, per_class_train: int, per_class_test: int, seed: int = 0) -> Path:
    """cifar-10-batches-py (5 train batches) or cifar-100-python (train/test/meta) pickles."""
    rng = np.random.default_rng(seed)

    def make(per_class):
        labels = np.repeat(np.arange(classes), per_class)
        rng.shuffle(labels)
        data = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
        return data, labels.tolist()

    if classes == 10:
        folder = Path(root) / "cifar-10-batches-py"
        folder.mkdir(parents=True, exist_ok=True)
        data, labels = make(per_class_train)
        chunks = np.array_split(np.arange(len(labels)), 5)
        for i, chunk in enumerate(chunks, 1):
            with open(folder / f"data_batch_{i}", "wb") as f:
                pickle.dump({"data": data[chunk], "labels": [labels[j] for j in chunk]}, f)
        data, labels = make(per_class_test)
        with open(folder / "test_batch", "wb") as f:
            pickle.dump({"data": data, "labels": labels}, f)
        with open(folder / "batches.meta", "wb") as f:
            pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    else:
        folder = Path(root) / "cifar-100-python"
        folder.mkdir(parents=True, exist_ok=True)
        for split, per_class in (("train", per_class_train), ("test", per_class_test)):
            data, labels = make(per_class)
            with open(folder / split, "wb") as f:
                pickle.dump({"data": data, "fine_labels": labels,
                             "coarse_labels": [l // 5 for l in labels]}, f)
        with open(folder / "meta", "wb") as f:
            pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, f)
    return folder


def trust_cifar_fixture(monkeypatch, folder: Path) -> None:
    """torchvision checks the md5 of every CIFAR file; give it the fixture's."""
    import torchvision

    cls = torchvision.datasets.CIFAR10 if folder.name.startswith("cifar-10-") else torchvision.datasets.CIFAR100
    monkeypatch.setattr(cls, "train_list", [[n, md5(folder / n)] for n, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[n, md5(folder / n)] for n, _ in cls.test_list])
    meta = dict(cls.meta)
    meta["md5"] = md5(folder / meta["filename"])
    monkeypatch.setattr(cls, "meta", meta)


def write_image_folder(root: Path, classes: int, per_class: int, side: int = 20) -> tuple[Path, Path]:
    """PNG files under root/<class>/ plus 'relative/path label' split files."""
    from PIL import Image

    rng = np.random.default_rng(0)
    lines = {"train": [], "test": []}
    for c in range(classes):
        (Path(root) / f"class_{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            rel = f"class_{c}/img_{i}.png"
            pixels = rng.integers(0, 256, size=(side, side + 4, 3), dtype=np.uint8)
            pixels[..., 0] = c * 40  # a class-dependent channel, to check labels line up
            Image.fromarray(pixels).save(Path(root) / rel)
            lines["train" if i < per_class - 1 else "test"].append(f"{rel} {c}")
    train_list, test_list = Path(root) / "train.txt", Path(root) / "test.txt"
    train_list.write_text("\n".join(lines["train"]) + "\n")
    test_list.write_text("\n".join(lines["test"]) + "\n")
    return train_list, test_list


def assert_accuracy_of(acc: float, images: int) -> None:
    """An accuracy over `images` images is a count of correct ones divided by that number:
    catches a per-batch average, a wrong split or a loss in the accuracy's place."""
    import pytest

    correct = acc * images
    assert correct == pytest.approx(round(correct), abs=1e-4), (acc, images)  # a whole number of images
    assert 0 <= round(correct) <= images, (acc, images)
