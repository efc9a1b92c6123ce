"""Building blocks shared by the networks.

No normalisation layers: GroupNorm statistics depend on the tile a network sees, and the
pipeline tiles large images, so tiled and untiled outputs would differ.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class ResBlock(nn.Module):
    """conv3x3 - SiLU - conv3x3 with a residual; optional time FiLM (scale, shift) in between.

    ``hidden`` (default ``c_out``) is the width between the two convolutions: the block's cost
    scales with it while the residual stream keeps its width.
    """

    def __init__(self, c_in: int, c_out: int | None = None, time_dim: int | None = None, hidden: int | None = None):
        super().__init__()
        c_out = c_out or c_in
        hidden = hidden or c_out
        self.conv1 = nn.Conv2d(c_in, hidden, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        self.film = nn.Linear(time_dim, 2 * hidden) if time_dim else None
        self.act = nn.SiLU()
        nn.init.zeros_(self.conv2.weight)  # start as identity: stable without normalisation
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.act(self.conv1(x))
        if self.film is not None:
            scale, shift = self.film(temb)[:, :, None, None].chunk(2, dim=1)
            h = h * (1 + scale) + shift
        return self.skip(x) + self.conv2(self.act(h))


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of t in [0, 1] (Vaswani et al. 2017, as in DDPM)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)
