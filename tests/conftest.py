"""Shared fixtures: small synthetic DNGs, the shared real-RAW folder, and running the CLI."""
from __future__ import annotations

import datetime as dt
import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from rawrestore.dng import write_dng
from rawrestore.rawio import XYZ_FROM_SRGB

REPO = Path(__file__).resolve().parents[1]

# Adobe's ColorMatrix1-style XYZ -> camera matrix of a typical Canon sensor.
CAM_FROM_XYZ = np.array([[0.6461, -0.0907, -0.0882],
                         [-0.4300, 1.2184, 0.2378],
                         [-0.0819, 0.1944, 0.5931]])

# A 4 x 6 grid of linear-sRGB patches: primaries, secondaries, skin-ish tones and a grey ramp.
PATCHES = np.array([
    [0.60, 0.05, 0.05], [0.05, 0.50, 0.05], [0.05, 0.05, 0.60], [0.55, 0.55, 0.05], [0.05, 0.50, 0.55], [0.55, 0.05, 0.50],
    [0.45, 0.25, 0.15], [0.30, 0.15, 0.10], [0.15, 0.25, 0.45], [0.20, 0.35, 0.10], [0.35, 0.20, 0.40], [0.50, 0.35, 0.05],
    [0.90, 0.90, 0.90], [0.60, 0.60, 0.60], [0.35, 0.35, 0.35], [0.18, 0.18, 0.18], [0.09, 0.09, 0.09], [0.03, 0.03, 0.03],
    [0.70, 0.45, 0.35], [0.25, 0.45, 0.25], [0.40, 0.40, 0.20], [0.10, 0.20, 0.30], [0.30, 0.10, 0.20], [0.80, 0.60, 0.20],
])

EXIF = dict(make="TestMake", model="TestCam 1", iso=400, exposure_time=1 / 250, f_number=2.8,
            focal_length=35.0, datetime=dt.datetime(2024, 5, 17, 9, 30, 5))


def synthetic_scene(height: int = 128, width: int = 192) -> np.ndarray:
    """(H, W, 3) linear sRGB: the patch grid, each patch a flat 32 x 32 block."""
    rows, cols = height // 32, width // 32
    grid = PATCHES[: rows * cols].reshape(rows, cols, 3)
    return np.repeat(np.repeat(grid, 32, axis=0), 32, axis=1)


def make_dng(path: Path, cfa: str = "RGGB", exposure: float = 1.0, **metadata) -> Path:
    """A 128 x 192 Bayer DNG of :func:`synthetic_scene` as this camera would record it, its light
    scaled by ``exposure`` (1: the brightest channel on white at 0.9 of clipping)."""
    black, white = 256.0, 16383.0
    cam_from_srgb = CAM_FROM_XYZ @ XYZ_FROM_SRGB
    neutral = cam_from_srgb @ np.ones(3)           # the camera's response to white
    wb = neutral[1] / neutral                      # multipliers that make white neutral, G = 1
    camera = synthetic_scene() @ cam_from_srgb.T * (0.9 * exposure / neutral.max())
    sites = np.array(["RGB".index(c) for c in cfa]).reshape(2, 2)
    h, w, _ = camera.shape
    colour = np.tile(sites, (h // 2, w // 2))
    mosaic = np.take_along_axis(camera, colour[..., None], axis=2)[..., 0]
    return write_dng(path, black + mosaic.clip(0, 1) * (white - black), cfa, black, white,
                     CAM_FROM_XYZ, wb, **{**EXIF, **metadata})


@pytest.fixture
def dng_factory(tmp_path: Path) -> Callable[..., Path]:
    """make_dng(name, cfa='RGGB', **metadata) writing into this test's tmp_path."""
    def factory(name: str = "photo.dng", cfa: str = "RGGB", **metadata) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return make_dng(path, cfa, **metadata)

    return factory


@pytest.fixture
def shared_dir() -> Path:
    """The project's shared data folder (/work/shared); tests using it skip where it is absent."""
    shared = Path(__file__).resolve().parents[2] / "shared"
    if not (shared / "data" / "raw").is_dir():
        pytest.skip("shared data folder not present")
    return shared


def assert_srgb_icc(profile: bytes) -> None:
    """An embedded ICC profile that colour-management libraries read as sRGB."""
    from PIL import ImageCms

    assert "sRGB" in ImageCms.getOpenProfile(io.BytesIO(profile)).profile.profile_description


def run_cli(*args: str | Path, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m rawrestore ARGS`` as a user would run it, output captured as text; ``env``
    adds to the environment."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200", "NO_COLOR": "1",
           "OMP_NUM_THREADS": "1", **(env or {})}
    env.pop("FORCE_COLOR", None)
    return subprocess.run([sys.executable, "-m", "rawrestore", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)
