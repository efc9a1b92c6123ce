"""Noisy/clean RAW pairs synthesised from clean photos, a whole batch at a time.

Every step is a batched tensor operation over the batch (one Python loop only to cut the crops),
so synthesis costs a small fraction of a training step on the same two cores:

  sRGB crop -> linear -> optics (none: razor-sharp, aliasing and moire; to a soft lens) ->
  a real camera's matrix (camconst, 300+ cameras) -> exposure -> as-shot white balance divided
  out -> sensor clipping -> RGGB mosaic -> sensor noise (ELD's calibrated Poisson + Tukey-lambda
  read noise + row and column offsets, ISO 50-102400, or SID-style low light x10-x300 with the
  gain applied back; or a darktable profile) -> quantisation, black-level error, hot pixels.

The model's domain is the white-balanced packed mosaic (R, G1, G2, B at H/2), unclipped; its
target is the clean linear white-balanced camera RGB at full resolution. Each batch is a pure
function of (seed, batch index): a run resumed at any batch sees the same data.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..dataset import list_photos, load_photo
from ..isp import srgb_decode
from ..noise import eld_cameras, iso_to_k
from ..rawio import srgb_from_cam_matrix
from .cameras import camera_matrices, darktable_profiles


@dataclass
class RawBatch:
    clean: torch.Tensor       # (B, 4, h, w) white-balanced packed clean mosaic
    noisy: torch.Tensor       # (B, 4, h, w) white-balanced packed noisy mosaic, as a file holds it
    noise: torch.Tensor       # (B, 2) the (a, b) of var = a x + b in the file's (unbalanced) units
    wb: torch.Tensor          # (B, 3) as-shot white balance
    target: torch.Tensor      # (B, 3, 2h, 2w) clean linear white-balanced camera RGB
    gain: torch.Tensor        # (B,) the exposure gain that renders it as the photo was
    srgb_from_cam: torch.Tensor  # (B, 3, 3) white-balanced camera RGB -> linear sRGB


@dataclass(frozen=True)
class SynthesisConfig:
    crop: int = 256
    sharp_fraction: float = 0.3          # crops with no optics blur at all
    blur_sigma: tuple[float, float] = (0.3, 1.2)
    low_light_fraction: float = 0.25
    darktable_fraction: float = 0.15
    iso: tuple[float, float] = (50.0, 102400.0)
    low_light_ratio: tuple[float, float] = (10.0, 300.0)
    noise_told_error: float = 0.15       # log-std of the error of the (a, b) the model is told
    hot_pixel_rate: tuple[float, float] = (0.0, 1e-4)


class PhotoPool:
    """The clean photos of one split, decoded once and kept in memory as uint8."""

    def __init__(self, roots: list[Path], split: str):
        self.paths = list_photos(roots, split)
        if not self.paths:
            raise FileNotFoundError(f"no {split} photos under {', '.join(map(str, roots))}")
        self.photos = [load_photo(p) for p in self.paths]
        areas = np.array([p.shape[1] * p.shape[2] for p in self.photos], dtype=np.float64)
        self.weights = areas / areas.sum()

    def crops(self, rng: np.random.Generator, count: int, size: int) -> torch.Tensor:
        """(count, 3, size, size) in [0, 1]: random windows, photos drawn by area, flipped."""
        out = torch.empty(count, 3, size, size)
        for i in range(count):
            photo = self.photos[int(rng.choice(len(self.photos), p=self.weights))]
            _, h, w = photo.shape
            if h < size or w < size:
                photo = F.pad(photo[None].float(), (0, max(0, size - w), 0, max(0, size - h)), mode="reflect")[0]
                _, h, w = photo.shape
            y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
            window = photo[:, y:y + size, x:x + size].float()
            if rng.random() < 0.5:
                window = window.flip(-1)
            if rng.random() < 0.5:
                window = window.flip(-2)
            if rng.random() < 0.5:
                window = window.transpose(-1, -2)
            out[i] = window / 255.0
        return out


def blurred(linear: torch.Tensor, sigmas: np.ndarray) -> torch.Tensor:
    """Per-sample Gaussian optics blur (sigma 0: none), in linear light, by one grouped conv pair."""
    b, c, _, _ = linear.shape
    radius = max(1, int(math.ceil(3 * float(sigmas.max(initial=0.0)))))
    at = torch.arange(-radius, radius + 1, dtype=torch.float32)
    s = torch.as_tensor(sigmas, dtype=torch.float32).clamp_min(1e-3)[:, None]
    taps = torch.exp(-at ** 2 / (2 * s ** 2))
    taps = (taps / taps.sum(1, keepdim=True)).repeat_interleave(c, 0)       # (b*c, k)
    x = F.pad(linear.reshape(1, b * c, *linear.shape[-2:]), (radius,) * 4, mode="reflect")
    x = F.conv2d(x, taps[:, None, None, :], groups=b * c)
    x = F.conv2d(x, taps[:, None, :, None], groups=b * c)
    return x.view_as(linear)


def _tukey(u: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Tukey-lambda quantile function; lambda near 0 is the logistic."""
    small = lam.abs() < 1e-3
    safe = torch.where(small, torch.ones_like(lam), lam)
    return torch.where(small, torch.log(u / (1 - u)), (u ** safe - (1 - u) ** safe) / safe)


