"""The classical ISP: our fast RAW developer, the colour condition of the model and its baseline.

Steps (each a small function over torch tensors, CHW float32):
  black/white normalisation -> white balance -> highlight clip -> RCD demosaic
  -> camera-to-sRGB matrix -> exposure -> sRGB transfer curve -> orientation.
"""
from __future__ import annotations

import math
from typing import Callable

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

# Ratio Corrected Demosaicing (RCD; L. Sanz Rodriguez, 2017), the default of RawTherapee and
# darktable. Every estimate is a blend of two opposite directions weighted by the other one's
# gradient (so it does not cross an edge), and a blend of two orthogonal directions weighted by a
# directional statistic: the local energy of a sixth-order high-pass filter along each direction
# (large across an edge). Green at red and blue sites is the neighbour's green scaled by the ratio
# of a low-pass of the mosaic (colour ratios are smooth where colour is); red and blue then come
# from colour differences with green, first along the diagonals at blue and red sites, then along
# rows and columns at green sites. The lattices below are the sites of one CFA colour, so each
# step computes only where its colour is missing.
_EPS = 1e-5
_RED, _BLUE, _GREEN_IN_RED_ROWS, _GREEN_IN_BLUE_ROWS = (0, 0), (1, 1), (0, 1), (1, 0)
_PAD = 12  # even (keeps the CFA phase) and more than the demosaic's reach, 10 px


