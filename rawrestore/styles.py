"""Colour styles (``--color-style``): named looks, reference-image transfer and .cube LUTs.

A style maps a display sRGB (3, H, W) tensor in [0, 1] to another. Styles are also applied to
the model's small colour-condition image, so every one is per-pixel or uses global image
statistics only: a look never depends on the resolution it is applied at.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .isp import srgb_decode, srgb_encode, tone_curve

REFERENCE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".tif", ".tiff"}
_REC709_LUMA = torch.tensor([0.2126, 0.7152, 0.0722])


class StyleError(ValueError):
    """An unknown style name or an unusable reference image / LUT; the message is one line."""


@dataclass(frozen=True)
class Style:
    """A named colour transform over display sRGB (3, H, W) tensors in [0, 1]."""

    name: str
    description: str
    transform: Callable[[torch.Tensor], torch.Tensor]

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return self.transform(image).clamp(0.0, 1.0)


# --- Building blocks ------------------------------------------------------------------------

def _luma(image: torch.Tensor) -> torch.Tensor:
    return torch.einsum("c,chw->hw", _REC709_LUMA.to(image), image)[None]


def saturate(image: torch.Tensor, amount: float) -> torch.Tensor:
    """Scale the distance of every pixel from its own grey (1 keeps it, 0 is monochrome)."""
    luma = _luma(image)
    return luma + amount * (image - luma)


def s_curve(image: torch.Tensor, amount: float) -> torch.Tensor:
    """Blend towards the smoothstep curve: more mid-tone contrast, black and white stay put."""
    return torch.lerp(image, tone_curve(image), amount)


def flatten(image: torch.Tensor, amount: float) -> torch.Tensor:
    """Compress the tonal range around mid grey (lifted blacks, soft whites) for later grading."""
    return 0.5 + (image - 0.5) * (1.0 - amount)


def white_shift(image: torch.Tensor, red: float, blue: float) -> torch.Tensor:
    """Re-balance in linear light, the way a white-balance change would."""
    gains = torch.tensor([red, 1.0, blue]).to(image)[:, None, None]
    return srgb_encode(srgb_decode(image) * gains)


def monochrome(image: torch.Tensor) -> torch.Tensor:
    """Luminance from linear light (so saturated colours keep their brightness), on all channels."""
    return srgb_encode(_luma(srgb_decode(image))).expand(3, -1, -1).contiguous()


# --- Reference-image colour transfer (Reinhard et al. 2001, in Oklab) -----------------------

# Björn Ottosson, "A perceptual color space for image processing" (2020).
_OKLAB_LMS = torch.tensor([[0.4122214708, 0.5363325363, 0.0514459929],
                           [0.2119034982, 0.6806995451, 0.1073969566],
                           [0.0883024619, 0.2817188376, 0.6299787005]])
_OKLAB_LAB = torch.tensor([[0.2104542553, 0.7936177850, -0.0040720468],
                           [1.9779984951, -2.4285922050, 0.4505937099],
                           [0.0259040371, 0.7827717662, -0.8086757660]])
_LMS_OKLAB = torch.linalg.inv(_OKLAB_LMS)
_LAB_OKLAB = torch.linalg.inv(_OKLAB_LAB)


def srgb_to_oklab(image: torch.Tensor) -> torch.Tensor:
    lms = torch.einsum("ij,jhw->ihw", _OKLAB_LMS.to(image), srgb_decode(image))
    return torch.einsum("ij,jhw->ihw", _OKLAB_LAB.to(image), lms.clamp_min(0.0) ** (1 / 3))


def oklab_to_srgb(lab: torch.Tensor) -> torch.Tensor:
    lms = torch.einsum("ij,jhw->ihw", _LAB_OKLAB.to(lab), lab) ** 3
    return srgb_encode(torch.einsum("ij,jhw->ihw", _LMS_OKLAB.to(lab), lms))


def _oklab_statistics(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel Oklab mean and standard deviation, from at most ~250k pixels."""
    lab = srgb_to_oklab(image).flatten(1)
    lab = lab[:, ::max(1, lab.shape[1] // 250_000)]
    return lab.mean(dim=1), lab.std(dim=1)


def load_reference(path: Path) -> torch.Tensor:
    """A reference picture as a display sRGB (3, H, W) float tensor in [0, 1]."""
    import imageio.v3 as iio

    try:
        pixels = np.asarray(iio.imread(path))
    except Exception as err:  # imageio raises many types for a file it cannot decode
        raise StyleError(f"{path}: cannot read the reference image ({type(err).__name__})") from None
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=2)
    if pixels.ndim != 3 or pixels.shape[2] < 3 or pixels.dtype.kind not in "uif":
        raise StyleError(f"{path}: the reference must be an RGB or greyscale image")
    scale = np.iinfo(pixels.dtype).max if pixels.dtype.kind in "ui" else 1.0
    rgb = pixels[..., :3].astype(np.float32) / scale
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).clamp(0.0, 1.0)