class RawSynthesizer:
    """Batches of :class:`RawBatch` from a photo pool and the training (or held-out) cameras."""

    def __init__(self, pool: PhotoPool, camconst: str | Path | None, darktable: str | Path | None,
                 config: SynthesisConfig, split: str = "train"):
        self.pool, self.config = pool, config
        matrices = camera_matrices(camconst, split)
        self.camera_names = sorted(matrices)
        self.srgb_from_cam = torch.tensor(np.stack([srgb_from_cam_matrix(matrices[n]) for n in self.camera_names]),
                                          dtype=torch.float32)
        self.darktable = darktable_profiles(darktable, split)
        self.eld = eld_cameras()

    def _noise(self, rng: np.random.Generator, white_range: float) -> dict[str, float]:
        """One exposure's noise, in DN of ``white_range``: K, read std, Tukey lambda (nan:
        Gaussian), row and column std, low-light ratio."""
        c = self.config
        mode = rng.random()
        if self.darktable and mode < c.darktable_fraction:
            _, _, a, b = self.darktable[int(rng.integers(len(self.darktable)))]
            return {"K": a * white_range, "read": math.sqrt(max(b, 0.0)) * white_range, "lam": math.nan,
                    "row": 0.0, "col": 0.0, "ratio": 1.0}
        camera = str(rng.choice(sorted(self.eld)))
        fit = self.eld[camera]
        if mode < c.darktable_fraction + c.low_light_fraction:
            iso = math.exp(rng.uniform(math.log(100), math.log(3200)))
            ratio = math.exp(rng.uniform(*map(math.log, c.low_light_ratio)))
        else:
            iso = math.exp(rng.uniform(*map(math.log, c.iso)))
            ratio = 1.0
        scale = white_range / (16383 - 800)      # ELD calibrated K on a 14-bit range
        K = iso_to_k(camera, iso)

        def fitted(name: str) -> float:
            f = fit[name]
            return math.exp(f["slope"] * math.log(K) + f["bias"] + rng.normal(0, f["sigma"]))

        tukey = rng.random() < 0.6
        read = fitted("G_scale" if tukey else "g_scale")
        row = fitted("R_scale")
        return {"K": K * scale, "read": read * scale, "lam": float(rng.choice(fit["G_shape"])) if tukey else math.nan,
                "row": row * scale, "col": row * scale * rng.uniform(0.0, 0.5), "ratio": ratio}

    def batch(self, rng: np.random.Generator, size: int) -> RawBatch:
        c = self.config
        gen = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
        photo = self.pool.crops(rng, size, c.crop)
        sigmas = np.where(rng.random(size) < c.sharp_fraction, 0.0, rng.uniform(*c.blur_sigma, size))
        linear = blurred(srgb_decode(photo), sigmas) if sigmas.max() > 0 else srgb_decode(photo)
        # A random real camera per sample; its white-balanced camera RGB from linear sRGB.
        cams = torch.as_tensor(rng.integers(0, len(self.camera_names), size))
        cam_from_srgb = torch.linalg.inv(self.srgb_from_cam[cams])
        balanced = torch.einsum("bij,bjhw->bihw", cam_from_srgb, linear).clamp_min(0)
        # Exposure: the RAW is darker than the photo by ``gain`` (the ISP brings it back).
        gain = torch.as_tensor(np.exp(rng.uniform(0.0, math.log(4.0), size)), dtype=torch.float32)
        wb = torch.as_tensor(np.stack([rng.uniform(1.4, 2.8, size), np.ones(size), rng.uniform(1.2, 2.4, size)], 1),
                             dtype=torch.float32)
        native = (balanced / gain.view(-1, 1, 1, 1) / wb[:, :, None, None]).clamp(0, 1)   # sensor clipping
        target = native * wb[:, :, None, None]
        sites = torch.stack([native[:, 0, 0::2, 0::2], native[:, 1, 0::2, 1::2],
                             native[:, 1, 1::2, 0::2], native[:, 2, 1::2, 1::2]], 1)   # packed RGGB

        bits = rng.choice([12, 14], size)
        black = np.array([float(rng.choice([0, 64, 128, 256, 512, 1024])) for _ in range(size)]) * np.where(
            bits == 14, 1.0, 0.25)
        white_range = (2.0 ** bits - 1 - black).astype(np.float64)
        params = [self._noise(rng, float(w)) for w in white_range]

        def col(key: str) -> torch.Tensor:
            return torch.tensor([p[key] for p in params], dtype=torch.float32).view(-1, 1, 1, 1)

        K, read, lam, row, colstd, ratio = (col(k) for k in ("K", "read", "lam", "row", "col", "ratio"))
        W = torch.as_tensor(white_range, dtype=torch.float32).view(-1, 1, 1, 1)
        mosaic = torch.zeros(size, 1, c.crop, c.crop)
        mosaic[:, 0] = F.pixel_shuffle(sites, 2)[:, 0]
        dn = torch.poisson(mosaic * W / ratio / K, generator=gen) * K
        u = torch.rand(mosaic.shape, generator=gen).clamp(1e-6, 1 - 1e-6)
        gaussian = torch.isnan(lam)
        read_noise = torch.where(gaussian, torch.randn(mosaic.shape, generator=gen),
                                 _tukey(u, torch.where(gaussian, torch.zeros_like(lam), lam))) * read
        rows = torch.randn(size, 1, c.crop, 1, generator=gen) * row
        cols = torch.randn(size, 1, 1, c.crop, generator=gen) * colstd
        # The file's black level is a few tenths of a DN off, per colour site.
        black_error = torch.randn(size, 1, 2, 2, generator=gen).repeat(1, 1, c.crop // 2, c.crop // 2) * 0.3
        dn = torch.round(dn + read_noise + rows + cols + black_error)
        rate = torch.as_tensor(rng.uniform(*c.hot_pixel_rate, size), dtype=torch.float32).view(-1, 1, 1, 1)
        hot = torch.rand(mosaic.shape, generator=gen) < rate
        dn = torch.where(hot, W * (0.2 + 0.8 * torch.rand(mosaic.shape, generator=gen)), dn)
        noisy_native = (dn * ratio / W).clamp(max=1.0)
        noisy = F.pixel_unshuffle(noisy_native, 2)                    # (B, 4, h, w) R, G1, G2, B
        site_gain = wb[:, [0, 1, 1, 2], None, None]

        # What the model is told of the noise: var = a x + b in the file's units, a little off, as
        # a blind estimate is.
        K, read, lam, row, colstd, ratio, W = (v.flatten() for v in (K, read, lam, row, colstd, ratio, W))
        read_var = read ** 2 * torch.where(torch.isnan(lam), torch.ones(size), _tukey_variance(lam))
        a = K * ratio / W
        b = (read_var + row ** 2 + colstd ** 2 + 1 / 12) * (ratio / W) ** 2
        error = torch.as_tensor(np.exp(rng.normal(0, c.noise_told_error, (size, 2))), dtype=torch.float32)
        return RawBatch(clean=sites * site_gain, noisy=noisy * site_gain, noise=torch.stack([a, b], 1) * error,
                        wb=wb, target=target, gain=gain,
                        srgb_from_cam=self.srgb_from_cam[cams])


def _tukey_variance(lam: torch.Tensor) -> torch.Tensor:
    """Variance of the unit Tukey-lambda distribution per sample (nan lambda: 1, unused)."""
    out = []
    for value in lam.flatten().tolist():
        if math.isnan(value):
            out.append(1.0)
        elif abs(value) < 1e-3:
            out.append(math.pi ** 2 / 3)
        else:
            out.append(2 / value ** 2 * (1 / (1 + 2 * value) - math.gamma(value + 1) ** 2 / math.gamma(2 * value + 2)))
    return torch.tensor(out, dtype=torch.float32)

