"""The RAW-domain core: a fixed, lossless latent of the mosaic, a latent restorer and a demosaicking decoder.

Latent (the encoder, fixed): the white-balanced RGGB-packed mosaic (4, H/2, W/2) through a
variance-stabilising square root, space-to-depth to the latent grid H/4: each 4x4 sensor block's
16 values, normalised per colour. It is lossless by construction (the decoder's output at every
CFA site is the latent's own value), and the noise of every latent value is known from the
sensor's noise model, so the SDE's Gaussian perturbation and the data's noise share one scale.
A learned encoder was the alternative: it cannot beat an exact round trip, costs time, and would
spread the sensor noise across channels in a way the restorer has to unlearn.

Restorer (``LatentRestorer``): a UNet at H/4, H/8, H/16 that predicts the clean latent x0 from
the SDE state x_t, the noisy latent mu, the per-value noise std and the time (k-diffusion's
denoiser contract). A flag channel tells it when its input is the noise-free DTDM start, the one
input ``--steps 1`` gives it.

Decoder (``DemosaicDecoder``): latent -> linear, white-balanced camera RGB at full resolution,
predicted at H/2 as 12 channels (the 2x2 sites' RGB, as SID does) and shuffled up; it sees
nothing but the latent. The 4 measured values of each 2x2 cell are the latent's own; the network
predicts the 8 missing ones as a residual over the cell's own values.

Nothing here samples: the SDE and its steps live in :mod:`rawrestore.schedulers`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ResBlock, timestep_embedding

# Which packed channel (R, G1, G2, B) carries each colour's measured value, and, per site, the
# cell values that stand in for its two missing colours before the network's residual.
_R, _G1, _G2, _B = range(4)


@dataclass(frozen=True)
class CoreConfig:
    """Everything that shapes the core's networks and latent; written to and read from the weights."""

    sqrt_offset: float = 1e-3              # c of the latent's square root, sign(x) (sqrt(|x| + c) - sqrt(c))
    latent_shift: tuple[float, float, float, float] = (0.29, 0.285, 0.285, 0.28)   # per packed colour
    latent_scale: tuple[float, float, float, float] = (0.19, 0.19, 0.19, 0.19)
    decoder_width: int = 64                # at the latent grid
    decoder_blocks: int = 2
    decoder_hidden: int = 64
    decoder_half_width: int = 24           # at H/2
    restorer_widths: tuple[int, int, int] = (48, 96, 192)
    restorer_time_dim: int = 64

    def to_header(self) -> dict[str, str]:
        return {f"core.{k}": repr(v) for k, v in asdict(self).items()}

    @classmethod
    def from_header(cls, header: dict[str, str]) -> CoreConfig:
        """The config written by :meth:`to_header`, each value checked against its field's type
        and bounds before anything is allocated from it."""
        import ast

        values = {}
        for f in fields(cls):
            key = f"core.{f.name}"
            if key in header:
                value = ast.literal_eval(header[key])
                values[f.name] = tuple(value) if isinstance(value, list) else value
        config = cls(**values)
        config.check()
        return config

    def check(self) -> None:
        widths = [self.decoder_width, self.decoder_hidden, self.decoder_half_width, *self.restorer_widths,
                  self.restorer_time_dim]
        if not all(isinstance(w, int) and 1 <= w <= 1024 for w in widths) or not 0 <= self.decoder_blocks <= 16:
            raise ValueError(f"core config out of bounds: {self}")
        if not (0 < self.sqrt_offset < 1 and len(self.latent_shift) == 4 and len(self.latent_scale) == 4
                and all(s > 0 for s in self.latent_scale)):
            raise ValueError(f"core latent normalisation out of bounds: {self}")


# --- The fixed latent --------------------------------------------------------------------------

def stabilised(x: torch.Tensor, offset: float) -> torch.Tensor:
    """sign(x) (sqrt(|x| + c) - sqrt(c)): a square root (the Poisson noise's variance-stabilising
    transform) that stays odd, smooth and invertible below black, where read noise puts values."""
    return x.sign() * ((x.abs() + offset).sqrt() - math.sqrt(offset))


