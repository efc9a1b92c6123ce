"""Sensor noise: a calibrated physical model to synthesise it, and a blind estimator to measure it.

Synthesis follows ELD (Wei et al., CVPR 2020) in digital numbers (DN):
    z = K * Poisson(y / K) + n_read + n_row + n_quant            (ELD eq. 2-6)
with K the system gain (DN per electron), read noise Gaussian or Tukey-lambda, one Gaussian offset
per row, and uniform quantisation. Read- and row-noise scales follow ELD's log-linear fits
    log(sigma) = slope * log(K) + bias (+ N(0, residual))          (ELD eq. 8)
and K follows ISO linearly between the calibrated K at ISO 100 and ISO 6400 (ExposureDiffusion's
ISO_to_K). Low light (SID): the scene is exposed ``ratio`` times shorter and the digital gain
``ratio`` is applied back after quantisation.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ELD_WHITE_RANGE = 16383 - 800  # the 14-bit data range ELD calibrated K against


@dataclass(frozen=True)
class NoiseParams:
    """Noise of one exposure, in DN of a sensor whose white - black range is ``white_range``."""

    K: float                      # system gain, DN per electron
    read_sigma: float             # read-noise scale, DN
    row_sigma: float = 0.0        # per-row offset std, DN
    tukey_lambda: float | None = None  # None: Gaussian read noise
    ratio: float = 1.0            # low-light exposure ratio, digital gain applied back
    white_range: float = ELD_WHITE_RANGE

    def rescaled(self, white_range: float) -> "NoiseParams":
        """The same sensor, electrons unchanged, read out into a different DN range."""
        s = white_range / self.white_range
        return replace(self, K=self.K * s, read_sigma=self.read_sigma * s, row_sigma=self.row_sigma * s,
                       white_range=white_range)

    def variance(self, x: float) -> float:
        """Expected variance, normalised units, at normalised level ``x`` (after the gain)."""
        w = self.white_range
        read_var = self.read_sigma ** 2 * (_tukey_var(self.tukey_lambda) if self.tukey_lambda is not None else 1)
        dark = self.K * x * w / self.ratio + read_var + self.row_sigma ** 2 + 1 / 12
        return dark * self.ratio ** 2 / w ** 2


def _tukey_var(lam: float) -> float:
    if abs(lam) < 1e-6:
        return math.pi ** 2 / 3
    # Var of the Tukey-lambda distribution (lambda > -1/2).
    return 2 / lam ** 2 * (1 / (1 + 2 * lam) - math.gamma(lam + 1) ** 2 / math.gamma(2 * lam + 2))


@lru_cache(maxsize=1)
def eld_cameras() -> dict:
    """ELD's calibrated cameras (package data, MIT): name -> parameters."""
    text = resources.files("rawrestore").joinpath("data/eld_noise.json").read_text()
    return json.loads(text)


def iso_to_k(camera: str, iso: float) -> float:
    """System gain at an ISO: linear between ISO 100 (Kmin) and 6400 (Kmax), extrapolated beyond."""
    cam = eld_cameras()[camera]
    if iso <= 100:
        return cam["Kmin"] * iso / 100
    return cam["Kmin"] + (iso - 100) / (6400 - 100) * (cam["Kmax"] - cam["Kmin"])


def eld_noise(camera: str, iso: float, ratio: float = 1.0, tukey: bool = True,
              rng: np.random.Generator | None = None) -> NoiseParams:
    """Noise parameters of an ELD camera at an ISO; ``rng`` adds the fits' residual scatter."""
    cam = eld_cameras()[camera]
    K = iso_to_k(camera, iso)

    def scale(fit: dict) -> float:
        jitter = rng.normal(0, fit["sigma"]) if rng is not None else 0.0
        return math.exp(fit["slope"] * math.log(K) + fit["bias"] + jitter)

    lam = None
    if tukey:
        shapes = cam["G_shape"]
        lam = float(rng.choice(shapes)) if rng is not None else float(np.median(shapes))
    read = scale(cam["G_scale"] if tukey else cam["g_scale"])
    return NoiseParams(K=K, read_sigma=read, row_sigma=scale(cam["R_scale"]), tukey_lambda=lam, ratio=ratio)


def darktable_noise(a: float, b: float, white_range: float, ratio: float = 1.0) -> NoiseParams:
    """From a darktable profile, variance(x) = a*x + b on [0, 1] data: Poisson-Gaussian."""
    return NoiseParams(K=a * white_range, read_sigma=math.sqrt(max(b, 0.0)) * white_range,
                       ratio=ratio, white_range=white_range)


def load_darktable_profiles(path: str | Path) -> list[tuple[str, int, float, float]]:
    """(camera, iso, a, b) for every profile in darktable's noiseprofiles.json (green channel).

    A few fits have a negative shot-noise slope ``a`` (no physical sensor has one; the gain K
    would be negative): they are left out.
    """
    data = json.loads(Path(path).read_text())
    out = []
    for maker in data["noiseprofiles"]:
        for model in maker["models"]:
            for prof in model.get("profiles", []):
                a, b = float(prof["a"][1]), float(prof["b"][1])
                if a > 0:
                    out.append((f'{maker["maker"]} {model["model"]}', int(prof["iso"]), a, b))
    return out


