"""ImageFolderDataModule on small folders of PNG/JPEG files, and on a subset of the CIFAR-10 JPEG zip."""

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from impactx.data import CIFAR10DataModule, DatasetNotFoundError, ImageFolderDataModule

CLASSES = ["cat", "dog", "emu"]
CIFAR_ZIP = Path("/work/shared/data/cifar10-jpeg.zip")


def write_folder(root: Path, size=(12, 12), per_class=(8, 3), mode="RGB", jpeg_too=True) -> dict:
    """train/<class>/NNNN.png (+ one .jpg per class) and test/<class>/NNNN.png with known pixels."""
    rng = np.random.default_rng(0)
    pixels = {}
    for split, n in zip(("train", "test"), per_class, strict=True):
        for k, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
                array = rng.integers(0, 256, size=shape, dtype=np.uint8)
                Image.fromarray(array, mode=mode).save(folder / f"{i:04d}.png")
                pixels[(split, name, i)] = array
            if jpeg_too and split == "train":
                Image.fromarray(np.full((size[1], size[0], 3), 40 * k, np.uint8)).save(
                    folder / "jpeg_0000.jpg"
                )
    return pixels


@pytest.fixture
def folder(tmp_path):
    pixels = write_folder(tmp_path)
    return tmp_path, pixels


def test_attributes_come_from_the_folder(folder):
    root, _ = folder
    dm = ImageFolderDataModule(str(root), val_fraction=0.25)
    assert dm.class_names == CLASSES and dm.num_classes == 3
    assert dm.in_chans == 3 and dm.image_size == 12 and dm.name == "imagefolder"
    dm.setup()
    assert len(dm.dataset("train")) + len(dm.dataset("val")) == 3 * 9
    assert len(dm.dataset("test")) == 9
    for split in ("train", "val", "test"):
        image, label, index = dm.dataset(split)[0]
        assert image.shape == (3, 12, 12) and image.dtype == torch.float32 and 0 <= label < 3


