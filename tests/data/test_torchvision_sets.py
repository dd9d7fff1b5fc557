"""MNIST / CIFAR-10 / CIFAR-100 / STL-10 data modules on small files in each data set's real format.

The files are written into ``tmp_path`` exactly as the official archives lay them out and are read
through the real torchvision classes. torchvision verifies the official MD5 checksums of the CIFAR and
STL-10 files, which small test files cannot match: the ``md5_only_off`` fixture replaces the
``check_integrity`` those torchvision modules use by an existence check (the files must still be
there), in these tests only.
"""

import os
import pickle
import struct
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar
import torchvision.datasets.mnist
import torchvision.datasets.stl10

from impactx.data import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    DatasetNotFoundError,
    MNISTDataModule,
    STL10DataModule,
)
from impactx.data.torchvision_sets import CIFAR100_CLASSES

RNG = np.random.default_rng(0)


@pytest.fixture
def md5_only_off(monkeypatch):
    """Bypass the MD5 comparison (not the existence check) of torchvision's CIFAR and STL-10 classes."""

    def exists(fpath, md5=None):
        return os.path.isfile(fpath)

    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", exists)
    monkeypatch.setattr(torchvision.datasets.stl10, "check_integrity", exists)


def _unnormalise(image: torch.Tensor, dm) -> np.ndarray:
    """[C,H,W] normalised float -> [C,H,W] uint8 as written."""
    mean = torch.tensor(dm.mean).view(-1, 1, 1)
    std = torch.tensor(dm.std).view(-1, 1, 1)
    return (image * std + mean).mul(255).round().to(torch.uint8).numpy()


# --------------------------------------------------------------------------------------- MNIST
def _write_idx(path, array: np.ndarray) -> None:
    """IDX (SN3 "Pascal Vincent") file: magic 0x0000 08 <ndim>, big-endian int32 dims, uint8 data."""
    with open(path, "wb") as f:
        f.write(struct.pack(">BBBB", 0, 0, 0x08, array.ndim))
        f.write(struct.pack(f">{array.ndim}I", *array.shape))
        f.write(array.astype(np.uint8).tobytes())


def write_mnist(root, n_train=30, n_test=10):
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = RNG.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
        arrays[prefix] = (images, labels)
    return arrays


def test_mnist_round_trip(tmp_path):
    arrays = write_mnist(tmp_path)
    dm = MNISTDataModule(data_dir=str(tmp_path), val_fraction=0.2, batch_size=8)
    dm.setup()
    assert [len(dm.dataset(s)) for s in ("train", "val", "test")] == [24, 6, 10]
    for split, source in (("train", "train"), ("val", "train"), ("test", "t10k")):
        image, label, index = dm.dataset(split)[1]
        assert image.shape == (1, 28, 28) and image.dtype == torch.float32
        np.testing.assert_array_equal(_unnormalise(image, dm)[0], arrays[source][0][index])
        assert label == arrays[source][1][index]
    images, labels, index = next(iter(dm.train_dataloader()))
    assert images.shape == (8, 1, 28, 28)
    torch.testing.assert_close(labels, torch.as_tensor(arrays["train"][1])[index].long())


def test_mnist_resize(tmp_path):
    write_mnist(tmp_path)
    dm = MNISTDataModule(data_dir=str(tmp_path), resize=32)
    assert dm.image_size == 32
    assert dm.dataset("test")[0][0].shape == (1, 32, 32)
    assert MNISTDataModule(resize=None).image_size == 28


