"""What the networks are fed: the model input built from a RAW, and the colour condition.

Shared by training and inference so that both see exactly the same preparation.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .isp import linear_from_mosaic, site_values, srgb_encode, unpack
from .noise import estimate_noise, noise_std_map


def model_input(packed: torch.Tensor, wb: np.ndarray, gain: float = 1.0,
                noise: tuple[float, float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(4, h, w) normalised RGGB-packed RAW -> (white-balanced input, per-pixel noise std).

    The input is clipped at 1 (sensor clipping after white balance, as the ISP does), so the
    network sees [.., 1] whatever the exposure. ``noise`` is (a, b) with var = a*x + b on the
    packed data; estimated blind from the data when not given.
    """
    a, b = noise if noise is not None else estimate_noise(packed)
    gains = site_values(wb).to(packed)[:, None, None]
    x = (packed * gains * gain).clamp(max=1.0)
    return x, noise_std_map(packed, a, b) * gain


def render_condition(linear: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    """The colour condition: the fast classical development (``linear``, from :func:`.isp.binned_linear`),
    exposed and sRGB-encoded, averaged 2x2 down to the latent grid (H/4). It takes the development,
    not the RAW, because inference also sets the exposure from it."""
    display = srgb_encode(linear * gain)
    return F.avg_pool2d(display[None], 2)[0]


def upsample_condition(condition: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) at the latent grid -> (B, C, 4h, 4w): how the decoder brings the condition up.

    Contiguous (NCHW) on purpose: on 3 channels, bilinear upsampling of a channels-last tensor
    takes twice as long, and the decoder's full-resolution tail is contiguous too."""
    return F.interpolate(condition.contiguous(), scale_factor=4, mode="bilinear", align_corners=False)


def render_detail(packed: torch.Tensor, condition: torch.Tensor, wb: np.ndarray, srgb_from_cam: np.ndarray,
                  gain: float = 1.0) -> torch.Tensor:
    """The fine detail the colour condition lacks, at full resolution (3, H, W): the classical
    render (the ISP's demosaic, exposed, sRGB-encoded) minus ``condition``, the unstyled colour
    condition of the same RAW (:func:`render_condition`, same gain), brought up as the decoder
    brings it up. So condition + detail is exactly the classical render, and a styled condition +
    detail is that render with the style's colours. The decoder adds a learned per-pixel share of
    it: all of it on clean data, little where it is mostly noise."""
    display = srgb_encode(linear_from_mosaic(unpack(packed), wb, srgb_from_cam) * gain)
    return display - upsample_condition(condition[None])[0]
