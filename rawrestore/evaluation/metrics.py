"""Full-reference scores of a developed image against its ground truth, all computable offline.

Every function takes (H, W, 3) float display sRGB in [0, 1], the output first, and the same pixels of
both (:func:`score` cuts the interior and clips the output). What each measures and which way is
better is declared once, in :data:`METRICS`, for the tables.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from types import ModuleType

import numpy as np

BORDER = 8  # px dropped on every side for every method: RawTherapee crops 4 px, demosaic edges differ
TONE_BINS = 16
FLAT_BLOCK = 8
FLAT_FRACTION = 0.1       # the flattest tenth of the ground truth's blocks
FLAT_HIGH_PASS_SIGMA = 2.0
SWD_PATCH = 7
SWD_PATCHES = 4096        # per pyramid level and image
SWD_DIRECTIONS = 512      # ProGAN: 4 repeats of 128
SWD_MIN_SIDE = 16         # the coarsest pyramid level, as ProGAN's
PIQ_INSTALL = "pip install torch==2.14.1 torchvision==0.29.1 piq"


@dataclass(frozen=True)
class Metric:
    key: str
    title: str
    fmt: str
    better: str  # "higher", "lower", or "1" (closest to the ground truth's own value)


METRICS = (
    Metric("psnr_tm", "Tone-matched PSNR, dB (a per-channel monotone tone curve fitted output -> ground truth "
           "first: a developer's own base curve does not count)", "{:.2f}", "higher"),
    Metric("psnr", "PSNR, dB", "{:.2f}", "higher"),
    Metric("ssim", "SSIM", "{:.3f}", "higher"),
    Metric("de00", "Mean CIEDE2000", "{:.2f}", "lower"),
    Metric("gmsd", "GMSD (gradient magnitude similarity deviation)", "{:.3f}", "lower"),
    Metric("hf_ratio", "High-frequency energy ratio (Laplacian energy, output / ground truth: <1 smoothed, "
           ">1 noise or artefacts)", "{:.2f}", "1"),
    Metric("flat_noise", "Flat-patch residual noise (std of the high-passed output - ground truth on the ground "
           "truth's flattest 8x8 blocks, 8-bit levels)", "{:.2f}", "lower"),
    Metric("swd", "Laplacian-pyramid sliced Wasserstein distance of 7x7 patches (x1e3, texture realism)",
           "{:.1f}", "lower"),
    Metric("vsi", "VSI (piq)", "{:.4f}", "higher"),
    Metric("mdsi", "MDSI (piq)", "{:.4f}", "lower"),
    Metric("haarpsi", "HaarPSI (piq)", "{:.4f}", "higher"),
)


def interior(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The interior crop (``BORDER`` px off the ground truth's sides) of an output that may have lost
    a centred border of its own (RawTherapee), as (h, w, 3) float."""
    h, w = shape
    dy, dx = (h - image.shape[0]) // 2, (w - image.shape[1]) // 2
    if not (0 <= dy <= BORDER and 0 <= dx <= BORDER):
        raise ValueError(f"output {image.shape[:2]} cannot be aligned to ground truth {shape}")
    return image[BORDER - dy:h - BORDER - dy, BORDER - dx:w - BORDER - dx]


def psnr(output: np.ndarray, target: np.ndarray) -> float:
    mse = float(np.mean((output.astype(np.float64) - target) ** 2))
    return float(10 * np.log10(1.0 / max(mse, 1e-12)))


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def tone_matched(output: np.ndarray, target: np.ndarray, bins: int = TONE_BINS) -> np.ndarray:
    """The output through the per-channel monotone piecewise-linear curve (``bins`` equal segments of
    [0, 1]) that fits the ground truth best in least squares, clipped to [0, 1].

    The curve is an intercept plus a non-negative slope per segment; the identity is one such curve,
    so the fit is never worse than the output itself (tone-matched PSNR >= PSNR)."""
    from scipy.optimize import lsq_linear

    knots = np.linspace(0.0, 1.0, bins + 1)
    lower = np.r_[np.zeros(bins), -np.inf]
    matched = np.empty(target.shape, dtype=np.float64)
    for c in range(target.shape[2]):
        x = output[..., c].astype(np.float64).ravel()
        basis = np.hstack([np.clip(x[:, None] - knots[:-1], 0.0, np.diff(knots)), np.ones((x.size, 1))])
        # The same minimiser from the normal equations' Cholesky factor R (|Ax - y|^2 = |Rx - z|^2 + const):
        # a (bins + 1)-row problem for the bounded solver. The tiny ridge keeps R finite when a segment
        # holds no pixel (its column is all zero, its slope then 0).
        gram = basis.T @ basis + 1e-12 * np.eye(bins + 1)
        r = np.linalg.cholesky(gram).T
        z = np.linalg.solve(r.T, basis.T @ target[..., c].astype(np.float64).ravel())
        fit = lsq_linear(r, z, bounds=(lower, np.inf), method="bvls")
        matched[..., c] = (basis @ fit.x).reshape(target.shape[:2])
    return matched.clip(0.0, 1.0)


