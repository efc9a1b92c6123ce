"""The RAW-domain core at inference: a RAW frame -> the restored RAW -> the ISP's rendering.

The restored RAW is defined once for every consumer (the JPEG/TIFF/PNG rendering, the DNG
export, ``--strength``): the restored image in linear, camera-native RGB at full resolution,
white balance divided back out, unclipped float, independent of the rendering options.

    packed mosaic (RGGB, black-subtracted) -> white balance -> blind noise estimate (a, b)
    -> latent mu and its noise std (models.core.model_inputs) -> few-step IR-SDE sampling of the
    restorer over the whole latent grid (networks tiled) -> decoder (tiled) -> / white balance.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from .isp import apply_matrix, crop_back, exposure_gain, normalized_rggb, orient, pack, srgb_encode
from .models.core import CoreConfig, CoreModel, model_inputs
from .noise import estimate_noise
from .rawio import RawImage
from .schedulers.irsde import IRSDEScheduler, sample

WEIGHTS_FORMAT = "rawrestore-core"
RESTORER_OVERLAP = 24    # latent pixels: the UNet's reach at its coarsest level, with room
DECODER_OVERLAP = 16     # latent pixels: over twice the decoder's receptive radius (about 7)
CPU = torch.device("cpu")


@dataclass
class CoreWeights:
    model: CoreModel
    scheduler: IRSDEScheduler
    info: dict[str, str]


def save_core(model: CoreModel, scheduler: IRSDEScheduler, path: str | Path, info: dict[str, str] | None = None
              ) -> Path:
    path = Path(path)
    header = {"format": WEIGHTS_FORMAT, **model.config.to_header(), "sde.lambda": repr(scheduler.lam),
              "sde.t_start": repr(scheduler.t_start), **(info or {})}
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path), metadata=header)
    return path


def is_core_weights(path: str | Path) -> bool:
    with safe_open(str(path), framework="pt") as f:
        return (f.metadata() or {}).get("format") == WEIGHTS_FORMAT


def load_core(path: str | Path) -> CoreWeights:
    """The core's weights, its config read (and bounded) from the header before anything is built."""
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata() or {}
        if header.get("format") != WEIGHTS_FORMAT:
            raise ValueError(f"{path}: not rawrestore core weights")
        config = CoreConfig.from_header(header)
        lam, t_start = float(header["sde.lambda"]), int(header["sde.t_start"])
        if not (0 < lam < 100 and 1 <= t_start <= 100):
            raise ValueError(f"{path}: SDE settings out of bounds")
        model = CoreModel(config)
        state = {k: f.get_tensor(k) for k in f.keys()}
    for name, tensor in state.items():
        if not torch.isfinite(tensor).all():
            raise ValueError(f"{path}: tensor {name} holds NaN or infinite values")
    model.load_state_dict(state)
    model.eval()
    info = {k: v for k, v in header.items() if not k.startswith(("core.", "sde."))}
    return CoreWeights(model, IRSDEScheduler(t_start=t_start, lam=lam), info)


