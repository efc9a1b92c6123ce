"""sRGB -> camera RAW ("unprocessing", Brooks et al., CVPR 2019), the inverse of rawrestore's ISP.

Each step inverts one step of :mod:`rawrestore.isp` with the same parameters, so a clean photo
unprocessed and developed again comes back (the tests check it). The parameters of every sample
are recorded in a :class:`CameraSample`, which also turns the result into a :class:`RawImage`
with exactly the metadata a real file of that camera would carry.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .isp import srgb_decode, srgb_encode, tone_curve
from .noise import NoiseParams, add_sensor_noise
from .rawio import RawImage, cfa_site_colors, srgb_from_cam_matrix

# XYZ (D65) -> camera-native matrices of real cameras, as data.
# brooks_*: the four used by Brooks et al.'s unprocessing (google-research/unprocessing);
# canon_eos_550d and lg_h815: ColorMatrix1 of the real DNGs in the project's test data.
CAMERA_MATRICES = {
    "brooks_1": [[1.0234, -0.2969, -0.2266], [-0.5625, 1.6328, -0.0469], [-0.0703, 0.2188, 0.6406]],
    "brooks_2": [[0.4913, -0.0541, -0.0202], [-0.6130, 1.3513, 0.2906], [-0.1564, 0.2151, 0.7183]],
    "brooks_3": [[0.8380, -0.2630, -0.0639], [-0.2887, 1.0725, 0.2496], [-0.0627, 0.1427, 0.5438]],
    "brooks_4": [[0.6596, -0.2079, -0.0562], [-0.4782, 1.3016, 0.1933], [-0.0970, 0.1581, 0.5181]],
    "canon_eos_550d": [[0.6461, -0.1164, -0.0857], [-0.3825, 1.1597, 0.2534], [-0.0416, 0.1540, 0.6039]],
    "lg_h815": [[0.6013, 0.0561, -0.1283], [-0.6654, 1.5953, 0.0561], [-0.2485, 0.5772, 0.4008]],
}


@dataclass
class CameraSample:
    """Everything a synthetic RAW was made with: what a real file's metadata would give."""

    cam_from_xyz: np.ndarray          # XYZ -> camera native (DNG ColorMatrix1)
    wb: np.ndarray                    # as-shot white-balance multipliers (R, G, B), G = 1
    cfa: str = "RGGB"
    bits: int = 14
    black: float = 512.0
    exposure_gain: float = 1.0        # brightening the ISP must apply back (Brooks' rgb_gain)
    tone: bool = True                 # the photo had a smoothstep tone curve on top of sRGB
    noise: NoiseParams | None = None
    iso: float | None = None
    camera: str = "synthetic"
    extra: dict = field(default_factory=dict)

    @property
    def white(self) -> float:
        return float(2 ** self.bits - 1)

    @property
    def srgb_from_cam(self) -> np.ndarray:
        return srgb_from_cam_matrix(self.cam_from_xyz)


def random_camera(rng: np.random.Generator, cfa: str | None = None) -> CameraSample:
    """A plausible camera: a random convex mix of real matrices (Brooks et al. sec. 3.3),
    white balance around real daylight-to-tungsten values, a random layout and bit depth."""
    names = list(CAMERA_MATRICES)
    weights = rng.uniform(1e-8, 1.0, len(names)) ** 2
    matrix = sum(w * np.array(CAMERA_MATRICES[n]) for w, n in zip(weights, names)) / weights.sum()
    wb = np.array([rng.uniform(1.9, 2.4), 1.0, rng.uniform(1.5, 1.9)])
    bits = int(rng.choice([12, 14]))
    black = float(rng.choice([0, 64, 128, 256, 512, 1024]) * (1 if bits == 14 else 0.25))
    return CameraSample(cam_from_xyz=matrix, wb=wb, cfa=cfa or str(rng.choice(["RGGB", "BGGR", "GRBG", "GBRG"])),
                        bits=bits, black=black)