def test_png_pixels_round_trip(folder):
    root, pixels = folder
    dm = ImageFolderDataModule(str(root), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    samples = dm.full_split("test")[0].samples
    for k in range(len(dm.dataset("test"))):
        image, label, index = dm.dataset("test")[k]
        path = Path(samples[index][0])
        expected = pixels[("test", path.parent.name, int(path.stem))]
        np.testing.assert_array_equal(
            image.mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy(), expected
        )
        assert CLASSES[label] == path.parent.name


def test_computed_mean_std(folder):
    root, _ = folder
    dm = ImageFolderDataModule(str(root), stats_samples=10_000)
    train_pos, _ = dm.split_positions()
    data = dm.full_split("train")[0]
    x = np.stack([np.asarray(data[p][0], dtype=np.float64) / 255 for p in train_pos])  # [N,H,W,3]
    np.testing.assert_allclose(dm.mean, x.mean(axis=(0, 1, 2)), atol=1e-4)
    np.testing.assert_allclose(dm.std, x.std(axis=(0, 1, 2)), atol=1e-4)
    # normalised train-carve pixels then have ~zero mean, unit std per channel
    images = torch.stack([dm.dataset("train")[i][0] for i in range(len(dm.dataset("train")))])
    torch.testing.assert_close(
        images.mean(dim=(0, 2, 3)), torch.zeros(3, dtype=torch.float32), atol=1e-3, rtol=0
    )
    torch.testing.assert_close(
        images.std(dim=(0, 2, 3)), torch.ones(3, dtype=torch.float32), atol=1e-2, rtol=0
    )


def test_resize_grey_and_augment(folder):
    root, _ = folder
    dm = ImageFolderDataModule(str(root), image_size=16, in_chans=1, augment=True, mean=(0.5,), std=(0.25,))
    assert dm.image_size == 16
    image, _, _ = dm.dataset("train")[0]
    assert image.shape == (1, 16, 16)
    assert dm.dataset("val")[0][0].shape == (1, 16, 16)


def test_non_square_needs_image_size(tmp_path):
    write_folder(tmp_path, size=(12, 8), jpeg_too=False)
    with pytest.raises(ValueError, match="image_size is needed"):
        _ = ImageFolderDataModule(str(tmp_path)).image_size
    dm = ImageFolderDataModule(str(tmp_path), image_size=10)
    assert dm.dataset("test")[0][0].shape == (3, 10, 10)


def test_missing_root_train_test_and_classes(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        ImageFolderDataModule(str(tmp_path / "nowhere")).setup()
    (tmp_path / "train").mkdir()
    with pytest.raises(DatasetNotFoundError, match="no class sub-folders"):
        _ = ImageFolderDataModule(str(tmp_path)).num_classes
    (tmp_path / "train" / "cat").mkdir()
    with pytest.raises(DatasetNotFoundError, match="cat"):  # a class folder without images
        ImageFolderDataModule(str(tmp_path)).setup("fit")
    Image.new("RGB", (4, 4)).save(tmp_path / "train" / "cat" / "a.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "train" / "cat" / "b.png")
    with pytest.raises(DatasetNotFoundError, match="no 'test' sub-folder"):
        ImageFolderDataModule(str(tmp_path), val_fraction=0.0).setup("test")
    (tmp_path / "test" / "dog").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "test" / "dog" / "a.png")
    with pytest.raises(ValueError, match="differ"):
        ImageFolderDataModule(str(tmp_path), val_fraction=0.0).setup("test")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"mean": (0.5, 0.5, 0.5)}, "both mean and std"),
        ({"mean": (0.5,), "std": (0.2,)}, "3 values"),
        ({"mean": (0.5,) * 3, "std": (0.2, 0.0, 0.2)}, "std values"),
        ({"in_chans": 2}, "in_chans"),
        ({"image_size": 0}, "image_size"),
        ({"val_fraction": 1.0}, "val_fraction"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ImageFolderDataModule(str(tmp_path), **kwargs)


@pytest.fixture(scope="module")
def cifar_subset(tmp_path_factory) -> Path:
    """Extract 20 training and 5 test JPEGs per class from the CIFAR-10 JPEG zip."""
    if not CIFAR_ZIP.is_file():
        pytest.skip(f"{CIFAR_ZIP} is absent (see /work/shared/data/README.md)")
    root = tmp_path_factory.mktemp("cifar10-jpeg")
    wanted, counts = [], {}
    with zipfile.ZipFile(CIFAR_ZIP) as archive:
        for name in archive.namelist():
            parts = name.split("/")
            if len(parts) < 3 or not name.endswith(".jpg"):
                continue
            split, cls = parts[-3], parts[-2]
            key = (split, cls)
            if split in ("train", "test") and counts.get(key, 0) < (20 if split == "train" else 5):
                counts[key] = counts.get(key, 0) + 1
                wanted.append((name, root / split / cls / parts[-1]))
        for name, target in wanted:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.read(name))
    return root


def test_cifar10_jpeg_subset(cifar_subset):
    dm = ImageFolderDataModule(str(cifar_subset), batch_size=16, seed=0)
    assert dm.class_names == CIFAR10DataModule.class_names
    assert dm.image_size == 32 and dm.in_chans == 3
    dm.setup()
    assert len(dm.dataset("train")) == 180 and len(dm.dataset("val")) == 20 and len(dm.dataset("test")) == 50
    val_labels = [dm.dataset("val")[i][1] for i in range(20)]
    assert sorted(set(val_labels)) == list(range(10))  # stratified carve: 2 per class
    images, labels, index = next(iter(dm.train_dataloader()))
    assert images.shape == (16, 3, 32, 32) and labels.dtype == index.dtype == torch.int64
    # computed statistics land near the published CIFAR-10 ones
    np.testing.assert_allclose(dm.mean, CIFAR10DataModule.mean, atol=0.06)
    np.testing.assert_allclose(dm.std, CIFAR10DataModule.std, atol=0.06)
