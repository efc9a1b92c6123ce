"""RVAE: a RAW-domain variational autoencoder.

Encoder: packed canonical RGGB (4 channels at H/2, white-balanced, exposure applied) plus the
per-pixel noise std (1 channel), space-to-depth to H/4 -> latent (``latent_channels`` at H/4):
mean and log-variance.
Decoder: latent + colour condition (both at H/4) -> display sRGB at full resolution H,
upsampled by two pixel shuffles (H/4 -> H/2 -> H), with skips from the RAW at H/4 (optional, wide)
and at H/2 and a gated
share of the classical render's fine detail at H (a gate per band: the detail's 2x2 mean brought
back up, and the rest); a last per-pixel, three-band fusion with the classical render itself
(:class:`ClassicalShare`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..conditioning import upsample_condition
from .blocks import ResBlock


def coarse_band(image: torch.Tensor) -> torch.Tensor:
    """An image's local mean: its 2x2 mean brought back up bilinearly (the rest is its fine band)."""
    return _brought_up(F.avg_pool2d(image, 2))


def low_band(means: torch.Tensor) -> torch.Tensor:
    """An image's broad mean from its 2x2 means (``avg_pool2d(image, 2)``): their 5x5 mean, brought
    back up bilinearly; about a 10x10 mean of the image, at a quarter of the work."""
    return _brought_up(box_mean(means, 2))


def _brought_up(means: torch.Tensor) -> torch.Tensor:
    return F.interpolate(means, scale_factor=2, mode="bilinear", align_corners=False)