def unstabilised(y: torch.Tensor, offset: float) -> torch.Tensor:
    """The inverse of :func:`stabilised`."""
    return y.sign() * ((y.abs() + math.sqrt(offset)).square() - offset)


def stabilised_slope(x: torch.Tensor, offset: float) -> torch.Tensor:
    """d stabilised / dx: how a small noise std in x scales into the latent."""
    return 0.5 / (x.abs() + offset).sqrt()


def _per_site(values: tuple[float, ...], like: torch.Tensor) -> torch.Tensor:
    """Per packed colour values laid out on the latent's 16 channels (pixel_unshuffle order)."""
    return torch.tensor(values, dtype=like.dtype, device=like.device).repeat_interleave(4).view(1, 16, 1, 1)


def latent_from_packed(packed: torch.Tensor, config: CoreConfig) -> torch.Tensor:
    """(B, 4, h, w) white-balanced packed mosaic -> (B, 16, h/2, w/2) latent."""
    latent = F.pixel_unshuffle(stabilised(packed, config.sqrt_offset), 2)
    return (latent - _per_site(config.latent_shift, latent)) / _per_site(config.latent_scale, latent)


def packed_from_latent(latent: torch.Tensor, config: CoreConfig) -> torch.Tensor:
    """The inverse of :func:`latent_from_packed`, in the stabilised domain (no square undone)."""
    return F.pixel_shuffle(latent * _per_site(config.latent_scale, latent) + _per_site(config.latent_shift, latent), 2)