# --------------------------------------------------------------------------------------- CIFAR
def _pickle(path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _cifar_rows(n):
    hwc = RNG.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    rows = hwc.transpose(0, 3, 1, 2).reshape(n, 3072)  # R plane, G plane, B plane, each row-major
    return hwc, rows


def write_cifar10(root, per_batch=6, n_test=8):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train_hwc, train_labels = [], []
    for b in range(1, 6):
        hwc, rows = _cifar_rows(per_batch)
        labels = [(b * per_batch + i) % 10 for i in range(per_batch)]
        _pickle(
            folder / f"data_batch_{b}",
            {
                "batch_label": f"training batch {b} of 5",
                "labels": labels,
                "data": rows,
                "filenames": [f"img_{b}_{i}.png" for i in range(per_batch)],
            },
        )
        train_hwc.append(hwc)
        train_labels += labels
    test_hwc, rows = _cifar_rows(n_test)
    test_labels = [i % 10 for i in range(n_test)]
    _pickle(
        folder / "test_batch",
        {
            "batch_label": "testing batch 1 of 1",
            "labels": test_labels,
            "data": rows,
            "filenames": [f"t_{i}.png" for i in range(n_test)],
        },
    )
    _pickle(
        folder / "batches.meta",
        {"label_names": CIFAR10DataModule.class_names, "num_cases_per_batch": per_batch, "num_vis": 3072},
    )
    return (np.concatenate(train_hwc), np.array(train_labels)), (test_hwc, np.array(test_labels))


def write_cifar100(root, n_train=40, n_test=10):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    out = []
    for name, n in (("train", n_train), ("test", n_test)):
        hwc, rows = _cifar_rows(n)
        fine = [(7 * i) % 100 for i in range(n)]
        _pickle(
            folder / name,
            {
                "filenames": [f"{name}_{i}.png" for i in range(n)],
                "batch_label": name,
                "fine_labels": fine,
                "coarse_labels": [f // 5 for f in fine],
                "data": rows,
            },
        )
        out.append((hwc, np.array(fine)))
    _pickle(
        folder / "meta",
        {"fine_label_names": list(CIFAR100_CLASSES), "coarse_label_names": [f"super_{i}" for i in range(20)]},
    )
    return out


@pytest.mark.parametrize(
    "cls, writer", [(CIFAR10DataModule, write_cifar10), (CIFAR100DataModule, write_cifar100)]
)
def test_cifar_round_trip(tmp_path, md5_only_off, cls, writer):
    (train_hwc, train_labels), (test_hwc, test_labels) = writer(tmp_path)
    dm = cls(data_dir=str(tmp_path), val_fraction=0.25, batch_size=4)
    dm.setup()
    n_train = len(train_labels)
    train_idx = [int(i) for i in dm.dataset("train").indices]
    val_idx = [int(i) for i in dm.dataset("val").indices]
    assert sorted(train_idx + val_idx) == list(range(n_train)) and not set(train_idx) & set(val_idx)
    assert len(dm.dataset("test")) == len(test_labels)
    for split, (hwc, labels) in (
        ("train", (train_hwc, train_labels)),
        ("val", (train_hwc, train_labels)),
        ("test", (test_hwc, test_labels)),
    ):
        image, label, index = dm.dataset(split)[2]
        assert image.shape == (3, 32, 32) and image.dtype == torch.float32
        np.testing.assert_array_equal(_unnormalise(image, dm), hwc[index].transpose(2, 0, 1))
        assert label == labels[index]
    # the class names torchvision reads from the meta file are the module's constants
    assert dm.full_split("train")[0].classes == dm.class_names


def test_cifar_augmentation_only_on_train(tmp_path, md5_only_off):
    write_cifar10(tmp_path)
    dm = CIFAR10DataModule(data_dir=str(tmp_path), augment=True, val_fraction=0.2)
    plain = CIFAR10DataModule(data_dir=str(tmp_path), augment=False, val_fraction=0.2)
    torch.manual_seed(0)
    assert any(not torch.equal(dm.dataset("train")[i][0], plain.dataset("train")[i][0]) for i in range(8))
    for i in range(4):
        torch.testing.assert_close(dm.dataset("val")[i][0], plain.dataset("val")[i][0])
        torch.testing.assert_close(dm.dataset("test")[i][0], plain.dataset("test")[i][0])
    assert dm.dataset("train")[0][0].shape == (3, 32, 32)


def _stack(dataset, n: int) -> torch.Tensor:
    return torch.stack([dataset[i][0] for i in range(n)])


def test_cifar_train_split_with_and_without_augmentation(tmp_path, md5_only_off):
    write_cifar10(tmp_path)
    dm = CIFAR10DataModule(data_dir=str(tmp_path), augment=True, val_fraction=0.2, predict_split="train")
    plain = CIFAR10DataModule(data_dir=str(tmp_path), augment=False, val_fraction=0.2)
    torch.manual_seed(0)
    n = len(dm.dataset("train"))
    plain_train = _stack(plain.dataset("train"), n)
    torch.testing.assert_close(_stack(dm.dataset("train", augment=False), n), plain_train)
    assert any(not torch.equal(dm.dataset("train")[i][0], plain.dataset("train")[i][0]) for i in range(n))
    batch = next(iter(dm.predict_dataloader()))
    assert batch[2].tolist() == list(plain.dataset("train").indices)[: len(batch[2])]
    torch.testing.assert_close(batch[0], _stack(plain.dataset("train"), len(batch[2])))


# --------------------------------------------------------------------------------------- STL-10
def _write_stl_images(path, chw: np.ndarray) -> None:
    # the official binaries store each channel column-major (x runs slowest within a plane)
    with open(path, "wb") as f:
        f.write(np.ascontiguousarray(chw.transpose(0, 1, 3, 2)).tobytes())


def write_stl10(root, n_train=10, n_test=5):
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    out = []
    for name, n in (("train", n_train), ("test", n_test)):
        chw = RNG.integers(0, 200, size=(n, 3, 96, 96), dtype=np.uint8)
        chw[:, 0, 5, 70] = 255  # one bright red pixel at row 5, column 70: checks the orientation
        labels = np.arange(n) % 10
        _write_stl_images(folder / f"{name}_X.bin", chw)
        (labels + 1).astype(np.uint8).tofile(folder / f"{name}_y.bin")  # labels are 1-based on disk
        out.append((chw, labels))
    _write_stl_images(folder / "unlabeled_X.bin", RNG.integers(0, 256, size=(1, 3, 96, 96), dtype=np.uint8))
    (folder / "class_names.txt").write_text("\n".join(STL10DataModule.class_names) + "\n")
    return out


def test_stl10_round_trip_and_orientation(tmp_path, md5_only_off):
    (train_chw, train_labels), (test_chw, test_labels) = write_stl10(tmp_path)
    dm = STL10DataModule(data_dir=str(tmp_path), val_fraction=0.2)
    dm.setup()
    assert [len(dm.dataset(s)) for s in ("train", "val", "test")] == [8, 2, 5]
    for split, (chw, labels) in (
        ("train", (train_chw, train_labels)),
        ("val", (train_chw, train_labels)),
        ("test", (test_chw, test_labels)),
    ):
        image, label, index = dm.dataset(split)[1]
        assert image.shape == (3, 96, 96)
        pixels = _unnormalise(image, dm)
        np.testing.assert_array_equal(pixels, chw[index])
        assert pixels[0, 5, 70] == 255 and label == labels[index]
    assert dm.full_split("test")[0].classes == dm.class_names


# --------------------------------------------------------------------------------------- errors
ALL = [MNISTDataModule, CIFAR10DataModule, CIFAR100DataModule, STL10DataModule]


@pytest.mark.parametrize("cls", ALL)
def test_missing_files_raise_a_clear_error(tmp_path, cls):
    dm = cls(data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(DatasetNotFoundError) as info:
        dm.setup("fit")
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert cls.title in message and str(tmp_path / "nowhere") in message
    assert os.path.join(str(tmp_path / "nowhere"), cls.subfolder) in message
    assert all(f in message for f in cls.expected_files)
    assert "download=True" in message
    assert isinstance(info.value.__cause__, RuntimeError)  # torchvision's error is chained, not raised


@pytest.mark.parametrize("cls", ALL)
def test_failed_download_raises_a_clear_error(tmp_path, monkeypatch, cls):
    def no_network(*args, **kwargs):
        raise URLError("no network here")

    for module in (torchvision.datasets.cifar, torchvision.datasets.mnist, torchvision.datasets.stl10):
        monkeypatch.setattr(module, "download_and_extract_archive", no_network)
    dm = cls(data_dir=str(tmp_path), download=True)
    with pytest.raises(DatasetNotFoundError, match="download failed") as info:
        dm.prepare_data()
    assert cls.title in str(info.value)


def test_corrupted_file_is_reported(tmp_path):
    write_cifar10(tmp_path)  # real MD5 check left on: the small files do not match the official sums
    with pytest.raises(DatasetNotFoundError, match="corrupted"):
        CIFAR10DataModule(data_dir=str(tmp_path)).setup("test")


@pytest.mark.parametrize("cls", ALL)
def test_class_attributes(cls):
    dm = cls()
    assert len(dm.class_names) == dm.num_classes == len(set(dm.class_names))
    assert len(dm.mean) == len(dm.std) == dm.in_chans
    assert isinstance(dm.image_size, int) and dm.name in ("mnist", "cifar10", "cifar100", "stl10")
    assert cls(**dm.hparams).hparams == dm.hparams


def test_cifar100_names_are_the_sorted_fine_labels():
    assert len(CIFAR100_CLASSES) == 100 and CIFAR100_CLASSES == sorted(CIFAR100_CLASSES)


def test_cifar_maps_follow_their_images_through_crop_and_flip(tmp_path, md5_only_off):
    """Joined maps (here: each image's own red channel) get the image's random crop and flip; padding is
    black in the image and 0 in the map."""
    from impactx.maps import MAP_SPLIT, MapKey, MapStore

    write_cifar10(tmp_path / "data")
    plain = CIFAR10DataModule(data_dir=str(tmp_path / "data"))
    items = plain.map_dataset()
    key = MapKey(dataset=plain.name, split=MAP_SPLIT, preprocessing=plain.preprocessing(), explainer="ig",
                 options={}, target="label", model="0" * 64)
    store = MapStore.create(tmp_path / "maps", key, n=len(items), map_shape=(1, 32, 32))
    store.write(np.arange(len(items)), torch.stack([items[i][0][:1] for i in range(len(items))]))
    dm = CIFAR10DataModule(data_dir=str(tmp_path / "data"), augment=True, maps=str(store.path),
                           map_normalisation="none", batch_size=8)
    dm.setup("fit")
    black = dm._blank_value()
    torch.manual_seed(1)
    moved = shifted = 0
    for images, _, index, maps in dm.train_dataloader():
        padded = (images == torch.tensor(black).view(1, 3, 1, 1)).all(dim=1, keepdim=True)
        assert bool(((maps == images[:, :1]) | (padded & (maps == 0))).all())
        originals = torch.stack([items[int(i)][0] for i in index])
        moved += int((images != originals).flatten(1).any(dim=1).sum())
        shifted += int(padded.flatten(1).any(dim=1).sum())
    assert moved > len(items) // 2 and shifted > 0
