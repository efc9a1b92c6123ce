"""SyntheticRAWDataset: reproducible, consistently shaped, split without overlap, CFA kept under flips.

Runs on a temporary folder of scikit-image's bundled photos saved as PNG (no shared data needed).
"""
from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from skimage import data

from rawrestore.dataset import SyntheticRAWDataset, list_photos, split_of

CROP = 64


def _names_covering_both_splits(count: int) -> list[str]:
    """``count`` file names, at least two of them in each split (the split hashes the name)."""
    names = [f"photo_{i:03d}.png" for i in range(200)]
    val = [n for n in names if split_of(Path(n)) == "val"][:2]
    train = [n for n in names if split_of(Path(n)) == "train"][: count - 2]
    return val + train


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory) -> Path:
    """Eight PNGs (astronaut, chelsea, coffee, a greyscale camera shot, in turn), two folders deep,
    plus a non-photograph that both splits must leave out."""
    root = tmp_path_factory.mktemp("photos")
    sources = [data.astronaut(), data.chelsea(), data.coffee(), data.camera()]
    for i, name in enumerate(_names_covering_both_splits(8)):
        folder = root / ("a" if i % 2 else "b")
        folder.mkdir(exist_ok=True)
        iio.imwrite(folder / name, sources[i % len(sources)][:200, :240])
    iio.imwrite(root / "comic.png", data.astronaut()[:100, :100])
    return root


@pytest.fixture(scope="module")
def red_dir(tmp_path_factory) -> Path:
    """One pure red photo, named so that it is in the training split."""
    root = tmp_path_factory.mktemp("red")
    image = np.zeros((96, 128, 3), np.uint8)
    image[..., 0] = 200
    iio.imwrite(root / _names_covering_both_splits(3)[2], image)
    return root


def test_same_index_gives_same_sample(photo_dir):
    first = SyntheticRAWDataset(photo_dir, "train", crop=CROP, seed=7)
    again = SyntheticRAWDataset(photo_dir, "train", crop=CROP, seed=7)
    for index in (0, 5, 123):
        a, b = first[index], again[index]
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (index, key)
        assert torch.equal(first[index]["input"], a["input"])  # the same object, asked twice
    assert not torch.equal(first[0]["input"], first[1]["input"])
    other_seed = SyntheticRAWDataset(photo_dir, "train", crop=CROP, seed=8)
    assert not torch.equal(other_seed[0]["input"], first[0]["input"])


def test_shapes_are_consistent(photo_dir):
    dataset = SyntheticRAWDataset(photo_dir, "train", crop=CROP, seed=0)
    for index in range(6):
        sample = dataset[index]
        assert sample["input"].shape == (4, CROP // 2, CROP // 2)
        assert sample["clean_input"].shape == (4, CROP // 2, CROP // 2)
        assert sample["noise_std"].shape == (1, CROP // 2, CROP // 2)
        assert sample["clean_std"].shape == (1, CROP // 2, CROP // 2)
        assert sample["color"].shape == (3, CROP // 4, CROP // 4)
        assert sample["detail"].shape == sample["clean_detail"].shape == (3, CROP, CROP)
        assert sample["target"].shape == (3, CROP, CROP)
        for key, value in sample.items():
            assert value.dtype == torch.float32 and torch.isfinite(value).all(), key
        assert 0 <= float(sample["target"].min()) and float(sample["target"].max()) <= 1
        assert float(sample["noise_std"].min()) > 0


def test_splits_are_disjoint_and_cover_every_photo(photo_dir):
    train, val = list_photos(photo_dir, "train"), list_photos(photo_dir, "val")
    everything = sorted(p for p in photo_dir.rglob("*.png") if p.name != "comic.png")
    assert train and val
    assert not set(train) & set(val)
    assert sorted(train + val) == everything
    # The split follows the file name, wherever the file is: a copy elsewhere lands in the same split.
    assert {split_of(p) for p in val} == {"val"}
    assert list_photos([photo_dir / "a", photo_dir / "b"], "val") == val
    assert len(SyntheticRAWDataset(photo_dir, "val", crop=CROP).paths) == len(val)


def test_flips_keep_the_cfa_right(red_dir):
    """A red photo must give a packed RGGB input whose R plane dominates, whatever flip or
    transpose a sample drew: flipping a mosaic instead of the photo would move red onto G sites."""
    dataset = SyntheticRAWDataset(red_dir, "train", crop=CROP, seed=3)
    for index in range(16):  # each flip and the transpose are drawn with probability 1/2
        sample = dataset[index]
        red, green1, green2, blue = sample["clean_input"].mean(dim=(1, 2)).tolist()
        assert red > 3 * max(green1, green2, blue), (index, red, green1, green2, blue)
        assert green1 == pytest.approx(green2, rel=0.05, abs=1e-3), (index, green1, green2)
        noisy = sample["input"].mean(dim=(1, 2))
        assert noisy[0] > 2 * noisy[1:].max(), (index, noisy)