def latent_noise_std(packed: torch.Tensor, packed_std: torch.Tensor, config: CoreConfig) -> torch.Tensor:
    """The noise std of every latent value: the packed noise std (B, 4 or 1, h, w) times the
    square root's slope at the local level (a 3x3 mean, so noise does not steer it), normalised."""
    level = F.avg_pool2d(F.pad(packed, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    std = packed_std * stabilised_slope(level, config.sqrt_offset)
    return F.pixel_unshuffle(std, 2) / _per_site(config.latent_scale, packed)


def model_inputs(packed: torch.Tensor, noise: torch.Tensor, wb: torch.Tensor, config: CoreConfig
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """What the restorer is given, for inference and training alike.

    ``packed``: (B, 4, h, w) white-balanced RGGB-packed mosaic; ``noise``: (B, 2), the (a, b) of
    var = a x + b in the file's own (unbalanced, normalised) units; ``wb``: (B, 3). Returns mu,
    the latent of the noisy mosaic, and the noise std of each of its values."""
    gains = wb[:, [0, 1, 1, 2], None, None].to(packed)
    level = F.avg_pool2d(F.pad(packed / gains, (2, 2, 2, 2), mode="replicate"), 5, stride=1).clamp_min(0)
    a, b = noise[:, 0, None, None, None].to(packed), noise[:, 1, None, None, None].to(packed)
    std = (a * level + b).clamp_min(1e-12).sqrt() * gains
    return latent_from_packed(packed, config), latent_noise_std(packed, std, config)


# --- Networks ----------------------------------------------------------------------------------

class DemosaicDecoder(nn.Module):
    """Latent (B, 16, H/4, W/4) -> linear white-balanced camera RGB (B, 3, H, W), unclipped."""

    def __init__(self, config: CoreConfig):
        super().__init__()
        self.config = config
        width, half = config.decoder_width, config.decoder_half_width
        self.stem = nn.Conv2d(16, width, 3, padding=1)
        self.blocks = nn.Sequential(*[ResBlock(width, hidden=config.decoder_hidden)
                                      for _ in range(config.decoder_blocks)])
        self.up = nn.Conv2d(width, 4 * half, 1)
        self.half_stem = nn.Conv2d(half + 4, half, 3, padding=1)
        self.half_block = ResBlock(half)
        self.head = nn.Conv2d(half, 8, 3, padding=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        packed = packed_from_latent(latent, self.config)            # stabilised, (B, 4, H/2, W/2)
        h = self.blocks(F.silu(self.stem(latent)))
        h = F.silu(F.pixel_shuffle(self.up(h), 2))
        h = self.half_block(F.silu(self.half_stem(torch.cat([h, packed], dim=1))))
        missing = self.head(h)
        r, g1, g2, b = packed.unbind(1)
        g = 0.5 * (g1 + g2)
        # Per site (R, G1, G2, B) its RGB: the measured value exactly, the two missing ones as the
        # cell's own values of those colours plus the network's residual.
        m = missing.unbind(1)
        sites = torch.stack([
            r, g + m[0], b + m[1],          # R site
            r + m[2], g1, b + m[3],         # G1 site
            r + m[4], g2, b + m[5],         # G2 site
            r + m[6], g + m[7], b,          # B site
        ], dim=1)
        rgb = unstabilised(sites, self.config.sqrt_offset)          # (B, 12, H/2, W/2): site x RGB
        bsz, _, hh, ww = rgb.shape
        # Channel (site, colour) -> full-resolution pixel (2y + dy, 2x + dx) of that colour.
        return rgb.view(bsz, 2, 2, 3, hh, ww).permute(0, 3, 4, 1, 5, 2).reshape(bsz, 3, 2 * hh, 2 * ww)


class LatentRestorer(nn.Module):
    """x0-prediction UNet at the latent grid: (x_t, mu, noise std, start flag, t) -> x0,
    as x_t plus a residual in units of the noise std."""

    def __init__(self, config: CoreConfig):
        super().__init__()
        c0, c1, c2 = config.restorer_widths
        dim = self.time_dim = config.restorer_time_dim
        self.time_mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.stem = nn.Conv2d(16 * 3 + 1, c0, 3, padding=1)
        self.enc0 = ResBlock(c0, time_dim=dim)
        self.down1 = nn.Conv2d(c0, c1, 3, stride=2, padding=1)
        self.enc1 = ResBlock(c1, time_dim=dim)
        self.down2 = nn.Conv2d(c1, c2, 3, stride=2, padding=1)
        self.mid = nn.ModuleList([ResBlock(c2, time_dim=dim) for _ in range(2)])
        self.up2 = nn.ConvTranspose2d(c2, c1, 2, stride=2)
        self.dec1 = ResBlock(2 * c1, c1, time_dim=dim)
        self.up1 = nn.ConvTranspose2d(c1, c0, 2, stride=2)
        self.dec0 = ResBlock(2 * c0, c0, time_dim=dim)
        self.head = nn.Conv2d(c0, 16, 3, padding=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x_t: torch.Tensor, mu: torch.Tensor, noise_std: torch.Tensor, start: torch.Tensor,
                t: torch.Tensor) -> torch.Tensor:
        """``start``: (B,) 1 where x_t is the noise-free start mu itself, else 0; ``t``: (B,) in [0, 1].
        Sides of the latent must be multiples of 4."""
        temb = self.time_mlp(timestep_embedding(t, self.time_dim).to(x_t.dtype))
        flag = start.to(x_t.dtype).view(-1, 1, 1, 1).expand(-1, 1, *x_t.shape[-2:])
        # The noise std enters as its log (it spans three decades from ISO 100 to 102400).
        h0 = self.enc0(F.silu(self.stem(torch.cat([x_t, mu, noise_std.clamp_min(1e-4).log(), flag], 1))), temb)
        h1 = self.enc1(F.silu(self.down1(h0)), temb)
        h = F.silu(self.down2(h1))
        for block in self.mid:
            h = block(h, temb)
        h = self.dec1(torch.cat([self.up2(h), h1], 1), temb)
        h = self.dec0(torch.cat([self.up1(h), h0], 1), temb)
        # The correction in units of each value's noise std: the same task at every ISO, so the
        # residual cannot be larger than the noise calls for (an absolute one, learnt mostly
        # from the loud high-ISO samples, smoothed away the detail of quiet ones).
        return x_t + noise_std * self.head(h)


class CoreModel(nn.Module):
    """The core's two networks and the config they were built from (the latent needs no weights)."""

    def __init__(self, config: CoreConfig):
        super().__init__()
        config.check()
        self.config = config
        self.decoder = DemosaicDecoder(config)
        self.restorer = LatentRestorer(config)