def sample_restored(restorer: Callable[[torch.Tensor, float, torch.Tensor], torch.Tensor], mu: torch.Tensor,
                    std: torch.Tensor, scheduler: IRSDEScheduler, steps: int,
                    noises: list[torch.Tensor] | None) -> torch.Tensor:
    """IR-SDE sampling of the restored latent; ``restorer(x_t, start, t) -> x0``, where ``start``
    is 1.0 when x_t is the noise-free DTDM start mu itself (the one input ``--steps 1`` gives,
    flagged because the restorer is trained on exactly it), else 0.0. The SDE's lambda is per
    value, in units of its noise std."""
    calls = 0

    def denoiser(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        start = 1.0 if noises is None and calls == 0 else 0.0
        calls += 1
        return restorer(x_t, start, t)

    return sample(denoiser, mu, scheduler, steps, noises, std)


def restore_packed(weights: CoreWeights, packed: torch.Tensor, noise: tuple[float, float], wb: np.ndarray,
                   steps: int, seed: int = 0, tile: int = 256, device: torch.device = CPU,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(4, h, w) packed native mosaic, h and w multiples of 8 -> white-balanced restored RGB (3, 2h, 2w).

    The sampler's state is the whole latent grid (16 channels at H/4: 96 MB on 24 MP); only the
    networks see tiles. The noise is drawn for the whole grid from ``seed``, so the result does
    not depend on the tiling. ``steps`` 0 decodes the noisy latent as it is (no restoration)."""
    from .pipeline import Tiler

    model = weights.model
    wb_t = torch.as_tensor(np.asarray(wb, dtype=np.float32))[None]
    balanced = packed[None] * wb_t[:, [0, 1, 1, 2], None, None]
    mu, std = model_inputs(balanced, torch.tensor([noise], dtype=torch.float32), wb_t, model.config)
    mu, std = mu[0], std[0]
    gen = torch.Generator().manual_seed(seed)
    noises = [torch.randn(mu.shape, generator=gen)[None] for _ in range(steps)] if steps > 1 else None
    tiler = Tiler(tile, RESTORER_OVERLAP, device, dtype)

    def restorer(x_t: torch.Tensor, start: float, t: torch.Tensor) -> torch.Tensor:
        flag = torch.full((1,), start, device=device, dtype=dtype)

        def fn(x: torch.Tensor, m: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
            return model.restorer(x, m, s, flag, t.to(device, dtype))

        return tiler.run(fn, [(x_t[0], 1), (mu, 1), (std, 1)], 16, 1)[None]

    latent = sample_restored(restorer, mu[None], std[None], weights.scheduler, steps, noises)[0]
    return Tiler(tile, DECODER_OVERLAP, device, dtype).run(model.decoder, [(latent, 1)], 3, 4)


@torch.inference_mode()
def restored_raw(weights: CoreWeights, raw: RawImage, steps: int, seed: int = 0, tile: int = 256,
                 device: torch.device = CPU, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The restored RAW of a Bayer frame: linear camera-native RGB (3, H, W), unclipped, not oriented."""
    h, w = raw.mosaic.shape
    mosaic, offset = normalized_rggb(raw)
    # Reflect-pad by an even amount (keeps the CFA phase) so that the latent grid is a multiple of
    # 4, as the restorer's two downsamplings need.
    pad_y, pad_x = (-mosaic.shape[0]) % 16, (-mosaic.shape[1]) % 16
    if pad_y or pad_x:
        mosaic = F.pad(mosaic[None, None], (0, pad_x, 0, pad_y), mode="reflect")[0, 0]
    packed = pack(mosaic)
    balanced_rgb = restore_packed(weights, packed, estimate_noise(packed), raw.wb, steps, seed, tile, device, dtype)
    native = balanced_rgb / torch.as_tensor(np.asarray(raw.wb, dtype=np.float32))[:, None, None]
    return crop_back(native, offset, (h, w))


def render(native: torch.Tensor, raw: RawImage, exposure_ev: float = 0.0, auto_exposure: bool = True,
           wb: np.ndarray | None = None) -> torch.Tensor:
    """The ISP on a restored RAW: white balance (the file's, or ``wb``), highlight clip, the file's
    colour matrix, exposure, the sRGB curve, orientation -> display sRGB (3, H, W) in [0, 1]."""
    multipliers = np.asarray(raw.wb if wb is None else wb, dtype=np.float32)
    balanced = native * torch.as_tensor(multipliers)[:, None, None]
    # The classical ISP's highlight clip: no channel past the level where the first saturates.
    linear = apply_matrix(balanced.clamp(0, float(multipliers.min())), raw.srgb_from_cam)
    gain = exposure_gain(linear, exposure_ev, auto_exposure)
    display = torch.cat([srgb_encode(strip * gain) for strip in linear.split(256, dim=1)], dim=1)
    return orient(display, raw.orientation)