def add_sensor_noise(clean: torch.Tensor, noise: NoiseParams, generator: torch.Generator | None = None
                     ) -> torch.Tensor:
    """Noisy version of a clean normalised mosaic (H, W) in [0, 1]; returns normalised values.

    The result is quantised to whole DN of ``noise.white_range`` and clipped at white, as a
    sensor would be; values below zero (black) survive, as in real RAW files.
    """
    w = noise.white_range
    y = clean.clamp(0, 1) * (w / noise.ratio)          # DN of the (short) exposure
    electrons = torch.poisson(y / noise.K, generator=generator)
    z = electrons * noise.K
    u = torch.rand(clean.shape, generator=generator, dtype=clean.dtype).clamp(1e-6, 1 - 1e-6)
    if noise.tukey_lambda is None:
        read = torch.randn(clean.shape, generator=generator, dtype=clean.dtype) * noise.read_sigma
    elif abs(noise.tukey_lambda) < 1e-6:
        read = torch.log(u / (1 - u)) * noise.read_sigma
    else:
        lam = noise.tukey_lambda
        read = (u ** lam - (1 - u) ** lam) / lam * noise.read_sigma
    row = torch.randn(clean.shape[0], 1, generator=generator, dtype=clean.dtype) * noise.row_sigma
    z = torch.round(z + read + row)                       # ADC quantisation
    return ((z * noise.ratio) / w).clamp(max=1.0)


# --- Blind estimation --------------------------------------------------------------------------

_BLOCK = 8              # block side, in packed pixels of one colour plane
_FLAT_QUANTILE = 0.01   # which block of a level bin counts as flat
# For white Gaussian noise of unit variance, the 1 % quantile of a block's min(mean r_h^2,
# mean r_v^2) over 8x8 blocks (measured on 520 000 blocks; the two residuals share pixels).
_FLAT_QUANTILE_OF_NOISE = 0.506


def _block_statistics(packed: torch.Tensor, max_samples: int = 2_000_000) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean level, residual variance) of 8x8 blocks of every colour plane of a packed mosaic.

    The residual is the second difference along rows and along columns (flat and linear ramps
    cancel; for white noise each has the noise's variance after the 1/sqrt(6)); a block takes the
    smaller of its two mean squares, since an edge inflates mostly one direction. Blocks that touch
    the white clip are left out (clipping removes noise). On a large frame only every few bands of
    blocks are used, so the cost does not grow with the frame.
    """
    c, h, w = packed.shape
    bands = (h - 2) // _BLOCK
    band_step = max(1, math.ceil(c * bands * _BLOCK * w / max_samples))
    rows = (torch.arange(0, bands, band_step)[:, None] * _BLOCK + torch.arange(_BLOCK + 2)).flatten()
    strips = packed[:, rows].reshape(c, -1, _BLOCK + 2, w)
    centre = strips[:, :, 1:-1, 1:-1]
    res_h = (2 * centre - strips[:, :, 1:-1, :-2] - strips[:, :, 1:-1, 2:]) / math.sqrt(6)
    res_v = (2 * centre - strips[:, :, :-2, 1:-1] - strips[:, :, 2:, 1:-1]) / math.sqrt(6)
    cols = (w - 2) // _BLOCK * _BLOCK

    def blocks(t: torch.Tensor) -> torch.Tensor:  # (c, n, B, w - 2) -> (blocks, B * B)
        t = t[..., :cols].reshape(*t.shape[:3], -1, _BLOCK)
        return t.transpose(2, 3).reshape(-1, _BLOCK * _BLOCK)

    level = blocks(centre)
    variance = torch.minimum(blocks(res_h).square().mean(1), blocks(res_v).square().mean(1))
    unclipped = level.amax(1) < 0.99
    return level.mean(1)[unclipped], variance[unclipped]


def estimate_noise(packed: torch.Tensor, bins: int = 12) -> tuple[float, float]:
    """Estimate (a, b) with variance(x) = a*x + b from a packed normalised mosaic (4, h, w).

    Texture only ever adds residual energy, so in each level bin the flattest blocks measure the
    noise: the 1 % quantile of the blocks' residual variance, divided by that quantile for pure
    noise (the weak-texture-patch idea of Liu, Tanaka and Okutomi, 2013, without the PCA). A
    median instead reads fine texture as noise, by 2-4x in std at low ISO. The bins' variances are
    fitted by least squares, weighted by sqrt(count).
    """
    level, variance = _block_statistics(packed)
    if level.numel() < 20:
        return 0.0, 0.0
    # A small crop gets fewer, fuller bins, but two at least: from one, the flattest blocks are the
    # darkest, and the noise of a 128 px frame read a sixth of its true std in its highlights.
    bins = max(min(2, level.numel() // 20), min(bins, level.numel() // 200))
    edges = torch.quantile(level, torch.linspace(0, 1, bins + 1))
    means, variances, counts = [], [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (level >= lo) & (level <= hi)
        if sel.sum() < 20:
            continue
        means.append(float(level[sel].mean()))
        variances.append(float(torch.quantile(variance[sel], _FLAT_QUANTILE)) / _FLAT_QUANTILE_OF_NOISE)
        counts.append(float(sel.sum()))
    if len(means) < 2:
        return 0.0, variances[0] if variances else 0.0
    m = np.array(means)
    v = np.array(variances)
    w = np.sqrt(np.array(counts))
    A = np.stack([m, np.ones_like(m)], 1) * w[:, None]
    (a, b), *_ = np.linalg.lstsq(A, v * w, rcond=None)
    if b < 0:
        b = 0.0
        a = float(np.sum(w * w * m * v) / max(np.sum(w * w * m * m), 1e-12))
    if a < 0:
        a = 0.0
        b = float(np.average(v, weights=w))
    return float(a), float(b)


def noise_std_map(packed: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """Per-pixel noise std (1, h, w) from the fitted model, at the local (smoothed) green level."""
    green = packed[1:3].mean(0, keepdim=True)
    level = F.avg_pool2d(F.pad(green[None], (2, 2, 2, 2), mode="replicate"), 5, stride=1)[0]
    return torch.sqrt((a * level.clamp_min(0) + b).clamp_min(1e-10))
