"""Glue: RAW -> developed sRGB. The CLI, the benchmark and Python users all call :class:`Developer`.

Model path: read RAW -> unify the mosaic to RGGB and pack it -> exposure -> blind noise estimate
-> colour condition (fast classical render + ``--color-style``) -> RVAE encode -> few-step IR-SDE
sampling in the latent -> RVAE decode (with the classical render's fine detail, gated per band, and a
last per-pixel share of the classical render, per band of the difference) -> crop, orient. Every network runs in
overlapping tiles blended with feathered weights, so memory is
bounded by the tile, not the image. Non-Bayer files and ``classical=True`` take the classical
ISP instead.
"""
from __future__ import annotations

import ctypes
import math
import os
from dataclasses import dataclass
from functools import partial
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .conditioning import model_input, render_condition, render_detail
from .isp import (
    Rggb,
    binned_linear,
    blend_restored,
    crop_back,
    demosaic_in_strips,
    develop_linear,
    display_from_linear,
    exposure_reference,
    frame_exposure_ev,
    normalized_rggb,
    orient,
    pack,
    srgb_decode,
    white_balance_mosaic,
)
from .noise import estimate_noise
from .rawio import RawImage
from .restore import CoreWeights, is_core_weights, load_core, render, restored_raw
from .styles import get_style
from .whitebalance import parse_white_balance

DEFAULT_STEPS = 1  # 2, 4 and 8 measured no better with the shipped weights (README)
STEP_CHOICES = (1, 2, 4, 8)  # what the denoiser is trained for
NO_DIFFUSION = 0  # the encoder's latent decoded as it is: about a fifth faster, within 0.04 dB (README)
RVAE_OVERLAP = 16  # latent pixels; twice the RVAE decoder's receptive radius (8 with the wide RAW block)


@dataclass
class DevelopOptions:
    exposure_ev: float = 0.0
    auto_exposure: bool = True
    style: str = "natural"
    classical: bool = False        # the classical ISP only, no model
    steps: int = DEFAULT_STEPS     # IR-SDE sampling steps (1 = deterministic x0 jump)
    weights: str | None = None     # None: bundled weights; 'hub'; or a .safetensors path
    device: str = "auto"           # auto | cpu | cuda | mps
    seed: int = 0
    tile: int = 256                # tile side in latent pixels (x4 sensor pixels)
    overlap: int = 24              # tile overlap in latent pixels
    wb: str = "camera"             # camera | auto | daylight | tungsten | fluorescent | a temperature in K
    strength: float = 1.0          # share of the restoration kept; the rest is the classical development
    chroma_strength: float | None = None  # the same for the chroma; None: as ``strength``


@dataclass
class Developed:
    image: torch.Tensor  # display sRGB (3, H, W) in [0, 1], upright
    exposure_ev: float   # the exposure applied: the auto lift plus ``exposure_ev``


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("--device mps: no Apple GPU is available")
    if name not in {"cpu", "cuda", "mps"}:
        raise ValueError(f"unknown device {name!r} (auto, cpu, cuda or mps)")
    return torch.device(name)


