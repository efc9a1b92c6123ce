"""Training and validation data: noisy/clean RAW pairs synthesised on the fly from clean photos.

Split: an image belongs to the validation split when the SHA-1 of its file name (not its path)
is divisible by 6, so an image is never in both, whatever folder it is found in. Non-photographs
(a comic, a slide) are left out of both.

Each sample: a random window of a random photo (probability proportional to its area), a random
flip/transpose of the *sRGB* window (the mosaic is made afterwards, so the CFA layout stays right),
a 0.3-1 px optics blur,
a random camera (matrix, white balance, bit depth, black level), a random noise level from the
calibrated models (ISO 50-40000, or low light x2-x300 with the digital gain applied back), blindly
estimated on the whole window (up to 2x2 crops, as inference does on the whole frame: a crop
alone is mostly texture, and reads noisier), then a random crop of it; and the
colour condition: the fast classical render of the noisy RAW at the latent grid, as at inference;
for half the samples the target gets a random colour look and the condition carries that look
(plus the real render noise of this RAW). It is blurred and perturbed (``degrade_condition``;
off, with no looks, gives the inference distribution), and the model is told a slightly wrong
white balance, so that it must take colour from the condition and detail from the RAW.
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .conditioning import model_input, render_condition, render_detail
from .isp import binned_linear, pack
from .noise import NoiseParams, add_sensor_noise, darktable_noise, eld_cameras, eld_noise, estimate_noise
from .unprocess import mosaic, optical_blur, random_camera, unprocess

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
NOT_PHOTOGRAPHS = {"comic.png", "ppt3.png"}
NOISE_CONTEXT = 2  # the noise is synthesised and estimated on up to this many crops on a side


def split_of(path: Path) -> str:
    digest = int(hashlib.sha1(path.name.encode()).hexdigest(), 16)
    return "val" if digest % 6 == 0 else "train"


def list_photos(roots: list[Path] | Path, split: str) -> list[Path]:
    roots = [roots] if isinstance(roots, (str, Path)) else roots
    files = sorted({p for r in roots for p in Path(r).rglob("*")
                    if p.suffix.lower() in IMAGE_EXTENSIONS and p.name not in NOT_PHOTOGRAPHS})
    return [p for p in files if split_of(p) == split]


def load_photo(path: Path) -> torch.Tensor:
    """uint8 (3, H, W); greyscale photos are repeated to three channels."""
    import imageio.v3 as iio

    img = np.asarray(iio.imread(path))
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return torch.from_numpy(np.ascontiguousarray(img[..., :3].transpose(2, 0, 1)))


def sample_noise(rng: np.random.Generator, darktable: list | None = None) -> NoiseParams:
    """A training noise level: mostly calibrated ELD cameras, sometimes darktable profiles."""
    camera = str(rng.choice(sorted(eld_cameras())))
    tukey = bool(rng.random() < 0.5)
    mode = rng.random()
    if darktable and mode < 0.15:
        _, _, a, b = darktable[rng.integers(len(darktable))]
        return darktable_noise(a, b, 16383 - 512)
    if mode < 0.45:
        iso = math.exp(rng.uniform(math.log(100), math.log(3200)))
        ratio = math.exp(rng.uniform(math.log(2), math.log(300)))
        return eld_noise(camera, iso, ratio=ratio, tukey=tukey, rng=rng)
    iso = math.exp(rng.uniform(math.log(50), math.log(40000)))
    return eld_noise(camera, iso, tukey=tukey, rng=rng)


def random_look(rng: np.random.Generator) -> Callable[[torch.Tensor], torch.Tensor]:
    """A random global colour transform (saturation, tint, per-channel contrast), as a style would
    be: one draw, applied alike to every image it is given."""
    sat = rng.uniform(0.0, 1.8)
    tint = torch.tensor(rng.uniform(0.8, 1.2, 3), dtype=torch.float32)[:, None, None]
    gamma = torch.tensor(rng.uniform(0.75, 1.3, 3), dtype=torch.float32)[:, None, None]

    def look(image: torch.Tensor) -> torch.Tensor:
        gray = image.mean(0, keepdim=True)
        return ((gray + (image - gray) * sat) * tint).clamp(0, 1) ** gamma
    return look


class SyntheticRAWDataset(torch.utils.data.Dataset):
    """Map-style and seeded: item ``i`` is the same sample every time (for a given seed)."""

    def __init__(self, roots, split: str = "train", crop: int = 256, length: int = 1_000_000, seed: int = 0,
                 darktable_profiles: str | Path | None = None, restyle_probability: float = 0.5,
                 degrade_condition: bool = True):
        self.paths = list_photos(roots, split)
        if not self.paths:
            raise FileNotFoundError(f"no {split} photos under {roots}")
        self.crop, self.length, self.seed = crop, length, seed
        self.restyle_probability = restyle_probability
        self.degrade_condition = degrade_condition
        self._cache: dict[int, torch.Tensor] = {}
        self._areas = None
        if darktable_profiles and Path(darktable_profiles).exists():
            from .noise import load_darktable_profiles
            self.darktable = load_darktable_profiles(darktable_profiles)
        else:
            self.darktable = None

    def __len__(self) -> int:
        return self.length

    def _photo(self, i: int) -> torch.Tensor:
        if i not in self._cache:
            self._cache[i] = load_photo(self.paths[i])
        return self._cache[i]

    def _pick(self, rng: np.random.Generator) -> torch.Tensor:
        """A random window of a random photo: up to ``NOISE_CONTEXT`` crops on a side, flipped."""
        if self._areas is None:
            sizes = [self._photo(i).shape for i in range(len(self.paths))]
            areas = np.array([h * w for _, h, w in sizes], dtype=np.float64)
            self._areas = areas / areas.sum()
        photo = self._photo(int(rng.choice(len(self.paths), p=self._areas)))
        c = self.crop
        _, h, w = photo.shape
        if h < c or w < c:
            photo = F.pad(photo[None].float(), (0, max(0, c - w), 0, max(0, c - h)), mode="reflect")[0]
            _, h, w = photo.shape
        wh, ww = (min(side, NOISE_CONTEXT * c) // 2 * 2 for side in (h, w))
        y, x = rng.integers(0, h - wh + 1), rng.integers(0, w - ww + 1)
        window = photo[:, y:y + wh, x:x + ww].float() / 255.0
        if rng.random() < 0.5:
            window = window.flip(-1)
        if rng.random() < 0.5:
            window = window.flip(-2)
        if rng.random() < 0.5:
            window = window.transpose(-1, -2)
        return window.contiguous()

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, index])
        gen = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
        window = self._pick(rng)
        # A lens's (and anti-aliasing filter's) softness, as real optics deliver it to the sensor:
        # these photos were downscaled and are sharper at the pixel than any RAW. The blurred
        # photo is the truth.
        window = optical_blur(window, rng.uniform(0.3, 1.0))
        cam = random_camera(rng, cfa="RGGB")
        cam.tone = False
        noise = sample_noise(rng, self.darktable).rescaled(cam.white - cam.black)
        clean_mosaic = mosaic(unprocess(window, cam), "RGGB")
        clean_mosaic = torch.round(clean_mosaic * noise.white_range) / noise.white_range
        noisy_window = pack(add_sensor_noise(clean_mosaic, noise, gen))
        # The noise is estimated on the whole window, as inference estimates it on the whole frame.
        estimated_noise = estimate_noise(noisy_window)
        half = self.crop // 2
        y, x = (int(rng.integers(0, side - half + 1)) for side in noisy_window.shape[1:])
        noisy = noisy_window[:, y:y + half, x:x + half]
        clean = pack(clean_mosaic)[:, y:y + half, x:x + half]
        photo = window[:, 2 * y:2 * y + self.crop, 2 * x:2 * x + self.crop]
        # The model is told a slightly wrong white balance, as a real camera's can be: colour
        # must come from the condition.
        wb_told = cam.wb * np.array([rng.uniform(0.85, 1.15), 1.0, rng.uniform(0.85, 1.15)])
        x, noise_std = model_input(noisy, wb_told, noise=estimated_noise)
        x_clean, clean_std = model_input(clean, wb_told, noise=(0.0, 1e-8))

        color = render_condition(binned_linear(noisy, cam.wb, cam.srgb_from_cam))  # what inference computes
        clean_color = render_condition(binned_linear(clean, cam.wb, cam.srgb_from_cam))
        # Detail always comes from the camera's own render, never from the look: as at inference.
        detail = render_detail(noisy, color, cam.wb, cam.srgb_from_cam)
        clean_detail = render_detail(clean, clean_color, cam.wb, cam.srgb_from_cam)
        target = photo
        if rng.random() < self.restyle_probability:
            look = random_look(rng)
            target = look(photo)
            # The look applied to the clean render's condition, as a style is applied to the
            # condition at inference: the condition keeps its own relation to the truth (binned
            # in linear light, then the sRGB curve). With the target's 4x4 mean in its place
            # (v1-v9), half the samples taught the networks to copy the condition's coarse
            # shading, which at inference passed that binning's bias through to the output.
            color = look(clean_color) + color - clean_color
        blur = rng.uniform(0.0, 1.5) if self.degrade_condition else 0.0
        if blur > 0.3:
            k = torch.exp(-torch.arange(-3, 4, dtype=torch.float32) ** 2 / (2 * blur ** 2))
            k = (k / k.sum())
            color = F.conv2d(F.pad(color[:, None], (3, 3, 3, 3), mode="replicate"), (k[:, None] * k[None])[None, None])[:, 0]
        if self.degrade_condition:
            color = color + torch.randn(color.shape, generator=gen) * rng.uniform(0, 0.02)
        return {"input": x, "noise_std": noise_std, "clean_input": x_clean, "clean_std": clean_std,
                "color": color.clamp(0, 1), "detail": detail, "clean_detail": clean_detail, "target": target}
