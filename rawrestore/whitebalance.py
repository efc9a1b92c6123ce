"""White balance (``--wb``): as shot, grey world, a named illuminant or a colour temperature.

The multipliers scale the camera's native RGB (G = 1), as the as-shot ones do. A named illuminant
or a temperature goes through the file's own matrices: the illuminant's chromaticity (CIE tables;
the Planckian locus for a temperature) -> its white in XYZ -> the camera's response to it, which
the multipliers make neutral. They are used by the ISP only (the colour condition, the classical
demosaic, the render): the model's input stays balanced as shot, as it was trained.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .rawio import RawImage, cfa_site_colors

# CIE 1931 xy chromaticities of the named illuminants (CIE 15:2004 tables).
ILLUMINANTS = {
    "daylight": (0.33242, 0.34743),     # D55, the usual "daylight" preset
    "tungsten": (0.44757, 0.40745),     # illuminant A, 2856 K
    "fluorescent": (0.37208, 0.37529),  # F2, cool white fluorescent
}
KELVIN_RANGE = (2000.0, 25000.0)  # where the Planckian locus approximation below holds
MODES = ("camera", "auto", *ILLUMINANTS)
CLIPPED = 0.98  # of the white level: a 2x2 block with a site at or above it says nothing of the light


class WhiteBalanceError(ValueError):
    """An unusable --wb value, or one this file cannot give (the message is one line)."""


def planckian_xy(kelvin: float) -> tuple[float, float]:
    """Chromaticity of a black body (Kim et al. 2002 cubic fit to the Planckian locus, 1667-25000 K)."""
    t = 1e3 / kelvin
    if kelvin <= 4000:
        x = -0.2661239 * t ** 3 - 0.2343589 * t ** 2 + 0.8776956 * t + 0.179910
    else:
        x = -3.0258469 * t ** 3 + 2.1070379 * t ** 2 + 0.2226347 * t + 0.240390
    if kelvin <= 2222:
        y = -1.1063814 * x ** 3 - 1.34811020 * x ** 2 + 2.18555832 * x - 0.20219683
    elif kelvin <= 4000:
        y = -0.9549476 * x ** 3 - 1.37418593 * x ** 2 + 2.09137015 * x - 0.16748867
    else:
        y = 3.0817580 * x ** 3 - 5.87338670 * x ** 2 + 3.75112997 * x - 0.37001483
    return x, y


def _xyz(xy: tuple[float, float]) -> np.ndarray:
    x, y = xy
    return np.array([x / y, 1.0, (1.0 - x - y) / y])


def multipliers_for(raw: RawImage, xy: tuple[float, float]) -> np.ndarray:
    """The multipliers (G = 1) that make white under the illuminant of chromaticity ``xy`` neutral.

    ``raw.cam_to_xyz`` maps camera RGB balanced for D65 (by ``raw.daylight_wb``) to XYZ, so its
    inverse gives that balanced camera's response to the illuminant's white; the native response
    is that divided by the D65 multipliers."""
    if raw.daylight_wb is None:
        raise WhiteBalanceError("the file holds no daylight white balance to convert an illuminant "
                                "with; use --wb camera or auto")
    balanced = np.linalg.solve(raw.cam_to_xyz, _xyz(xy))
    native = balanced / raw.daylight_wb
    return native[1] / native


def grey_world(raw: RawImage) -> np.ndarray:
    """Grey world on the classical fast development's 2x2 bins: the multipliers (G = 1) that make
    the mean of every block with no clipped site neutral. The mean keeps the noise out (it has
    none); clipped blocks would pull towards white. Non-Bayer files, which LibRaw balanced as shot:
    the as-shot multipliers corrected by the mean of their pixels in camera space."""
    if raw.is_bayer:
        normalized = raw.normalized()
        h, w = (s - s % 2 for s in normalized.shape)
        blocks = normalized[:h, :w].reshape(h // 2, 2, w // 2, 2)
        usable = blocks.max(axis=(1, 3)) < CLIPPED
        means = np.zeros(3)
        for (py, px), colour in np.ndenumerate(cfa_site_colors(raw.cfa)):
            if usable.any():
                means[colour] += blocks[:, py, :, px][usable].mean(dtype=np.float64) / (2 if colour == 1 else 1)
        scale = np.ones(3)
    else:
        usable = raw.rgb.max(axis=2) < CLIPPED
        srgb_means = raw.rgb[usable].mean(axis=0, dtype=np.float64) if usable.any() else np.zeros(3)
        means = np.linalg.solve(raw.srgb_from_cam, srgb_means)
        scale = raw.wb
    if not np.all(means > 0):
        raise WhiteBalanceError("no grey-world estimate: the frame is clipped or black throughout; use --wb camera")
    multipliers = scale * means[1] / means
    return multipliers / multipliers[1]


@dataclass(frozen=True)
class WhiteBalance:
    """A parsed ``--wb``: 'camera', 'auto', an illuminant name or a temperature in kelvin."""

    mode: str
    kelvin: float | None = None

    def multipliers(self, raw: RawImage) -> np.ndarray:
        if self.mode == "camera":
            return raw.wb
        if self.mode == "auto":
            return grey_world(raw)
        return multipliers_for(raw, planckian_xy(self.kelvin) if self.kelvin else ILLUMINANTS[self.mode])

    def __str__(self) -> str:
        return f"{self.kelvin:g} K" if self.kelvin else self.mode


def parse_white_balance(spec: str) -> WhiteBalance:
    name = spec.strip().lower()
    if name in MODES:
        return WhiteBalance(name)
    try:
        kelvin = float(name.removesuffix("k"))
    except ValueError:
        raise WhiteBalanceError(f"--wb {spec}: unknown white balance; use {', '.join(MODES)} or a temperature "
                                f"in kelvin ({KELVIN_RANGE[0]:g}-{KELVIN_RANGE[1]:g})") from None
    if not KELVIN_RANGE[0] <= kelvin <= KELVIN_RANGE[1]:
        raise WhiteBalanceError(f"--wb {spec}: a temperature must be {KELVIN_RANGE[0]:g}-{KELVIN_RANGE[1]:g} K")
    return WhiteBalance("kelvin", kelvin)


def correlated_temperature(raw: RawImage) -> float | None:
    """The as-shot white balance as a colour temperature (McCamy 1992, from the chromaticity of the
    light it makes neutral), for ``rawrestore info``; None where the file cannot say."""
    if raw.daylight_wb is None:
        return None
    xyz = raw.cam_to_xyz @ (raw.daylight_wb / raw.wb)
    x, y = xyz[0] / xyz.sum(), xyz[1] / xyz.sum()
    n = (x - 0.3320) / (0.1858 - y)
    return float(449 * n ** 3 + 3525 * n ** 2 + 6823.3 * n + 5520.33)