def unprocess(srgb: torch.Tensor, cam: CameraSample) -> torch.Tensor:
    """sRGB (3, H, W) in [0, 1] -> linear camera RGB (3, H, W), normalised so 1.0 is clipping."""
    x = srgb.clamp(0, 1)
    if cam.tone:
        x = 0.5 - torch.sin(torch.asin((1.0 - 2.0 * x).clamp(-1, 1)) / 3.0)  # inverse smoothstep
    linear = srgb_decode(x)
    cam_from_srgb = torch.as_tensor(np.linalg.inv(cam.srgb_from_cam), dtype=linear.dtype)
    balanced = torch.einsum("ij,jhw->ihw", cam_from_srgb, linear) / cam.exposure_gain
    gains = torch.as_tensor(1.0 / cam.wb, dtype=linear.dtype)[:, None, None]
    # Highlight-safe inversion (Brooks et al. sec. 3.2): near-white pixels keep more of their value
    # so that they stay clipped after the ISP's white balance instead of turning grey.
    gray = balanced.mean(0, keepdim=True)
    mask = ((gray - 0.9).clamp_min(0) / 0.1) ** 2
    safe = torch.maximum(mask + (1 - mask) * gains, gains)
    return (balanced * safe).clamp(0, 1)


def optical_blur(srgb: torch.Tensor, sigma: float) -> torch.Tensor:
    """A lens's blur before the sensor samples the scene: a Gaussian of ``sigma`` pixels applied in
    linear light, so a clean photo looks like what real optics deliver to a Bayer sensor."""
    radius = max(1, int(3 * sigma + 0.5))
    taps = torch.exp(-torch.arange(-radius, radius + 1, dtype=torch.float32) ** 2 / (2 * sigma ** 2))
    taps = taps / taps.sum()
    linear = F.pad(srgb_decode(srgb)[:, None], (radius, radius, radius, radius), mode="reflect")
    linear = F.conv2d(F.conv2d(linear, taps.view(1, 1, 1, -1)), taps.view(1, 1, -1, 1))[:, 0]
    return srgb_encode(linear)


def mosaic(camera_rgb: torch.Tensor, cfa: str) -> torch.Tensor:
    """(3, H, W) -> (H, W) Bayer mosaic in the given layout."""
    colors = cfa_site_colors(cfa)
    out = torch.empty(camera_rgb.shape[1:], dtype=camera_rgb.dtype)
    for dy in range(2):
        for dx in range(2):
            out[dy::2, dx::2] = camera_rgb[colors[dy, dx], dy::2, dx::2]
    return out


def develop_reference(srgb_linear_isp: torch.Tensor, cam: CameraSample) -> torch.Tensor:
    """What the ISP must do after its linear development to give the photo back: exposure, tone."""
    x = srgb_encode(srgb_linear_isp * cam.exposure_gain)
    return tone_curve(x) if cam.tone else x


def synthesize(srgb: torch.Tensor, cam: CameraSample, generator: torch.Generator | None = None,
               exif: dict | None = None) -> RawImage:
    """A RawImage (mosaic in DN, with black level and noise) from a clean sRGB photo."""
    clean = mosaic(unprocess(srgb, cam), cam.cfa)
    white_range = cam.white - cam.black
    if cam.noise is not None:
        normalised = add_sensor_noise(clean, cam.noise.rescaled(white_range), generator)
    else:
        normalised = torch.round(clean * white_range) / white_range
    dn = (normalised * white_range + cam.black).clamp(0, cam.white)
    return RawImage(cfa=cam.cfa, mosaic=dn.numpy().astype(np.float32), black=np.full((2, 2), cam.black, np.float32),
                    white=cam.white, wb=np.asarray(cam.wb, dtype=np.float64), srgb_from_cam=cam.srgb_from_cam,
                    exif=dict(exif or {}, iso=cam.iso), kind="bayer")


def write_synthetic_dng(path, raw: RawImage, cam: CameraSample, **exif):
    """Write a synthesised RawImage as a DNG a real developer can open."""
    from .dng import write_dng

    noise_profile = None
    if cam.noise is not None:
        n = cam.noise.rescaled(cam.white - cam.black)
        # DNG NoiseProfile: variance = S * x + O on [0, 1] data.
        noise_profile = (n.K * n.ratio / n.white_range, n.variance(0.0))
    return write_dng(path, raw.mosaic, cam.cfa, cam.black, cam.white, cam.cam_from_xyz, cam.wb,
                     iso=cam.iso, noise_profile=noise_profile, **exif)