def shuffled(features: torch.Tensor) -> torch.Tensor:
    """``F.pixel_shuffle(features, 2)`` as a contiguous (NCHW) tensor, whatever the input's memory
    format, in one strided copy. On a channels-last input, ``pixel_shuffle`` and ``contiguous``
    take three copies, 3-4x longer here (README, Speed)."""
    b, c, h, w = features.shape
    return features.unflatten(1, (c // 4, 2, 2)).permute(0, 1, 4, 2, 5, 3).reshape(b, c // 4, 2 * h, 2 * w)


def box_mean(image: torch.Tensor, radius: int) -> torch.Tensor:
    """The mean over each (2 radius + 1)^2 window, the zero padding not counted (``avg_pool2d``
    with ``count_include_pad=False``), by shifted slices: several times faster than the pooling
    kernel here."""
    size, (height, width) = 2 * radius + 1, image.shape[-2:]
    padded = F.pad(image, (radius,) * 4)
    rows = padded[..., :height, :].clone()
    for i in range(1, size):
        rows += padded[..., i:i + height, :]
    sums = rows[..., :width].clone()
    for j in range(1, size):
        sums += rows[..., j:j + width]

    def counts(length: int) -> torch.Tensor:
        at = torch.arange(length, device=image.device)
        return (at.clamp(max=radius) + (length - 1 - at).clamp(max=radius) + 1).to(image.dtype)

    return sums / (counts(height)[:, None] * counts(width))


def raw_at_latent_grid(packed: torch.Tensor, noise_std: torch.Tensor) -> torch.Tensor:
    """The RAW as the latent grid sees it: each 4x4 sensor block's 16 packed values and its
    noise std (17 channels at H/4). sqrt makes dark and bright regions comparable in scale (a
    variance-stabilising step)."""
    return torch.cat([F.pixel_unshuffle(packed.clamp_min(0).sqrt(), 2), F.avg_pool2d(noise_std, 2).sqrt()], dim=1)


class RAWEncoder(nn.Module):
    def __init__(self, latent_channels: int = 16, width: int = 64, hidden: int = 64):
        super().__init__()
        # Each latent pixel sees its 4x4 sensor block (16 packed values) + the noise std.
        self.stem = nn.Conv2d(4 * 4 + 1, width, 3, padding=1)
        self.block = ResBlock(width, hidden=hidden)
        self.head = nn.Conv2d(width, 2 * latent_channels, 3, padding=1)

    def features(self, packed: torch.Tensor, noise_std: torch.Tensor) -> torch.Tensor:
        return self.block(F.silu(self.stem(raw_at_latent_grid(packed, noise_std))))

    def forward(self, packed: torch.Tensor, noise_std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.head(self.features(packed, noise_std)).chunk(2, dim=1)
        return mean, logvar.clamp(-12, 4)

    def mean(self, packed: torch.Tensor, noise_std: torch.Tensor) -> torch.Tensor:
        """The latent's mean alone, what inference uses: the head's mean half only (12 % of the
        encoder's work saved)."""
        half = self.head.out_channels // 2
        return F.conv2d(self.features(packed, noise_std), self.head.weight[:half], self.head.bias[:half], padding=1)


class ClassicalShare(nn.Module):
    """The last step: the network's render plus, per pixel, colour and band, a share in [0, 1] of
    its difference from the classical render.

    Where the noise is low, the classical render is close to exact and its errors (demosaic
    artefacts) differ from the network's, so a blend of the two beats either; where the noise is
    high, the network's output is the better one. The difference is split in three bands: its
    fine band (what its 2x2 mean, brought back up, lacks) is where the classical render's noise
    lives; the coarse band (that mean) and the low band (:func:`low_band`) are where the
    network's smoothed-away shading and colour are, at two scales. Each band takes its own share
    (fitted: two bands +0.2 dB over one on held-out training samples, three +0.02 over two there
    and up to +0.12 on the benchmark). Each share is a logistic function of three log features: the
    noise std, the signal level (together they give the noise in display units) and the local
    disagreement between the two renders, a per-pixel test of whether that disagreement is noise
    (trust the network) or detail the network lost (trust the classical render).
    """

    def __init__(self):
        super().__init__()
        # Per band (fine, coarse, low) and colour, over (log noise std, log level, log disagreement).
        self.logit = nn.Conv2d(3, 9, 1)
        nn.init.zeros_(self.logit.weight)
        nn.init.constant_(self.logit.bias, -2.0)  # starts near the network alone (0.12)

    def shares(self, difference: torch.Tensor, x: torch.Tensor, noise_std: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) classical render minus the network's, the (B, 4, H/2, W/2) model input and
        its noise std -> (B, 9, H, W): the fine band's shares (R, G, B), the coarse band's, the low
        band's."""
        weight, bias = self.logit.weight[:, :, 0, 0], self.logit.bias
        # The 1x1 logit in two parts: the noise and level terms at H/2, where they live (a quarter
        # of the work), the disagreement at H.
        coarse = torch.cat([noise_std, x.mean(1, keepdim=True)], dim=1).clamp_min(1e-4).log()
        coarse = torch.einsum("oc,bchw->bohw", weight[:, :2], coarse) + bias[:, None, None]
        # The disagreement's 3x3 mean (zero-padded) by shifted slices: on one channel, many times
        # faster than a pooling kernel.
        d = F.pad(difference.abs().mean(1), (1, 1, 1, 1))
        d = d[:, :-2] + d[:, 1:-1] + d[:, 2:]
        disagreement = ((d[..., :-2] + d[..., 1:-1] + d[..., 2:]) / 9).clamp_min(1e-4).log()
        # Each full-resolution pixel (2y + i, 2x + j) takes the logit of its H/2 pixel (y, x): a
        # broadcast over (y, i, x, j), one pass where a nearest upsampling took two more.
        b, _, h, w = coarse.shape
        logits = torch.addcmul(coarse.view(b, 9, h, 1, w, 1), weight[:, 2].view(1, 9, 1, 1, 1, 1),
                               disagreement.view(b, 1, h, 2, w, 2))
        return logits.view(b, 9, 2 * h, 2 * w).sigmoid_()

    def forward(self, network: torch.Tensor, classical: torch.Tensor, x: torch.Tensor,
                noise_std: torch.Tensor) -> torch.Tensor:
        """The output: ``network`` + fine share x fine band + coarse share x coarse band + low share x
        low band, where the bands are the difference minus its coarse band, its coarse band minus
        its low band, and its low band."""
        difference = classical - network
        fine_share, coarse_share, low_share = self.shares(difference, x, noise_std).chunk(3, dim=1)
        means = F.avg_pool2d(difference, 2)  # the coarse band's and the low band's
        # network + fine x difference + (coarse - fine) x coarse band + (low - coarse) x low band,
        # in three passes, not seven.
        return (torch.addcmul(network, fine_share, difference)
                .addcmul_(coarse_share - fine_share, _brought_up(means))
                .addcmul_(low_share - coarse_share, low_band(means)))


class RGBDecoder(nn.Module):
    def __init__(self, latent_channels: int = 16, width: int = 64, half_width: int = 16, hidden: int = 64,
                 half_hidden: int = 16, wide_hidden: int = 0):
        """``wide_hidden`` > 0 adds a skip from the RAW at the latent grid and a ResBlock of that
        inner width behind it (see :meth:`render`)."""
        super().__init__()
        self.stem = nn.Conv2d(latent_channels + 3, width, 3, padding=1)
        self.block_latent = ResBlock(width, hidden=hidden)
        self.raw_wide = self.block_wide = None
        if wide_hidden:
            # Zero-initialised skip and (ResBlock's) residual: a decoder without them, exactly, at first.
            self.raw_wide = nn.Conv2d(17, width, 3, padding=1)
            nn.init.zeros_(self.raw_wide.weight)
            nn.init.zeros_(self.raw_wide.bias)
            self.block_wide = ResBlock(width, hidden=wide_hidden)
        self.up = nn.Conv2d(width, 4 * half_width, 1)
        # A U-Net-style skip from the RAW at H/2 (as in Refusion's latent autoencoder): fine
        # detail need not squeeze through the latent. Zero-initialised: it starts as a no-op.
        self.raw_skip = nn.Sequential(nn.Conv2d(5, half_width, 3, padding=1), nn.SiLU(),
                                      nn.Conv2d(half_width, half_width, 1))
        nn.init.zeros_(self.raw_skip[2].weight)
        nn.init.zeros_(self.raw_skip[2].bias)
        self.block_half = ResBlock(half_width, hidden=half_hidden)
        self.block_half2 = ResBlock(half_width, hidden=half_hidden)
        self.head = nn.Conv2d(half_width, 12, 3, padding=1)
        # Per output pixel, colour and band, how much of the classical render's detail to keep:
        # 12 channels (2x2 sub-pixels x RGB) for its fine band, 12 for its coarse band (its 2x2
        # mean brought back up), whose noise is half as strong. Starts nearly closed
        # (sigmoid(-3) = 0.05), so it begins close to a decoder without it.
        self.detail_gate = nn.Conv2d(half_width, 24, 3, padding=1)
        nn.init.zeros_(self.detail_gate.weight)
        nn.init.constant_(self.detail_gate.bias, -3.0)
        self.classical_share = ClassicalShare()

    def render(self, latent: torch.Tensor, color: torch.Tensor, packed: torch.Tensor,
               noise_std: torch.Tensor, detail: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The network's own render and the classical render, before the share blends them."""
        h = self.block_latent(F.silu(self.stem(torch.cat([latent, color], dim=1))))
        if self.block_wide is not None:
            # The noisy RAW's 4x4 blocks, 64 channels wide: detail the 16-channel latent cannot hold
            # gets a wide path, where a convolution costs a fifth of what it does at 16 channels at
            # H/2 per operation on this CPU (README, Speed).
            h = self.block_wide(h + self.raw_wide(raw_at_latent_grid(packed, noise_std)))
        h = F.silu(F.pixel_shuffle(self.up(h), 2))
        h = h + self.raw_skip(torch.cat([packed.clamp_min(0).sqrt(), noise_std.sqrt()], dim=1))
        h = self.block_half2(self.block_half(h))
        # Residual on the colour condition: the decoder adds detail to the colours it was given.
        # Demosaicking and denoising at full resolution is too much for a network this small on a
        # CPU; a classical demosaic is cheap and exact on clean data, so the decoder chooses per
        # pixel how much of its detail to trust, and adds a learned correction.
        # At full resolution everything is contiguous, not channels-last: on 3-6 channels the
        # bilinear upsampling runs about twice as fast (README, Speed).
        gates = shuffled(self.detail_gate(h)).sigmoid_()
        fine_gate, coarse_gate = gates.chunk(2, dim=1)
        coarse = coarse_band(detail)
        base = upsample_condition(color)
        # base + head + fine gate x (detail - coarse) + coarse gate x coarse, in fewer passes.
        network = (base + shuffled(self.head(h))).addcmul_(fine_gate, detail).addcmul_(
            coarse_gate - fine_gate, coarse)
        return network, base + detail

    def forward(self, latent: torch.Tensor, color: torch.Tensor, packed: torch.Tensor,
                noise_std: torch.Tensor, detail: torch.Tensor) -> torch.Tensor:
        network, classical = self.render(latent, color, packed, noise_std, detail)
        return self.classical_share(network, classical, packed, noise_std)


class RVAE(nn.Module):
    def __init__(self, latent_channels: int = 16, hidden: int = 64, half_hidden: int = 16, wide_hidden: int = 0):
        """``hidden``: the inner width of the ResBlocks at the latent grid, ``half_hidden``: of the
        decoder's at H/2, ``wide_hidden``: of the decoder's RAW block at the latent grid (0: none)."""
        super().__init__()
        self.latent_channels = latent_channels
        self.encoder = RAWEncoder(latent_channels, hidden=hidden)
        self.decoder = RGBDecoder(latent_channels, hidden=hidden, half_hidden=half_hidden, wide_hidden=wide_hidden)

    def encode(self, packed: torch.Tensor, noise_std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The latent's (mean, log-variance)."""
        return self.encoder(packed, noise_std)

    def encode_mean(self, packed: torch.Tensor, noise_std: torch.Tensor) -> torch.Tensor:
        return self.encoder.mean(packed, noise_std)

    def decode(self, latent: torch.Tensor, color: torch.Tensor, packed: torch.Tensor,
               noise_std: torch.Tensor, detail: torch.Tensor) -> torch.Tensor:
        return self.decoder(latent, color, packed, noise_std, detail)