class _Lattice:
    """The sites of one CFA colour (``phase``: row, column parity) at least ``margin`` px inside a
    padded (H, W) plane. Planes are held as their four phases, (2, 2, H/2, W/2) with
    ``planes[py, px, i, j]`` the site (2i + py, 2j + px): a shift of a site set is then a slice
    with unit stride, which torch's elementwise kernels vectorise; the same slices of the full
    plane, with stride 2, made the demosaic twice as slow. ``of(planes)`` gives the values shifted
    by (dy, dx) over these sites, ``put`` writes values to them."""

    def __init__(self, shape: torch.Size, margin: int, phase: tuple[int, int]):
        height, width = shape
        self.phase = phase
        # Plane index i holds row 2i + py: the rows margin <= 2i + py < height - margin.
        self.rows = (-(-(margin - phase[0]) // 2), -(-(height - margin - phase[0]) // 2))
        self.cols = (-(-(margin - phase[1]) // 2), -(-(width - margin - phase[1]) // 2))

    def of(self, planes: torch.Tensor) -> Callable[[int, int], torch.Tensor]:
        (py, px), (r0, r1), (c0, c1) = self.phase, self.rows, self.cols

        def at(dy: int, dx: int) -> torch.Tensor:
            qy, qx = py + dy, px + dx
            return planes[qy % 2, qx % 2, r0 + qy // 2:r1 + qy // 2, c0 + qx // 2:c1 + qx // 2]
        return at

    def put(self, planes: torch.Tensor, values: torch.Tensor) -> None:
        (py, px), (r0, r1), (c0, c1) = self.phase, self.rows, self.cols
        planes[py, px, r0:r1, c0:c1] = values


_ALL_SITES = [(0, 0), (0, 1), (1, 0), (1, 1)]


def _phases_of(plane: torch.Tensor) -> torch.Tensor:
    """(H, W), even sides -> (2, 2, H/2, W/2), the layout :class:`_Lattice` reads."""
    h, w = plane.shape
    return plane.reshape(h // 2, 2, w // 2, 2).permute(1, 3, 0, 2).contiguous()


def _plane_of(phases: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_phases_of` over the leading dimensions: (..., 2, 2, h, w) -> (..., 2h, 2w)."""
    *lead, _, _, h, w = phases.shape
    n = len(lead)
    order = [*range(n), n + 2, n, n + 3, n + 1]
    return phases.permute(order).reshape(*lead, 2 * h, 2 * w)


def _high_pass(at: Callable[[int, int], torch.Tensor], dy: int, dx: int) -> torch.Tensor:
    """RCD's sixth-order high-pass along (dy, dx): zero on constant and linear signals."""
    s = lambda k: at(k * dy, k * dx)  # noqa: E731
    return (s(-3) - s(-1) - s(1) + s(3)) - 3 * (s(-2) + s(2)) + 6 * s(0)


def _direction_weight(cfa: torch.Tensor, first: tuple[int, int], second: tuple[int, int],
                      phases: list) -> torch.Tensor:
    """Per site, the weight of the ``second`` direction against the ``first``: the first's share of
    the high-pass energy (3 taps along each), replaced by the mean of the 4 diagonal neighbours'
    weights where that mean is more decided (further from 0.5)."""
    energy = {step: torch.zeros_like(cfa) for step in (first, second)}
    weight = torch.full_like(cfa, 0.5)
    shape = (2 * cfa.shape[2], 2 * cfa.shape[3])
    for phase in phases:
        lattice = _Lattice(shape, 3, phase)
        for step, plane in energy.items():
            response = _high_pass(lattice.of(cfa), *step)
            lattice.put(plane, response * response)
    for phase in phases:
        lattice = _Lattice(shape, 4, phase)

        def along(step: tuple[int, int]) -> torch.Tensor:
            at = lattice.of(energy[step])
            return (at(-step[0], -step[1]) + at(0, 0) + at(*step)).clamp_min(1e-10)

        first_energy, second_energy = along(first), along(second)
        lattice.put(weight, first_energy / (first_energy + second_energy))
    refined = weight.clone()
    for phase in phases:
        lattice = _Lattice(shape, 5, phase)
        at = lattice.of(weight)
        centre, around = at(0, 0), 0.25 * (at(-1, -1) + at(-1, 1) + at(1, -1) + at(1, 1))
        lattice.put(refined, torch.where((centre - 0.5).abs() < (around - 0.5).abs(), around, centre))
    return refined


def _two_sided(minus_gradient: torch.Tensor, plus_gradient: torch.Tensor, minus_estimate: torch.Tensor,
               plus_estimate: torch.Tensor) -> torch.Tensor:
    """Each side's estimate weighted by the other side's gradient."""
    return (plus_gradient * minus_estimate + minus_gradient * plus_estimate) / (minus_gradient + plus_gradient)


def demosaic(mosaic: torch.Tensor) -> torch.Tensor:
    """RCD demosaic of an RGGB (H, W) mosaic -> (3, H, W)."""
    h, w = mosaic.shape
    # Padded to even sides (the extra row or column is beyond the reach of every real site).
    padded = F.pad(mosaic[None, None], (_PAD, _PAD + w % 2, _PAD, _PAD + h % 2), mode="reflect")[0, 0]
    shape = padded.shape
    cfa = _phases_of(padded)
    vertical_to_horizontal = _direction_weight(cfa, (1, 0), (0, 1), _ALL_SITES)
    falling_to_rising = _direction_weight(cfa, (1, 1), (1, -1), [_RED, _BLUE])

    # Low-pass of the mosaic (a 3x3 binomial: every colour contributes), clipped at zero so that
    # the ratios below stay in [0, 2] on noisy dark data.
    low_pass = torch.zeros_like(cfa)
    clipped = cfa.clamp_min(0)
    for phase in _ALL_SITES:
        lattice = _Lattice(shape, 1, phase)
        at = lattice.of(clipped)
        lattice.put(low_pass, 0.25 * at(0, 0) + 0.125 * (at(-1, 0) + at(1, 0) + at(0, -1) + at(0, 1))
                    + 0.0625 * (at(-1, -1) + at(-1, 1) + at(1, -1) + at(1, 1)))

    green = cfa.clone()
    for phase in (_RED, _BLUE):
        lattice = _Lattice(shape, 5, phase)
        c, lp = lattice.of(cfa), lattice.of(low_pass)

        def green_along(dy: int, dx: int) -> torch.Tensor:
            s = lambda k: c(k * dy, k * dx)  # noqa: E731
            l = lambda k: lp(k * dy, k * dx)  # noqa: E731
            minus = _EPS + (s(-1) - s(1)).abs() + (s(0) - s(-2)).abs() + (s(-1) - s(-3)).abs() + (s(-2) - s(-4)).abs()
            plus = _EPS + (s(1) - s(-1)).abs() + (s(0) - s(2)).abs() + (s(1) - s(3)).abs() + (s(2) - s(4)).abs()
            return _two_sided(minus, plus, s(-1) * (2 * l(0) + _EPS) / (l(0) + l(-2) + _EPS),
                              s(1) * (2 * l(0) + _EPS) / (l(0) + l(2) + _EPS))

        lattice.put(green, torch.lerp(green_along(1, 0), green_along(0, 1), lattice.of(vertical_to_horizontal)(0, 0)))

    red, blue = cfa.clone(), cfa.clone()

    def colour_along(c, g, dy: int, dx: int) -> torch.Tensor:
        """The colour difference c - g at the two neighbours along (dy, dx), blended."""
        s = lambda k: c(k * dy, k * dx)  # noqa: E731
        t = lambda k: g(k * dy, k * dx)  # noqa: E731
        minus = _EPS + (s(-1) - s(1)).abs() + (s(-1) - s(-3)).abs() + (t(0) - t(-2)).abs()
        plus = _EPS + (s(1) - s(-1)).abs() + (s(1) - s(3)).abs() + (t(0) - t(2)).abs()
        return _two_sided(minus, plus, s(-1) - t(-1), s(1) - t(1))

    for phase, plane in ((_RED, blue), (_BLUE, red)):  # blue at red sites, red at blue sites
        lattice = _Lattice(shape, 7, phase)
        c, g = lattice.of(cfa), lattice.of(green)
        lattice.put(plane, g(0, 0) + torch.lerp(colour_along(c, g, 1, 1), colour_along(c, g, 1, -1),
                                                lattice.of(falling_to_rising)(0, 0)))
    for phase in (_GREEN_IN_RED_ROWS, _GREEN_IN_BLUE_ROWS):  # red and blue at green sites
        lattice = _Lattice(shape, 10, phase)
        g, weight = lattice.of(green), lattice.of(vertical_to_horizontal)(0, 0)
        for plane in (red, blue):
            c = lattice.of(plane)
            lattice.put(plane, g(0, 0) + torch.lerp(colour_along(c, g, 1, 0), colour_along(c, g, 0, 1), weight))
    return _plane_of(torch.stack([red, green, blue]))[:, _PAD:_PAD + h, _PAD:_PAD + w]


def demosaic_in_strips(mosaic: torch.Tensor, rows: int = 1024) -> torch.Tensor:
    """:func:`demosaic`, the same result, strip by strip (each with 12 rows of its neighbours; the
    demosaic reaches 10): the temporaries stay bounded on a large frame, and a model tile (768
    rows plus overlap) is one strip, demosaicked whole: cutting it in strips made it 2x slower."""
    context = _PAD  # even, like ``rows``: every strip starts on a red row
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
    """IEC 61966-2-1 sRGB transfer curve.

    The curve is concave and its two pieces meet at the knee, so it is the smaller of the linear
    piece and the power piece evaluated above the knee; exp(log(x) / 2.4) is twice as fast as
    torch's pow with a fractional exponent. Together about 2x faster than a ``where`` of the two."""
    x = linear.clamp(0.0, 1.0)
    power = x.clamp_min(0.0031308).log_().mul_(1 / 2.4).exp_().mul_(1.055).sub_(0.055)
    return torch.minimum(power, x.mul_(12.92))


def srgb_decode(encoded: torch.Tensor) -> torch.Tensor:
    x = encoded.clamp(0.0, 1.0)
    return torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def tone_curve(x: torch.Tensor) -> torch.Tensor:
    """Smoothstep tone curve 3x^2 - 2x^3 (Brooks et al. 2019, the inverse of their unprocessing)."""
    x = x.clamp(0.0, 1.0)
    return 3 * x * x - 2 * x * x * x


# --- Exposure -------------------------------------------------------------------------------

AUTO_EXPOSURE_TARGET = 0.5  # where a very dark frame's 99th percentile of luminance is lifted to
# The lift's ramp, in stops below that target: none above the first (a 99th percentile of 0.25 or
# more: any normal exposure), the whole deficit below the second (1/16).
_LIFT_STARTS, _LIFT_FULL = 1.0, 3.0


def auto_exposure_ev(linear_rgb: torch.Tensor, max_ev: float = 8.0) -> float:
    """The EV that lifts a dark frame, a smooth function of its brightness.

    The brightness is the 99th percentile of luminance, p99; the deficit d = log2(0.5 / p99) stops.
    The lift is d times a smoothstep that rises from 0 at d = 1 to 1 at d = 3: no lift for a normal
    exposure, the whole deficit for a very dark frame, and no jump in between (a threshold made
    near-identical frames come out a stop apart). Its slope is at most 2.3 EV per stop, so frames
    1 % apart in brightness (0.014 stops) get EVs at most 0.033 apart.
    """
    lum = (0.2126 * linear_rgb[0] + 0.7152 * linear_rgb[1] + 0.0722 * linear_rgb[2]).flatten()
    step = max(1, lum.numel() // 200_000)
    p99 = float(torch.quantile(lum[::step], 0.99))
    deficit = math.log2(AUTO_EXPOSURE_TARGET / max(p99, 1e-6))
    ramp = min(max((deficit - _LIFT_STARTS) / (_LIFT_FULL - _LIFT_STARTS), 0.0), 1.0)
    return min(max_ev, deficit * ramp * ramp * (3 - 2 * ramp)) if ramp > 0 else 0.0  # not -0.0


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

def frame_exposure_ev(linear_rgb: torch.Tensor, exposure_ev: float, auto_exposure: bool) -> float:
    """The EV a frame is developed at: ``exposure_ev`` (``--exposure``) added to the frame's own
    auto lift, which is measured on the frame as it is, so the two add up."""
    return exposure_ev + (auto_exposure_ev(linear_rgb) if auto_exposure else 0.0)


def exposure_gain(linear_rgb: torch.Tensor, exposure_ev: float, auto_exposure: bool) -> float:
    return 2.0 ** frame_exposure_ev(linear_rgb, exposure_ev, auto_exposure)


def linear_from_mosaic(mosaic: torch.Tensor, wb: np.ndarray, srgb_from_cam: np.ndarray) -> torch.Tensor:
    """Normalised RGGB mosaic (H, W) -> linear sRGB (3, H, W): white balance, demosaic, matrix."""
    return apply_matrix(demosaic_in_strips(white_balance_mosaic(mosaic, wb)), srgb_from_cam)


def binned_linear(packed: torch.Tensor, wb: np.ndarray, srgb_from_cam: np.ndarray) -> torch.Tensor:
    """Linear sRGB at the packed grid (H/2) by 2x2 binning (R, mean G, B), white balance with the
    ISP's highlight clip and the colour matrix: the fast classical development."""
    rgb = torch.stack([packed[0], 0.5 * (packed[1] + packed[2]), packed[3]])
    gains = torch.as_tensor(np.asarray(wb, dtype=np.float32))[:, None, None]
    return apply_matrix((rgb * gains).clamp(0, float(np.min(wb))), srgb_from_cam)


Rggb = tuple[torch.Tensor, tuple[int, int]]  # what normalized_rggb returns


def exposure_reference(raw: RawImage, rggb: Rggb | None = None) -> torch.Tensor:
    """What a frame's auto exposure is measured on, whichever path develops it (classical ISP, model,
    ``--strength`` blend), so that they all get the same EV: the fast classical development at the
    as-shot white balance (so ``--wb`` changes colour, not exposure); LibRaw's for non-Bayer files.
    ``rggb``: :func:`normalized_rggb` of the frame where the caller has it (0.3-0.6 s of 24 MP)."""
    if not raw.is_bayer:
        return develop_linear(raw)
    return binned_linear(pack((rggb or normalized_rggb(raw))[0]), raw.wb, raw.srgb_from_cam)


def develop_linear(raw: RawImage, wb: np.ndarray | None = None, rggb: Rggb | None = None) -> torch.Tensor:
    """Linear sRGB (3, H, W), not oriented, before exposure, at the white balance ``wb`` (default:
    as shot); LibRaw's own for non-Bayer files, which LibRaw balanced as shot: there another
    balance is the change of multipliers applied in camera space (the matrix's inverse, the ratio,
    the matrix). ``rggb`` as for :func:`exposure_reference`."""
    if not raw.is_bayer:
        rgb = torch.from_numpy(np.ascontiguousarray(raw.rgb.transpose(2, 0, 1)))
        if wb is None or np.array_equal(wb, raw.wb):
            return rgb
        change = raw.srgb_from_cam @ np.diag(np.asarray(wb) / raw.wb) @ np.linalg.inv(raw.srgb_from_cam)
        return apply_matrix(rgb, change)
    h, w = raw.mosaic.shape
    mosaic, offset = rggb or normalized_rggb(raw)
    return crop_back(linear_from_mosaic(mosaic, raw.wb if wb is None else wb, raw.srgb_from_cam), offset, (h, w))


def display_from_linear(linear: torch.Tensor, gain: float, orientation: int) -> torch.Tensor:
    """Exposure, the sRGB curve and orientation: linear sRGB (3, H, W) -> upright display sRGB."""
    # In strips of rows, which stay in cache: half the time on a 24 MP frame.
    display = torch.cat([srgb_encode(strip * gain) for strip in linear.split(256, dim=1)], dim=1)
    return orient(display, orientation)


def develop_classical(raw: RawImage, exposure_ev: float = 0.0, auto_exposure: bool = True,
                      gain: float | None = None, wb: np.ndarray | None = None) -> torch.Tensor:
    """Classical development to display sRGB (3, H, W) in [0, 1], upright, at the white balance
    ``wb`` (default: as shot).

    ``gain`` overrides the exposure computation (the model pipeline passes the one it used).
    """
    rggb = normalized_rggb(raw) if raw.is_bayer else None
    if gain is None:
        gain = exposure_gain(exposure_reference(raw, rggb), exposure_ev, auto_exposure)
    return display_from_linear(develop_linear(raw, wb, rggb), gain, raw.orientation)


# --- --strength ---------------------------------------------------------------------------------

_REC709_LUMA = (0.2126, 0.7152, 0.0722)  # the luminance of linear sRGB


def blend_restored(restored: torch.Tensor, classical: torch.Tensor, strength: float, chroma_strength: float,
                   luma: np.ndarray | None = None, neutral: np.ndarray | None = None) -> torch.Tensor:
    """``classical`` + ``strength`` x the luminance part of (restored - classical) + ``chroma_strength``
    x the rest (its chroma), on linear (3, H, W) images: strength 1 and 1 give ``restored``, 0 and 0
    exactly ``classical`` (added zeros), values between keep some of the classical grain.

    The luminance part of a difference d is (luma . d) x neutral: by default Rec. 709 luminance and
    grey in linear sRGB. Another linear space passes the same split expressed in it (``luma`` the
    luminance weights, ``neutral`` its grey, luma . neutral = 1), which gives the same blend."""
    weights = torch.tensor(_REC709_LUMA if luma is None else luma, dtype=restored.dtype)
    grey = torch.ones(3, dtype=restored.dtype) if neutral is None else torch.as_tensor(neutral, dtype=restored.dtype)
    difference = restored - classical
    luminance = torch.einsum("c,chw->hw", weights, difference)[None] * grey[:, None, None]
    return difference.mul_(chroma_strength).add_(luminance, alpha=strength - chroma_strength).add_(classical)
