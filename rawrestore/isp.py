"""The classical ISP: our fast RAW developer, the colour condition of the model and its baseline.

Steps (each a small function over torch tensors, CHW float32):
  black/white normalisation -> white balance -> highlight clip -> weighted Hamilton-Adams demosaic
  -> camera-to-sRGB matrix -> exposure -> sRGB transfer curve -> orientation.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .rawio import RawImage

# --- Bayer layout unification -------------------------------------------------------------

_PHASE = {"RGGB": (0, 0), "GRBG": (0, 1), "GBRG": (1, 0), "BGGR": (1, 1)}


def to_rggb(mosaic: torch.Tensor, cfa: str) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad a (H, W) mosaic so that it starts with an R site and has even sides.

    Reflection about the edge keeps the CFA consistent (site -1 has the colour of site +1), so
    every layout becomes the same RGGB picture. Returns the padded mosaic and the (top, left)
    offset to crop the result back with :func:`crop_back`.
    """
    top, left = _PHASE[cfa]
    h, w = mosaic.shape
    bottom = (h + top) % 2
    right = (w + left) % 2
    if top or left or bottom or right:
        mosaic = F.pad(mosaic[None, None], (left, right, top, bottom), mode="reflect")[0, 0]
    return mosaic, (top, left)


def crop_back(image: torch.Tensor, offset: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Undo :func:`to_rggb` on a full-resolution (C, H, W) result."""
    top, left = offset
    return image[..., top:top + size[0], left:left + size[1]]


def pack(mosaic: torch.Tensor) -> torch.Tensor:
    """RGGB (H, W) -> (4, H/2, W/2) in the canonical order R, G1 (red row), G2 (blue row), B."""
    return torch.stack([mosaic[0::2, 0::2], mosaic[0::2, 1::2], mosaic[1::2, 0::2], mosaic[1::2, 1::2]])


def unpack(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack`."""
    c, h, w = packed.shape
    out = packed.new_empty(2 * h, 2 * w)
    out[0::2, 0::2], out[0::2, 1::2], out[1::2, 0::2], out[1::2, 1::2] = packed
    return out


def site_values(values3: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Per-colour values (R, G, B) laid out per canonical packed channel (R, G1, G2, B)."""
    v = torch.as_tensor(np.asarray(values3, dtype=np.float32))
    return torch.stack([v[0], v[1], v[1], v[2]])


def normalized_rggb(raw: RawImage) -> tuple[torch.Tensor, tuple[int, int]]:
    """Black-subtracted, white-scaled mosaic in RGGB phase (1.0 = sensor clipping)."""
    mosaic, offset = to_rggb(torch.from_numpy(raw.normalized()), raw.cfa)
    return mosaic, offset


# --- Demosaic -------------------------------------------------------------------------------

# Hamilton and Adams (US patent 5,629,734, 1997), weighted: green at a red or blue site is
# estimated along the row and along the column (the two green neighbours' mean, corrected by
# the second difference of the site's own colour); each direction's weight is 1 / D^2, where D
# (gradient plus Laplacian magnitude, averaged over 3x3) is large across an edge, so the
# estimate follows edges instead of crossing them. Red and blue then come from bilinear
# interpolation of the colour differences R-G and B-G, which are smooth where colour is.
def _mean3x3(x: torch.Tensor) -> torch.Tensor:
    """(h + 2, w + 2) -> (h, w): the mean over each 3x3 window (shifted slices: on one input
    channel this is many times faster than a convolution)."""
    x = x[:-2] + x[1:-1] + x[2:]
    return (x[:, :-2] + x[:, 1:-1] + x[:, 2:]) / 9


def demosaic(mosaic: torch.Tensor) -> torch.Tensor:
    """Weighted Hamilton-Adams demosaic of an RGGB (H, W) mosaic -> (3, H, W)."""
    h, w = mosaic.shape
    # Reflection by an even amount keeps the CFA phase. Green estimates are made over the
    # picture plus a 1 px ring, which the 3x3 mean of the edge activity consumes.
    padded = F.pad(mosaic[None, None], (3, 3, 3, 3), mode="reflect")[0, 0]

    def shifted(dy: int, dx: int) -> torch.Tensor:
        return padded[2 + dy:h + 4 + dy, 2 + dx:w + 4 + dx]

    centre = shifted(0, 0)
    estimates, weights = [], []
    for step in ((0, 1), (1, 0)):  # along the row, along the column
        before, after = shifted(-step[0], -step[1]), shifted(*step)
        outer = shifted(-2 * step[0], -2 * step[1]) + shifted(2 * step[0], 2 * step[1])
        estimates.append((0.5 * (before + centre + after) - 0.25 * outer)[1:-1, 1:-1])
        activity = (before - after).abs() + (2 * centre - outer).abs()
        weights.append((_mean3x3(activity) + 1e-4) ** -2)
    green_at_rb = (weights[0] * estimates[0] + weights[1] * estimates[1]) / (weights[0] + weights[1])
    green = mosaic.clone()
    green[0::2, 0::2] = green_at_rb[0::2, 0::2]
    green[1::2, 1::2] = green_at_rb[1::2, 1::2]
    # Colour differences at the red and blue sites, on the packed grid with a 1 px reflected ring
    # (the packed planes reflect as the mosaic does), spread bilinearly to the other sites.
    r = F.pad((mosaic[0::2, 0::2] - green[0::2, 0::2])[None, None], (1, 1, 1, 1), mode="reflect")[0, 0]
    b = F.pad((mosaic[1::2, 1::2] - green[1::2, 1::2])[None, None], (1, 1, 1, 1), mode="reflect")[0, 0]
    rc, bc = r[1:-1, 1:-1], b[1:-1, 1:-1]
    red_minus_green = unpack(torch.stack([rc, (rc + r[1:-1, 2:]) / 2, (rc + r[2:, 1:-1]) / 2,
                                          (rc + r[1:-1, 2:] + r[2:, 1:-1] + r[2:, 2:]) / 4]))
    blue_minus_green = unpack(torch.stack([(bc + b[:-2, :-2] + b[:-2, 1:-1] + b[1:-1, :-2]) / 4,
                                           (bc + b[:-2, 1:-1]) / 2, (bc + b[1:-1, :-2]) / 2, bc]))
    return torch.stack([green + red_minus_green, green, green + blue_minus_green])


def demosaic_in_strips(mosaic: torch.Tensor, rows: int = 256) -> torch.Tensor:
    """:func:`demosaic`, the same result, strip by strip (each with 8 rows of its neighbours; the
    demosaic reaches 5): a strip's planes stay in cache, a 24 MP frame's do not (4x faster on one)."""
    context = 8  # even, like ``rows``: every strip starts on a red row
    strips = []
    for top in range(0, mosaic.shape[0], rows):
        start, stop = max(0, top - context), min(mosaic.shape[0], top + rows + context)
        strips.append(demosaic(mosaic[start:stop])[:, top - start:top - start + rows])
    return torch.cat(strips, dim=1)


# --- Colour ---------------------------------------------------------------------------------

def white_balance_mosaic(mosaic: torch.Tensor, wb: np.ndarray) -> torch.Tensor:
    """Apply WB gains per site and clip at the smallest gain, so clipped highlights stay neutral
    (a channel that saturated cannot be scaled past the others: no magenta skies)."""
    gains = site_values(wb).to(mosaic)
    out = unpack(pack(mosaic) * gains[:, None, None])
    return out.clamp(0.0, float(np.min(wb)))


def apply_matrix(rgb: torch.Tensor, matrix: np.ndarray) -> torch.Tensor:
    """(3, H, W) x 3x3 colour matrix."""
    m = torch.as_tensor(np.asarray(matrix, dtype=np.float32)).to(rgb)
    return torch.einsum("ij,jhw->ihw", m, rgb)


def srgb_encode(linear: torch.Tensor) -> torch.Tensor:
    """IEC 61966-2-1 sRGB transfer curve."""
    x = linear.clamp(0.0, 1.0)
    return torch.where(x <= 0.0031308, 12.92 * x, 1.055 * x.clamp_min(1e-12) ** (1 / 2.4) - 0.055)


def srgb_decode(encoded: torch.Tensor) -> torch.Tensor:
    x = encoded.clamp(0.0, 1.0)
    return torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def tone_curve(x: torch.Tensor) -> torch.Tensor:
    """Smoothstep tone curve 3x^2 - 2x^3 (Brooks et al. 2019, the inverse of their unprocessing)."""
    x = x.clamp(0.0, 1.0)
    return 3 * x * x - 2 * x * x * x


# --- Exposure -------------------------------------------------------------------------------

def auto_exposure_gain(linear_rgb: torch.Tensor, max_gain: float = 256.0) -> float:
    """A gain for very dark frames only: lift so that the 99th percentile of luminance reaches 0.5.

    Frames whose 99th percentile is already above 0.25 (any normal exposure) are left alone.
    """
    lum = (0.2126 * linear_rgb[0] + 0.7152 * linear_rgb[1] + 0.0722 * linear_rgb[2]).flatten()
    step = max(1, lum.numel() // 200_000)
    p99 = float(torch.quantile(lum[::step], 0.99))
    if p99 >= 0.25:
        return 1.0
    return float(min(max_gain, 0.5 / max(p99, 1e-6)))


# --- Orientation ------------------------------------------------------------------------------

def orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply an EXIF orientation (1..8) to a (C, H, W) tensor so that it displays upright."""
    ops = {
        1: lambda x: x,
        2: lambda x: x.flip(-1),
        3: lambda x: x.flip(-1).flip(-2),
        4: lambda x: x.flip(-2),
        5: lambda x: x.transpose(-1, -2),
        6: lambda x: x.transpose(-1, -2).flip(-1),
        7: lambda x: x.transpose(-1, -2).flip(-1).flip(-2),
        8: lambda x: x.transpose(-1, -2).flip(-2),
    }
    return ops.get(orientation, ops[1])(image)


# --- Whole developer --------------------------------------------------------------------------

def exposure_gain(linear_rgb: torch.Tensor, exposure_ev: float, auto_exposure: bool) -> float:
    gain = 2.0 ** exposure_ev
    if auto_exposure:
        gain *= auto_exposure_gain(linear_rgb * gain)
    return gain


def linear_from_mosaic(mosaic: torch.Tensor, wb: np.ndarray, srgb_from_cam: np.ndarray) -> torch.Tensor:
    """Normalised RGGB mosaic (H, W) -> linear sRGB (3, H, W): white balance, demosaic, matrix."""
    return apply_matrix(demosaic_in_strips(white_balance_mosaic(mosaic, wb)), srgb_from_cam)


def develop_linear(raw: RawImage) -> torch.Tensor:
    """Linear sRGB (3, H, W), not oriented, before exposure: LibRaw's own for non-Bayer files."""
    if not raw.is_bayer:
        return torch.from_numpy(np.ascontiguousarray(raw.rgb.transpose(2, 0, 1)))
    h, w = raw.mosaic.shape
    mosaic, offset = normalized_rggb(raw)
    return crop_back(linear_from_mosaic(mosaic, raw.wb, raw.srgb_from_cam), offset, (h, w))


def develop_classical(raw: RawImage, exposure_ev: float = 0.0, auto_exposure: bool = True,
                      gain: float | None = None) -> torch.Tensor:
    """Classical development to display sRGB (3, H, W) in [0, 1], upright.

    ``gain`` overrides the exposure computation (the model pipeline passes the one it used).
    """
    linear = develop_linear(raw)
    if gain is None:
        gain = exposure_gain(linear, exposure_ev, auto_exposure)
    # In strips of rows, which stay in cache: half the time on a 24 MP frame.
    display = torch.cat([srgb_encode(strip * gain) for strip in linear.split(256, dim=1)], dim=1)
    return orient(display, raw.orientation)