def keep_freed_memory() -> None:
    """Have glibc's malloc keep freed memory for reuse instead of handing it back to the system.

    Every tile allocates and frees the same temporaries (up to about 20 MB each); by default glibc
    maps the larger ones afresh each time and trims the heap's free top, so each tile faults its
    pages in again. On a 24 MP frame that was 2 million page faults and 6-8 s of system time,
    against 0.45 million and 2.5 s with this (README, Speed). The process keeps up to 1 GB it no
    longer uses. Elsewhere than glibc: nothing.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    mmap_threshold, trim_threshold, top_pad = -3, -1, -2  # mallopt's parameters (malloc.h)
    libc.mallopt(mmap_threshold, 32 << 20)  # glibc's largest: anything smaller comes from the heap
    libc.mallopt(trim_threshold, 1 << 30)
    libc.mallopt(top_pad, 256 << 20)


class Developer:
    """Develops :class:`RawImage` frames to display sRGB (3, H, W) tensors in [0, 1], upright."""

    def __init__(self, options: DevelopOptions | None = None):
        self.options = opts = options or DevelopOptions()
        self.style = get_style(opts.style)  # raises StyleError before any file is read
        self.white_balance = parse_white_balance(opts.wb)  # so does a bad --wb (WhiteBalanceError)
        self.chroma_strength = opts.strength if opts.chroma_strength is None else opts.chroma_strength
        for name, value in (("strength", opts.strength), ("chroma strength", self.chroma_strength)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, not {value:g}")
        keep_freed_memory()
        self.model = None
        self.core: CoreWeights | None = None
        if not opts.classical:
            if opts.steps not in (NO_DIFFUSION, *STEP_CHOICES):
                raise ValueError(f"steps must be {NO_DIFFUSION} (no diffusion step) or one of "
                                 f"{', '.join(map(str, STEP_CHOICES))} (the denoiser is trained for those)")
            from .weights import load_weights

            self.device = resolve_device(opts.device)
            if self.device.type == "cpu":
                torch.set_num_threads(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
            self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
            if opts.weights not in (None, "hub") and is_core_weights(opts.weights):
                # The RAW-domain core (restore.py): restores the RAW, the ISP renders it.
                self.core = load_core(opts.weights)
                self.core.model.to(self.device, self.dtype)
                self.model = self.core.model
            else:
                self.model = load_weights(opts.weights).to(self.device)
                self.model = self.model.to(self.dtype).to(memory_format=torch.channels_last)

    def uses_model(self, raw: RawImage) -> bool:
        return self.model is not None and raw.is_bayer

    @property
    def blends(self) -> bool:
        """Whether some of the classical development is mixed back in (``--strength`` below 1)."""
        return (self.options.strength, self.chroma_strength) != (1.0, 1.0)

    def develop(self, raw: RawImage) -> torch.Tensor:
        return self.develop_frame(raw).image

    def develop_frame(self, raw: RawImage) -> Developed:
        """:meth:`develop`, with the exposure it applied."""
        opts = self.options
        wb = self.white_balance.multipliers(raw)
        rggb = normalized_rggb(raw) if raw.is_bayer else None
        ev = frame_exposure_ev(exposure_reference(raw, rggb), opts.exposure_ev, opts.auto_exposure)
        gain = 2.0 ** ev
        if not self.uses_model(raw):
            image = self.style(display_from_linear(develop_linear(raw, wb, rggb), gain, raw.orientation))
        elif self.core is not None:
            native = restored_raw(self.core, raw, opts.steps, opts.seed, opts.tile, self.device, self.dtype)
            if self.blends:
                native = self._blend_native(native, raw, rggb, wb)
            image = self.style(render(native, raw, ev, False, wb))
        else:
            image = self._develop_model(raw, rggb, wb, gain)
        return Developed(image, ev)

    def _blend_native(self, native: torch.Tensor, raw: RawImage, rggb: Rggb, wb: np.ndarray) -> torch.Tensor:
        """``--strength`` on the restored RAW (camera-native RGB): the classical demosaic of the
        original in the same space, the blend's luminance split expressed in it (linear sRGB's,
        through the multipliers and the matrix that render it)."""
        mosaic, offset = rggb
        classical = crop_back(demosaic_in_strips(white_balance_mosaic(mosaic, wb)), offset, raw.mosaic.shape)
        classical /= torch.as_tensor(wb, dtype=torch.float32)[:, None, None]
        luma = np.array([0.2126, 0.7152, 0.0722]) @ raw.srgb_from_cam @ np.diag(wb)
        return blend_restored(native, classical, self.options.strength, self.chroma_strength, luma, 1 / wb)

    @torch.inference_mode()
    def _develop_model(self, raw: RawImage, rggb: Rggb, wb: np.ndarray, gain: float) -> torch.Tensor:
        """v15: the model renders display sRGB from the RAW balanced as shot (its input) and from the
        colour condition and detail, which the ISP renders at ``wb``."""
        opts = self.options
        h, w = raw.mosaic.shape
        mosaic, offset = rggb
        # Reflect-pad by an even amount (keeps the CFA phase) so that the latent grid (H/4) is a
        # multiple of 4, as the denoiser's two downsamplings need.
        pad_y, pad_x = (-mosaic.shape[0]) % 16, (-mosaic.shape[1]) % 16
        if pad_y or pad_x:
            mosaic = F.pad(mosaic[None, None], (0, pad_x, 0, pad_y), mode="reflect")[0, 0]
        packed = pack(mosaic)
        x, noise_std = model_input(packed, raw.wb, gain, noise=estimate_noise(packed))
        condition = render_condition(binned_linear(packed, wb, raw.srgb_from_cam), gain)
        # Blending needs the restoration unstyled; the style then applies to the blend, as to --classical.
        color = condition if self.blends else self.style(condition)
        detail_of = partial(render_detail, wb=wb, srgb_from_cam=raw.srgb_from_cam, gain=gain)
        image = develop_tiled(self.model, x, noise_std, color, condition, packed, detail_of, opts.steps, opts.seed,
                              opts.tile, opts.overlap, self.device, self.dtype)
        image = crop_back(image.clamp_(0, 1), offset, (h, w))
        if not self.blends:
            return orient(image, raw.orientation)
        # v15 renders display sRGB: its output goes back to linear sRGB through the inverses of the
        # sRGB curve and of the exposure, where it meets the classical development before both.
        restored = srgb_decode(image).div_(gain)
        blended = blend_restored(restored, develop_linear(raw, wb, rggb), opts.strength, self.chroma_strength)
        return self.style(display_from_linear(blended, gain, raw.orientation))


# --- The model on prepared inputs ----------------------------------------------------------------

def develop_latent(bundle, x: torch.Tensor, noise_std: torch.Tensor, color: torch.Tensor,
                   detail: torch.Tensor, num_steps: int, noises: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Untiled: encode -> few-step IR-SDE sampling -> decode, on batched inputs (B, ...)."""
    from .schedulers import sample

    mu = bundle.rvae.encode_mean(x, noise_std)
    noise_latent = F.avg_pool2d(noise_std, 2)

    def denoise(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return bundle.denoiser(x_t, mu, color, noise_latent, t)

    latent = sample(denoise, mu, bundle.scheduler, num_steps, noises)
    return bundle.rvae.decode(latent, color, x, noise_std, detail)


def develop_tiled(bundle, x: torch.Tensor, noise_std: torch.Tensor, color: torch.Tensor, condition: torch.Tensor,
                  packed: torch.Tensor, detail_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                  num_steps: int, seed: int, tile: int,
                  overlap: int, device: torch.device = torch.device("cpu"),
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """One image (unbatched inputs at H/2 and H/4) through the model, every network tiled.

    The sampler's state lives at the whole latent grid (small: 16 channels at H/4); only the
    networks see tiles. Noise is drawn for the whole grid from ``seed``, so the result does not
    depend on the tiling. The decoder's full-resolution detail input is rendered per tile by
    ``detail_of`` from the ``packed`` RAW tile and the unstyled ``condition`` tile: a whole 24 MP
    frame of it would cost several seconds of memory traffic, a tile stays in cache.
    """
    from .schedulers import sample

    tiler = Tiler(tile, overlap, device, dtype)
    # The RVAE sees at most 6 latent pixels around a point (a few 3x3 convolutions), the UNet
    # far more: the RVAE's tiles need less overlap, which saves 1/8 of its work.
    rvae_tiler = Tiler(tile, min(overlap, RVAE_OVERLAP), device, dtype)
    noise_latent = F.avg_pool2d(noise_std[None], 2)[0]
    mu = rvae_tiler.run(bundle.rvae.encode_mean, [(x, 2), (noise_std, 2)],
                        bundle.rvae.latent_channels, 1)
    gen = torch.Generator().manual_seed(seed)
    noises = [torch.randn(mu.shape, generator=gen) for _ in range(num_steps)]

    def denoise(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        fn = lambda xt, m, c, n: bundle.denoiser(xt, m, c, n, t.to(device, dtype))  # noqa: E731
        return tiler.run(fn, [(x_t[0], 1), (mu, 1), (color, 1), (noise_latent, 1)], mu.shape[0], 1)[None]

    latent = sample(denoise, mu[None], bundle.scheduler, num_steps, [n[None] for n in noises])[0]

    def decode(latent_tile, color_tile, condition_tile, x_tile, std_tile, packed_tile):
        # The classical detail in float32 whatever the networks' precision: in half precision
        # the demosaic's ratios underflow to 0/0.
        detail = detail_of(packed_tile[0].float(), condition_tile[0].float())[None].to(latent_tile.dtype)
        return bundle.rvae.decode(latent_tile, color_tile, x_tile, std_tile, detail)

    return rvae_tiler.run(decode, [(latent, 1), (color, 1), (condition, 1), (x, 2), (noise_std, 2), (packed, 2)],
                          3, 4)


class Tiler:
    """Runs a network over overlapping tiles of the latent grid and blends them.

    Each tile's output is weighted by a window that is 0 over the outer ``overlap // 3`` latent
    pixels of an inner edge (where zero padding differs from the real neighbours) and ramps
    linearly to 1 over the next third, so neighbours' ramps are complementary.
    """

    def __init__(self, tile: int, overlap: int, device: torch.device, dtype: torch.dtype):
        if overlap * 2 >= tile:
            raise ValueError("tile overlap must be less than half the tile")
        self.tile, self.overlap, self.device, self.dtype = tile, overlap, device, dtype

    def _layout(self, size: int) -> tuple[int, list[int]]:
        """(tile length, tile starts) along one axis: the fewest tiles of at most ``tile`` that
        overlap by at least ``overlap``, shrunk to share the axis evenly. Fixed-length tiles would
        leave the last one overlapping its neighbour by up to a whole tile: a third more work on
        a 24 MP frame. Lengths and starts stay multiples of 4 (the denoiser's two downsamplings
        see the same phase in every tile)."""
        if size <= self.tile:
            return size, [0]
        count = math.ceil((size - self.overlap) / (self.tile - self.overlap))
        length = 4 * math.ceil((size + (count - 1) * self.overlap) / count / 4)
        while True:
            starts = [4 * round(i * (size - length) / (count - 1) / 4) for i in range(count - 1)] + [size - length]
            if all(b - a <= length - self.overlap for a, b in zip(starts, starts[1:])):
                return length, starts
            length += 4

    def _ramp(self, start: int, length: int, size: int, scale: int) -> torch.Tensor:
        margin = self.overlap // 3
        ramp = max(1, self.overlap - 2 * margin)
        pos = torch.arange(length * scale, dtype=torch.float32) / scale
        weight = torch.ones(length * scale)
        if start > 0:
            weight = weight * ((pos - margin) / ramp).clamp(0, 1)
        if start + length < size:
            weight = weight * ((length - pos - margin) / ramp).clamp(0, 1)
        return weight.clamp_min(1e-6)

    def run(self, fn: Callable[..., torch.Tensor], inputs: list[tuple[torch.Tensor, int]],
            out_channels: int, out_scale: int) -> torch.Tensor:
        """``inputs``: (C, h*s, w*s) tensors with their scale s relative to the latent grid."""
        first, s0 = inputs[0]
        height, width = first.shape[-2] // s0, first.shape[-1] // s0
        out = torch.zeros(out_channels, height * out_scale, width * out_scale)
        th, ys = self._layout(height)
        tw, xs = self._layout(width)
        row_weights = [self._ramp(y, th, height, out_scale) for y in ys]
        col_weights = [self._ramp(x, tw, width, out_scale) for x in xs]
        # A tile's weight is its row ramp times its column ramp, so the weights' sum over the grid
        # of tiles is the product of the ramps' sums along each axis: no full-size sum to keep.
        row_total, col_total = torch.zeros(height * out_scale), torch.zeros(width * out_scale)
        for y, wy in zip(ys, row_weights):
            row_total[y * out_scale:(y + th) * out_scale] += wy
        for x, wx in zip(xs, col_weights):
            col_total[x * out_scale:(x + tw) * out_scale] += wx
        for y, wy in zip(ys, row_weights):
            for x, wx in zip(xs, col_weights):
                crops = [t[:, y * s:(y + th) * s, x * s:(x + tw) * s][None]
                         .to(self.device, self.dtype).contiguous(memory_format=torch.channels_last)
                         for t, s in inputs]
                result = fn(*crops)[0].float().cpu()
                rows, cols = slice(y * out_scale, (y + th) * out_scale), slice(x * out_scale, (x + tw) * out_scale)
                out[:, rows, cols].addcmul_(result, wy[:, None] * wx[None, :])
        return out.div_(row_total[:, None]).div_(col_total)
