"""rawrestore.styles: the named looks, reference transfer, .cube LUTs and the Developer hook."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rawrestore.pipeline import Developer, DevelopOptions
from rawrestore.rawio import read_raw
from rawrestore.styles import StyleError, get_style, list_styles, srgb_to_oklab

NAMES = ["natural", "neutral", "vivid", "warm", "cool", "mono"]


@pytest.fixture
def image() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.rand(3, 24, 40, generator=generator)


def write_cube(path: Path, size: int, mapping, header: str = "") -> Path:
    """A .cube file whose entry at (r, g, b) is mapping(r, g, b); red varies fastest."""
    steps = np.linspace(0.0, 1.0, size)
    lines = [f"# written by {__name__}", f'TITLE "{path.stem}"', header, f"LUT_3D_SIZE {size}", ""]
    lines += [" ".join(f"{v:.6f}" for v in mapping(r, g, b)) for b in steps for g in steps for r in steps]
    path.write_text("\n".join(lines) + "\n")
    return path


def red_blue_ratio(image: torch.Tensor) -> float:
    return float(image[0].mean() / image[2].mean())


def test_registry_lists_every_named_style():
    assert [name for name, _ in list_styles()] == NAMES
    assert all(description for _, description in list_styles())


@pytest.mark.parametrize("name", NAMES)
def test_named_styles_are_per_pixel_and_stay_in_range(image, name):
    style = get_style(name)
    out = style(image)
    assert out.shape == image.shape and out.dtype == image.dtype
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    # No spatial filtering: styling a crop gives the crop of the styled image.
    torch.testing.assert_close(style(image[:, 5:15, 10:30]), out[:, 5:15, 10:30])


def test_natural_is_identity(image):
    assert torch.equal(get_style("natural")(image), image)


def test_mono_has_equal_channels(image):
    out = get_style("mono")(image)
    assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])


def test_warm_raises_and_cool_lowers_red_over_blue(image):
    assert red_blue_ratio(get_style("warm")(image)) > red_blue_ratio(image) * 1.05
    assert red_blue_ratio(get_style("cool")(image)) < red_blue_ratio(image) / 1.05


def test_neutral_is_flatter_and_vivid_more_saturated(image):
    def spread(x):
        return float(x.std())

    def chroma(x):
        return float(srgb_to_oklab(x)[1:].norm(dim=0).mean())

    assert spread(get_style("neutral")(image)) < spread(image)
    assert chroma(get_style("vivid")(image)) > chroma(image)


def test_reference_image_moves_the_mean_colour_towards_it(tmp_path, image):
    reference = np.zeros((30, 50, 3), np.uint8)
    reference[...] = (200, 120, 60)
    reference[::2] = (170, 90, 40)  # some spread, as in a real picture
    ref_path = tmp_path / "sunset.png"
    Image.fromarray(reference).save(ref_path)
    bluish = image * torch.tensor([0.3, 0.5, 0.9])[:, None, None]
    target = torch.from_numpy(reference.reshape(-1, 3).mean(0) / 255.0).float()
    out = get_style(str(ref_path))(bluish)
    before = (bluish.mean((1, 2)) - target).norm()
    after = (out.mean((1, 2)) - target).norm()
    assert after < 0.25 * before
    assert get_style(str(ref_path)).name == "sunset.png"


def test_identity_cube_is_identity_and_swapped_cube_swaps(tmp_path, image):
    identity = get_style(str(write_cube(tmp_path / "identity.cube", 5, lambda r, g, b: (r, g, b))))
    torch.testing.assert_close(identity(image), image, atol=1e-5, rtol=0)
    swapped = get_style(str(write_cube(tmp_path / "swap.cube", 9, lambda r, g, b: (b, g, r))))
    torch.testing.assert_close(swapped(image), image.flip(0), atol=1e-5, rtol=0)


def test_cube_domain_is_honoured(tmp_path):
    # Domain 0..2: input 0.5 sits a quarter of the way up, where this ramp LUT gives 0.25.
    header = "DOMAIN_MIN 0 0 0\nDOMAIN_MAX 2 2 2"
    lut = get_style(str(write_cube(tmp_path / "wide.cube", 3, lambda r, g, b: (r, g, b), header)))
    torch.testing.assert_close(lut(torch.full((3, 2, 2), 0.5)), torch.full((3, 2, 2), 0.25))


@pytest.mark.parametrize("text, message", [
    ("LUT_3D_SIZE 2\n0 0 0\n1 0 0\n", "expected 8 RGB rows"),
    ("LUT_1D_SIZE 2\n0 0 0\n1 1 1\n", "1D LUTs"),
    ("0 0 0\n", "LUT_3D_SIZE"),
    ("LUT_3D_SIZE 2\n" + "0 zero 0\n" * 8, "expected numbers"),
    ("LUT_3D_SIZE 2\nSHAPER on\n" + "0 0 0\n" * 8, "unexpected"),
])
def test_malformed_cube_files_give_one_line_errors(tmp_path, text, message):
    path = tmp_path / "bad.cube"
    path.write_text(text)
    with pytest.raises(StyleError, match=message) as info:
        get_style(str(path))
    assert "\n" not in str(info.value)


def test_unknown_style_lists_the_valid_names():
    with pytest.raises(ValueError) as info:
        get_style("sepia")
    assert isinstance(info.value, StyleError)
    assert all(name in str(info.value) for name in NAMES) and "\n" not in str(info.value)
    with pytest.raises(StyleError, match="no such file"):
        get_style("missing-reference.jpg")


def test_developer_applies_the_style(dng_factory):
    raw = read_raw(dng_factory())
    natural = Developer(DevelopOptions(style="natural", classical=True)).develop(raw)
    mono = Developer(DevelopOptions(style="mono", classical=True)).develop(raw)
    assert torch.equal(mono[0], mono[2])
    torch.testing.assert_close(mono, get_style("mono")(natural))
    with pytest.raises(StyleError):
        Developer(DevelopOptions(style="nope", classical=True))
