"""The latent denoiser: a small UNet at the latent grid (H/4), x0-prediction.

Inputs: the SDE state x_t, the mean-reversion target mu (latent of the noisy RAW), the colour
condition resized to the latent grid, the noise std at the latent grid, and the time t in [0, 1].
Output: the predicted clean latent x0 (k-diffusion's denoiser contract).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ResBlock, timestep_embedding


class LatentDenoiser(nn.Module):
    def __init__(self, latent_channels: int = 16, widths: tuple[int, int, int] = (32, 64, 128), time_dim: int = 64,
                 hidden: tuple[int, int, int] | None = None):
        """``widths``: channels per level (latent grid, /2, /4); ``hidden``: the ResBlocks' inner
        widths per level (default ``widths``)."""
        super().__init__()
        c0, c1, c2 = widths
        h0, h1, h2 = hidden or widths
        self.time_dim = time_dim
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        self.stem = nn.Conv2d(2 * latent_channels + 3 + 1, c0, 3, padding=1)
        self.enc0 = ResBlock(c0, time_dim=time_dim, hidden=h0)
        self.down1 = nn.Conv2d(c0, c1, 3, stride=2, padding=1)
        self.enc1 = ResBlock(c1, time_dim=time_dim, hidden=h1)
        self.down2 = nn.Conv2d(c1, c2, 3, stride=2, padding=1)
        self.mid = nn.ModuleList([ResBlock(c2, time_dim=time_dim, hidden=h2) for _ in range(2)])
        self.up2 = nn.ConvTranspose2d(c2, c1, 2, stride=2)
        self.dec1 = ResBlock(2 * c1, c1, time_dim=time_dim, hidden=h1)
        self.up1 = nn.ConvTranspose2d(c1, c0, 2, stride=2)
        self.dec0 = ResBlock(2 * c0, c0, time_dim=time_dim, hidden=h0)
        self.head = nn.Conv2d(c0, latent_channels, 3, padding=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x_t: torch.Tensor, mu: torch.Tensor, color: torch.Tensor, noise_std: torch.Tensor,
                t: torch.Tensor) -> torch.Tensor:
        # The embedding is computed in float32 (its arguments reach 1000 t), then run at the
        # networks' precision (half on CUDA).
        temb = self.time_mlp(timestep_embedding(t, self.time_dim).to(x_t.dtype))
        h0 = self.enc0(F.silu(self.stem(torch.cat([x_t, mu, color, noise_std.sqrt()], 1))), temb)
        h1 = self.enc1(F.silu(self.down1(h0)), temb)
        h = F.silu(self.down2(h1))
        for block in self.mid:
            h = block(h, temb)
        h = self.dec1(torch.cat([self.up2(h), h1], 1), temb)
        h = self.dec0(torch.cat([self.up1(h), h0], 1), temb)
        # Residual on the current state: with a zero-initialised head the untrained net returns x_t.
        return x_t + self.head(h)
