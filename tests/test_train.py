"""Training objectives: the relative L1, and the classical share's calibration to per-sample PSNR."""
from __future__ import annotations

import torch

from rawrestore.models.rvae import ClassicalShare
from rawrestore.train import calibrate_share, relative_l1, share_psnr


def _two_regimes(count: int = 32, size: int = 32) -> dict[str, torch.Tensor]:
    """Half the samples nearly clean (the classical render is 10x closer to the truth than the
    network's), half very noisy (the network 3x closer): no single share suits both."""
    gen = torch.Generator().manual_seed(0)
    target = 0.2 + 0.6 * torch.rand(count, 3, size, size, generator=gen)
    quiet = torch.arange(count) % 2 == 0
    classical_err = torch.where(quiet, 0.002, 0.15).view(-1, 1, 1, 1)
    network_err = torch.where(quiet, 0.02, 0.05).view(-1, 1, 1, 1)
    noise_std = torch.where(quiet, 1e-3, 0.1).view(-1, 1, 1, 1).expand(count, 1, size // 2, size // 2)
    return {
        "network": target + network_err * torch.randn(target.shape, generator=gen),
        "classical": target + classical_err * torch.randn(target.shape, generator=gen),
        "x": torch.full((count, 4, size // 2, size // 2), 0.4),
        "noise_std": noise_std.contiguous(),
        "target": target,
    }


def test_calibrated_share_beats_every_constant_share():
    cache = _two_regimes()
    everything = torch.arange(len(cache["target"]))

    class Constant(torch.nn.Module):
        def __init__(self, value: float):
            super().__init__()
            self.value = value

        def forward(self, network, *_):
            return torch.full_like(network, self.value)

    best_constant = max(float(share_psnr(Constant(v), cache, everything).mean()) for v in torch.linspace(0, 1, 11))
    share = calibrate_share(ClassicalShare(), cache, iters=200, batch=16)
    with torch.no_grad():
        fitted = share_psnr(share, cache, everything)
        weights = share(cache["network"], cache["classical"], cache["x"], cache["noise_std"])
    assert float(fitted.mean()) > best_constant + 1.0
    # Mostly the classical render where it is nearly clean, mostly the network where it is noisy.
    assert weights[0::2].mean() > 0.8 and weights[1::2].mean() < 0.2


def test_relative_l1_weighs_each_sample_by_its_own_error():
    target = torch.zeros(2, 3, 8, 8)
    out = torch.stack([torch.full((3, 8, 8), 0.01), torch.full((3, 8, 8), 0.1)]).requires_grad_()
    loss = relative_l1(out, target)
    assert torch.isclose(loss, torch.nn.functional.l1_loss(out, target))  # the value is the batch L1
    loss.backward()
    # A plain L1 gives both samples the same gradient, so the noisy one dominates the update in
    # relative terms; here each sample's gradient is inversely proportional to its error.
    quiet, noisy = out.grad[0].abs().mean(), out.grad[1].abs().mean()
    assert torch.isclose(quiet / noisy, torch.tensor(10.0))