def tone_matched_psnr(output: np.ndarray, target: np.ndarray) -> float:
    return psnr(tone_matched(output, target), target)


def gmsd(output: np.ndarray, target: np.ndarray) -> float:
    """Gradient magnitude similarity deviation (Xue et al., IEEE TIP 2014), on full-resolution luma
    (no 2x downsampling, so the finest texture counts). 0 = identical gradients; lower is better."""
    from scipy.ndimage import prewitt

    def magnitude(y):
        return np.hypot(prewitt(y, axis=0) / 3, prewitt(y, axis=1) / 3)

    m_out, m_gt = magnitude(_luma(output)), magnitude(_luma(target))
    c = 170 / 255 ** 2  # the paper's constant, for data in [0, 1]
    similarity = (2 * m_out * m_gt + c) / (m_out ** 2 + m_gt ** 2 + c)
    return float(similarity.std())


def hf_ratio(output: np.ndarray, target: np.ndarray) -> float:
    """Laplacian energy of the output over the ground truth's: 1 = as much fine detail; below 1
    smoothed away, above 1 noise or artefacts added."""
    from scipy.ndimage import laplace

    return float(np.sum(laplace(_luma(output)) ** 2) / max(np.sum(laplace(_luma(target)) ** 2), 1e-12))


def _blocks(image: np.ndarray, side: int) -> np.ndarray:
    """(h, w, ...) -> (blocks, side * side, ...) of the whole side x side blocks."""
    h, w = image.shape[0] // side * side, image.shape[1] // side * side
    cut = image[:h, :w].reshape(h // side, side, w // side, side, *image.shape[2:])
    return np.swapaxes(cut, 1, 2).reshape(-1, side * side, *image.shape[2:])


def flat_patch_noise(output: np.ndarray, target: np.ndarray) -> float:
    """Residual noise where there is nothing to restore: the RMS, in 8-bit levels, of output minus ground
    truth, high-passed, over the ground truth's flattest 8x8 blocks (by the std of its luma).

    The high-pass leaves out tone and colour offsets (the PSNRs and CIEDE2000 count those), so this is
    the noise a method left or added: texture a diffusion step invents in a flat sky shows here."""
    from scipy.ndimage import gaussian_filter

    residual = output.astype(np.float64) - target
    high = residual - gaussian_filter(residual, (FLAT_HIGH_PASS_SIGMA, FLAT_HIGH_PASS_SIGMA, 0))
    flatness = _blocks(_luma(target), FLAT_BLOCK).std(axis=1)
    flat = flatness <= np.quantile(flatness, FLAT_FRACTION)
    return float(np.sqrt(np.mean(_blocks(high, FLAT_BLOCK)[flat] ** 2)) * 255)


_BINOMIAL = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16


def _smooth(image: np.ndarray, taps: np.ndarray) -> np.ndarray:
    from scipy.ndimage import convolve1d

    return convolve1d(convolve1d(image, taps, axis=0, mode="reflect"), taps, axis=1, mode="reflect")


def laplacian_pyramid(image: np.ndarray) -> list[np.ndarray]:
    """Band-pass levels (finest first) down to a low-pass level of about ``SWD_MIN_SIDE`` px, with the
    binomial 5-tap kernel of ProGAN's (OpenCV's pyrDown/pyrUp)."""
    levels, current = [], image.astype(np.float64)
    while min(current.shape[:2]) >= 2 * SWD_MIN_SIDE:
        smaller = _smooth(current, _BINOMIAL)[::2, ::2]
        up = np.zeros_like(current)
        up[::2, ::2] = smaller
        levels.append(current - _smooth(up, 2 * _BINOMIAL))
        current = smaller
    return [*levels, current]


def _patches(level: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """(n, 3 * 7 * 7) descriptors, channel-major, of the 7x7 windows at the flat ``positions`` of a level."""
    from numpy.lib.stride_tricks import sliding_window_view

    windows = sliding_window_view(level, (SWD_PATCH, SWD_PATCH), axis=(0, 1))  # (y, x, 3, 7, 7), a view
    ys, xs = np.divmod(positions, windows.shape[1])
    return windows[ys, xs].reshape(len(positions), -1)


def sliced_wasserstein(output: np.ndarray, target: np.ndarray, seed: int = 0) -> float:
    """Sliced Wasserstein distance between the 7x7 patches of the two images' Laplacian pyramids
    (Karras et al., ProGAN, 2018, section 5), averaged over the levels, x1e3 as ProGAN reports it.

    Patches are taken at the same seeded positions in both images (less sampling noise; the distance
    still compares distributions: each projection is sorted). Unlike ProGAN, both sets are normalised
    by the ground truth's per-channel mean and std, not each by its own: a smoothed output, whose fine
    levels have less energy, must score worse, not be rescaled back to the ground truth's contrast."""
    rng = np.random.default_rng(seed)
    channels = target.shape[2]
    directions = rng.standard_normal((channels * SWD_PATCH * SWD_PATCH, SWD_DIRECTIONS))
    directions = (directions / np.linalg.norm(directions, axis=0, keepdims=True)).astype(np.float32)
    distances = []
    for out_level, gt_level in zip(laplacian_pyramid(output), laplacian_pyramid(target), strict=True):
        count = (gt_level.shape[0] - SWD_PATCH + 1) * (gt_level.shape[1] - SWD_PATCH + 1)
        positions = rng.choice(count, size=min(SWD_PATCHES, count), replace=False)
        # float32 from here: the projections are most of the cost, and their rounding is far below the distance.
        gt_desc = _patches(gt_level, positions).reshape(len(positions), channels, -1).astype(np.float32)
        mean = gt_desc.mean(axis=(0, 2))[:, None]
        std = np.maximum(gt_desc.std(axis=(0, 2)), 1e-8)[:, None]
        out_desc = _patches(out_level, positions).reshape(len(positions), channels, -1).astype(np.float32)
        projected = [np.sort(((d - mean) / std).reshape(len(positions), -1) @ directions, axis=0)
                     for d in (out_desc, gt_desc)]
        distances.append(float(np.abs(projected[0] - projected[1]).mean()))
    return float(np.mean(distances) * 1e3)


@lru_cache(maxsize=1)
def piq_module() -> tuple[ModuleType | None, str]:
    """piq and '' where it imports, else None and why (it needs a torchvision that matches torch)."""
    try:
        import piq
    except Exception as err:  # noqa: BLE001 - ImportError, or torchvision's RuntimeError beside a foreign torch
        return None, (f"piq does not import here ({type(err).__name__}: {err}); with a torchvision that matches "
                      f"torch: {PIQ_INSTALL}")
    return piq, ""


def perceptual_scores(output: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """piq's weight-free full-reference scores (VSI, MDSI, HaarPSI); none where piq is missing."""
    piq, _ = piq_module()
    if piq is None:
        return {}
    import torch

    x, y = (torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1), dtype=np.float32))[None].clamp(0, 1)
            for a in (output, target))
    return {"vsi": float(piq.vsi(x, y, data_range=1.0)), "mdsi": float(piq.mdsi(x, y, data_range=1.0)),
            "haarpsi": float(piq.haarpsi(x, y, data_range=1.0))}


def score(output: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """Every metric on the interior of an output (clipped to [0, 1]) against its ground truth."""
    from skimage.color import deltaE_ciede2000, rgb2lab
    from skimage.metrics import structural_similarity

    out = np.clip(interior(output, gt.shape[:2]), 0, 1)
    ref = interior(gt, gt.shape[:2])
    return {"psnr": psnr(out, ref), "psnr_tm": tone_matched_psnr(out, ref),
            "ssim": float(structural_similarity(out, ref, channel_axis=2, data_range=1.0)),
            "de00": float(deltaE_ciede2000(rgb2lab(ref), rgb2lab(out)).mean()),
            "gmsd": gmsd(out, ref), "hf_ratio": hf_ratio(out, ref), "flat_noise": flat_patch_noise(out, ref),
            "swd": sliced_wasserstein(out, ref), **perceptual_scores(out, ref)}
