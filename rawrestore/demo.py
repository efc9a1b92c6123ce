"""``rawrestore demo``: make a noisy DNG from a public-domain photo and develop it, no download.

The photo is scikit-image's bundled ``astronaut`` (NASA, public domain) when scikit-image is
installed (``pip install "rawrestore[demo]"``), else a procedural chart (colour patches, fine
bars, a zone plate and texture). It is unprocessed to a Bayer RAW of a random real camera and
given the calibrated noise of a Canon EOS 5D Mark IV at ISO 12800 (ELD parameters).
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .noise import eld_noise
from .unprocess import random_camera, synthesize, write_synthetic_dng

DEMO_ISO = 12800
DEMO_NOISE_CAMERA = "CanonEOS5D4"


def demo_photo() -> tuple[torch.Tensor, str]:
    """(3, H, W) sRGB in [0, 1] and where it came from."""
    try:
        from skimage import data
    except ImportError:
        return test_chart(), "procedural test chart (install rawrestore[demo] for a photo)"
    return torch.from_numpy(data.astronaut()).permute(2, 0, 1).float() / 255.0, "scikit-image 'astronaut' (NASA, public domain)"


def test_chart(size: int = 512) -> torch.Tensor:
    """Colour patches, bars of decreasing period, a zone plate and seeded texture."""
    y, x = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                          indexing="ij")
    img = torch.zeros(3, size, size)
    rng = np.random.default_rng(0)
    half = size // 2
    patches = torch.tensor(rng.uniform(0.05, 0.95, (4, 6, 3)), dtype=torch.float32)
    cell_y, cell_x = half // 4, size // 6
    img[:, :half] = patches[(y[:half] // cell_y).long().clamp(max=3), (x[:half] // cell_x).long().clamp(max=5)].permute(2, 0, 1)
    period = 2 + 14 * x[half:, :half] / half
    img[:, half:, :half] = 0.5 + 0.4 * torch.sin(2 * np.pi * y[half:, :half] / period)
    r2 = (y[half:, half:] - 1.5 * half) ** 2 + (x[half:, half:] - 1.5 * half) ** 2
    img[:, half:, half:] = 0.5 + 0.4 * torch.cos(r2 / (0.6 * half))
    texture = torch.tensor(rng.random((size // 8, size // 8)), dtype=torch.float32)
    img *= 0.8 + 0.2 * torch.nn.functional.interpolate(texture[None, None], size=(size, size), mode="bicubic")[0]
    return img.clamp(0, 1)


@dataclass
class DemoFiles:
    dng: Path
    ground_truth: Path
    model: Path
    classical: Path
    side_by_side: Path
    source: str
    psnr_model: float
    psnr_classical: float


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1.0 / torch.mean((a.clamp(0, 1) - b) ** 2)))


def run_demo(out_dir: Path, developer, seed: int = 7) -> DemoFiles:
    """Write the noisy DNG, develop it with ``developer`` and with the classical ISP, compare."""
    from .output import write_image
    from .pipeline import Developer, DevelopOptions
    from .rawio import read_raw

    out_dir.mkdir(parents=True, exist_ok=True)
    photo, source = demo_photo()
    rng = np.random.default_rng(seed)
    cam = random_camera(rng)
    cam.tone = False
    cam.iso = DEMO_ISO
    cam.noise = eld_noise(DEMO_NOISE_CAMERA, DEMO_ISO)
    raw = synthesize(photo, cam, torch.Generator().manual_seed(seed))
    dng = write_synthetic_dng(out_dir / "demo_noisy_iso12800.dng", raw, cam, make="rawrestore",
                              model=f"demo ({DEMO_NOISE_CAMERA} noise)", exposure_time=1 / 60, f_number=2.8,
                              focal_length=50, datetime=_dt.datetime(2026, 1, 1, 12, 0, 0))
    raw = read_raw(dng)
    classical = Developer(DevelopOptions(auto_exposure=False, classical=True)).develop(raw)
    developer.options.auto_exposure = False  # the photo is exposed as shot; compare like for like
    enhanced = developer.develop(raw)
    files = DemoFiles(dng=dng, ground_truth=out_dir / "demo_ground_truth.png",
                      model=out_dir / "demo_rawrestore.jpg", classical=out_dir / "demo_classical.jpg",
                      side_by_side=out_dir / "demo_side_by_side.png", source=source,
                      psnr_model=psnr(enhanced, photo), psnr_classical=psnr(classical, photo))
    write_image(files.ground_truth, photo, fmt="png", bits=8, quality=95, exif={})
    write_image(files.model, enhanced, fmt="jpeg", bits=8, quality=95, exif=raw.exif)
    write_image(files.classical, classical, fmt="jpeg", bits=8, quality=95, exif=raw.exif)
    panels = [("classical", classical), ("rawrestore", enhanced), ("ground truth", photo)]
    write_image(files.side_by_side, side_by_side(panels), fmt="png", bits=8, quality=95, exif={})
    return files


def side_by_side(panels: list[tuple[str, torch.Tensor]], gap: int = 8) -> torch.Tensor:
    """Same-sized (3, H, W) pictures in a row on white, ``gap`` px apart, each captioned above."""
    from PIL import Image, ImageDraw, ImageFont

    from .output import to_pixels

    _, height, width = panels[0][1].shape
    font = ImageFont.load_default(size=max(12, width // 24))
    band = round(font.size * 1.6)
    canvas = Image.new("RGB", (len(panels) * width + (len(panels) - 1) * gap, band + height), "white")
    draw = ImageDraw.Draw(canvas)
    for index, (caption, image) in enumerate(panels):
        left = index * (width + gap)
        canvas.paste(Image.fromarray(to_pixels(image, 8)), (left, band))
        draw.text((left + width / 2, band / 2), caption, fill="black", font=font, anchor="mm")
    return torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1).float() / 255.0