def reference_transfer(reference: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Match the Oklab mean and spread of each image to those of ``reference``."""
    ref_mean, ref_std = _oklab_statistics(reference)

    def transfer(image: torch.Tensor) -> torch.Tensor:
        mean, std = _oklab_statistics(image)
        # Bounded so that a nearly flat image (a black frame, a grey card) is not blown apart.
        ratio = (ref_std / std.clamp_min(1e-6)).clamp(0.25, 4.0)
        lab = srgb_to_oklab(image)
        matched = (lab - mean[:, None, None]) * ratio[:, None, None] + ref_mean[:, None, None]
        return oklab_to_srgb(matched)

    return transfer


# --- 3D LUTs (Adobe/Resolve .cube) ----------------------------------------------------------

@dataclass(frozen=True)
class CubeLut:
    """A 3D LUT: ``table`` is (3, N, N, N) indexed [channel, blue, green, red] (red fastest in the file)."""

    title: str
    table: torch.Tensor
    domain_min: torch.Tensor
    domain_max: torch.Tensor

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        span = (self.domain_max - self.domain_min).to(image)
        unit = (image - self.domain_min.to(image)[:, None, None]) / span[:, None, None]
        # grid_sample's last axis is (x, y, z) = (red, green, blue); 5-D 'bilinear' is trilinear.
        grid = (unit * 2.0 - 1.0).permute(1, 2, 0)[None, None]
        out = F.grid_sample(self.table.to(image)[None], grid, mode="bilinear",
                            padding_mode="border", align_corners=True)
        return out[0, :, 0]


def _floats(values: list[str], where: str) -> list[float]:
    try:
        return [float(v) for v in values]
    except ValueError:
        raise StyleError(f"{where}: expected numbers, found {' '.join(values)!r}") from None


def parse_cube(path: Path) -> CubeLut:
    """Read an Adobe .cube 3D LUT (LUT_3D_SIZE, DOMAIN_MIN/MAX, TITLE, # comments)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise StyleError(f"{path}: cannot read the LUT ({err.strerror})") from None
    size, title = None, path.stem
    domain_min, domain_max = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    rows: list[list[float]] = []
    for number, line in enumerate(text.splitlines(), 1):
        where = f"{path}:{number}"
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        keyword, *values = fields
        if keyword[0] in "+-.0123456789":
            rows.append(_floats([keyword, *values], where))
        elif keyword == "TITLE":
            title = " ".join(values).strip('"')
        elif keyword == "LUT_3D_SIZE" and len(values) == 1 and values[0].isdigit():
            size = int(values[0])
        elif keyword == "DOMAIN_MIN":
            domain_min = _floats(values, where)
        elif keyword == "DOMAIN_MAX":
            domain_max = _floats(values, where)
        elif keyword == "LUT_1D_SIZE":
            raise StyleError(f"{path}: 1D LUTs are not supported, only 3D (LUT_3D_SIZE)")
        else:
            raise StyleError(f"{where}: unexpected {line.strip()!r} in a .cube LUT")
    if size is None or size < 2:
        raise StyleError(f"{path}: not a 3D .cube LUT (no valid LUT_3D_SIZE)")
    if len(rows) != size ** 3 or any(len(row) != 3 for row in rows):
        raise StyleError(f"{path}: expected {size ** 3} RGB rows for LUT_3D_SIZE {size}, found {len(rows)}")
    if len(domain_min) != 3 or len(domain_max) != 3 or any(a >= b for a, b in zip(domain_min, domain_max)):
        raise StyleError(f"{path}: DOMAIN_MIN must be below DOMAIN_MAX, three values each")
    table = torch.tensor(rows, dtype=torch.float32).reshape(size, size, size, 3).permute(3, 0, 1, 2)
    return CubeLut(title=title, table=table.contiguous(), domain_min=torch.tensor(domain_min),
                   domain_max=torch.tensor(domain_max))


# --- Registry -------------------------------------------------------------------------------

_NAMED = {
    style.name: style for style in (
        Style("natural", "the camera's own colour, unchanged", lambda x: x),
        Style("neutral", "flat and low-contrast, a starting point for grading",
              lambda x: saturate(flatten(x, 0.2), 0.85)),
        Style("vivid", "punchier contrast and saturation", lambda x: saturate(s_curve(x, 0.35), 1.3)),
        Style("warm", "warmer white balance, golden", lambda x: white_shift(x, 1.08, 0.90)),
        Style("cool", "cooler white balance, bluish", lambda x: white_shift(x, 0.92, 1.08)),
        Style("mono", "black and white from luminance", monochrome),
    )
}


def list_styles() -> list[tuple[str, str]]:
    """(name, description) of the named styles, in presentation order."""
    return [(style.name, style.description) for style in _NAMED.values()]


def get_style(spec: str) -> Style:
    """A named style, a reference image path (colour transfer) or a ``.cube`` LUT path."""
    if spec in _NAMED:
        return _NAMED[spec]
    path = Path(spec).expanduser()
    suffix = path.suffix.lower()
    if suffix == ".cube" or suffix in REFERENCE_EXTENSIONS:
        if not path.is_file():
            raise StyleError(f"{spec}: no such file")
        if suffix == ".cube":
            lut = parse_cube(path)
            return Style(path.name, f"3D LUT '{lut.title}'", lut)
        return Style(path.name, f"colour statistics of {path.name}",
                     reference_transfer(load_reference(path)))
    raise StyleError(f"unknown colour style {spec!r}: choose {', '.join(_NAMED)}, "
                     "a reference image (.jpg/.png/.tif) or a .cube LUT")
