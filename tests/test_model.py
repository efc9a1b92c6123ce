"""The learned model as shipped: weights integrity, tiling, colour steering, and real quality.

These use the bundled weights (rawrestore/weights/), so a broken or untrained model fails here.
"""
from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch

from rawrestore.noise import eld_noise
from rawrestore.pipeline import Developer, DevelopOptions, Tiler
from rawrestore.rawio import RawImage
from rawrestore.unprocess import optical_blur, random_camera, synthesize
from rawrestore.weights import WeightsError, bundled_weights_path, load_bundle, manifest

from conftest import run_cli


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / torch.mean((a.clamp(0, 1) - b) ** 2)))


@pytest.fixture(scope="module")
def photo() -> torch.Tensor:
    from skimage import data

    sharp = torch.from_numpy(data.astronaut()[96:352, 128:448].copy()).permute(2, 0, 1).float() / 255
    return optical_blur(sharp, 0.7)  # what a lens delivers, as in the benchmark


def noisy_raw(photo: torch.Tensor, iso: float, seed: int = 3, cfa: str = "GBRG") -> RawImage:
    cam = random_camera(np.random.default_rng(seed), cfa=cfa)
    cam.tone = False
    cam.noise = eld_noise("CanonEOS5D4", iso)
    return synthesize(photo, cam, torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def model() -> Developer:
    return Developer(DevelopOptions(auto_exposure=False))


@pytest.mark.parametrize("iso, margin", [(6400, 3.1), (25600, 4.5)])
def test_model_beats_the_classical_isp_on_a_noisy_raw(photo, model, iso, margin):
    # Shipped weights (v15) measured +3.61 dB at ISO 6400 and +5.05 dB at ISO 25600 on this photo
    # (v14: +3.39 and +4.71, v13: +3.36 and +4.68, v12: +3.21 and +4.49, v11: +3.07 and +4.25,
    # v10: +2.95 and +4.2, v9: +2.4 and +3.6).
    raw = noisy_raw(photo, iso=iso)
    classical = Developer(DevelopOptions(auto_exposure=False, classical=True)).develop(raw)
    enhanced = model.develop(raw)
    assert enhanced.shape == photo.shape
    assert psnr(enhanced, photo) > psnr(classical, photo) + margin


def test_model_stays_close_on_a_clean_raw(photo, model):
    # RCD on a clean, lens-blurred RAW is near exact (42.1 dB on this photo), and the network
    # alone smooths fine detail; the classical share hands such pixels to the classical render.
    # The shipped model (v15) measured 0.57 dB above the classical ISP here (v14 0.50, v13 0.45,
    # v12 0.3, v11 0.4, v10 and v9 0.1 dB above; v6, with a one-band share, 0.2 dB below; v4, whose
    # share was fitted to the batch L1, 3.0 dB below).
    raw = noisy_raw(photo, iso=100)
    classical = Developer(DevelopOptions(auto_exposure=False, classical=True)).develop(raw)
    assert psnr(model.develop(raw), photo) > psnr(classical, photo)


def test_same_seed_same_output_and_steps_change_it(photo):
    raw = noisy_raw(photo, iso=3200)
    a = Developer(DevelopOptions(auto_exposure=False, steps=4, seed=1)).develop(raw)
    b = Developer(DevelopOptions(auto_exposure=False, steps=4, seed=1)).develop(raw)
    c = Developer(DevelopOptions(auto_exposure=False, steps=1)).develop(raw)
    torch.testing.assert_close(a, b)
    assert (a - c).abs().mean() > 1e-4


def test_zero_steps_decode_the_encoders_latent_without_the_denoiser(photo):
    raw = noisy_raw(photo, iso=3200)
    skipped = Developer(DevelopOptions(auto_exposure=False, steps=0))

    def denoiser(*_):
        raise AssertionError("zero steps call no denoiser")

    skipped.model.denoiser.forward = denoiser
    one_step = Developer(DevelopOptions(auto_exposure=False, steps=1)).develop(raw)
    assert 0 < (skipped.develop(raw) - one_step).abs().mean() < 0.01
    with pytest.raises(ValueError, match=r"0 \(no diffusion step\) or one of 1, 2, 4, 8"):
        Developer(DevelopOptions(steps=3))


def test_tiled_equals_untiled(photo):
    raw = noisy_raw(photo, iso=1600)
    whole = Developer(DevelopOptions(auto_exposure=False, steps=2, tile=1024))
    small = Developer(DevelopOptions(auto_exposure=False, steps=2, tile=40, overlap=16))
    diff = (whole.develop(raw) - small.develop(raw)).abs()
    assert float(diff.max()) < 4 / 255   # invisible: under four 8-bit levels anywhere
    assert float(diff.mean()) < 0.2 / 255


def test_half_precision_as_on_cuda_gives_the_float32_output(photo):
    """The networks in float16, as ``--device cuda`` runs them (here on the CPU): the classical
    detail must stay in float32 (in half, the demosaic's ratios gave NaN) and the time embedding
    must follow the networks' precision (it failed with a dtype error on a real GPU)."""
    raw = noisy_raw(photo, iso=6400)
    full = Developer(DevelopOptions(auto_exposure=False, steps=2))
    half = Developer(DevelopOptions(auto_exposure=False, steps=2))
    half.model, half.dtype = half.model.to(torch.float16), torch.float16
    reference, result = full.develop(raw), half.develop(raw)
    assert torch.isfinite(result).all()
    assert psnr(result, reference) > 50


def test_color_style_changes_colours_and_keeps_structure(photo, model):
    raw = noisy_raw(photo, iso=800)
    natural = model.develop(raw)
    mono = Developer(DevelopOptions(auto_exposure=False, style="mono")).develop(raw)
    vivid = Developer(DevelopOptions(auto_exposure=False, style="vivid")).develop(raw)

    def chroma(img):
        return (img - img.mean(0, keepdim=True)).abs().mean()

    def edges(img):
        luma = img.mean(0)
        return torch.cat([(luma[1:] - luma[:-1]).flatten(), (luma[:, 1:] - luma[:, :-1]).flatten()])

    assert chroma(mono) < 0.25 * chroma(natural)
    assert chroma(vivid) > 1.1 * chroma(natural)
    for styled in (mono, vivid):
        corr = np.corrcoef(edges(natural).numpy(), edges(styled).numpy())[0, 1]
        assert corr > 0.9


def test_weights_with_a_wrong_sha256_are_refused(tmp_path):
    entry = manifest()
    damaged = tmp_path / "damaged.safetensors"
    shutil.copy(bundled_weights_path(entry), damaged)
    data = bytearray(damaged.read_bytes())
    data[-5] ^= 0xFF
    damaged.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="sha256"):
        load_bundle(damaged, sha256=entry.sha256)
    load_bundle(bundled_weights_path(entry), sha256=entry.sha256)  # the shipped file matches


def test_manifest_matches_the_shipped_file():
    from rawrestore.weights import sha256_of

    entry = manifest()
    path = bundled_weights_path(entry)
    assert sha256_of(path) == entry.sha256
    assert path.stat().st_size == entry.size


def test_offline_hub_fails_with_a_clear_message(tmp_path, dng_factory):
    import os

    env_backup = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_HOME")}
    os.environ.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    try:
        result = run_cli("enhance", dng_factory(), "--weights", "hub")
    finally:
        for k, v in env_backup.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    assert result.returncode == 1
    assert "offline" in result.stderr and "Traceback" not in result.stderr


def test_decoder_fuses_with_the_classical_render():
    # The decoder's last step blends its own render with the classical one (colour condition
    # plus detail): with the classical share fully open the output is exactly that render,
    # whatever the latent says; with it closed, the latent matters.
    from rawrestore.conditioning import upsample_condition
    from rawrestore.models import RVAE

    torch.manual_seed(0)
    rvae = RVAE()
    for p in rvae.decoder.head.parameters():  # a decoder whose own render depends on the latent
        torch.nn.init.normal_(p, std=0.1)
    color, x = torch.rand(1, 3, 8, 8), torch.rand(1, 4, 16, 16)
    std, detail = torch.full((1, 1, 16, 16), 0.01), 0.1 * torch.randn(1, 3, 32, 32)
    latents = torch.randn(2, 16, 8, 8)
    share = rvae.decoder.classical_share.logit
    with torch.no_grad():
        share.bias.fill_(30.0)
        opened = [rvae.decode(z[None], color, x, std, detail) for z in latents]
        share.bias.fill_(-30.0)
        closed = [rvae.decode(z[None], color, x, std, detail) for z in latents]
    torch.testing.assert_close(opened[0], upsample_condition(color) + detail)
    torch.testing.assert_close(opened[1], opened[0])
    assert (closed[0] - closed[1]).abs().mean() > 1e-3


@pytest.mark.parametrize("tile, overlap", [(192, 12), (192, 24), (40, 16)])
def test_tile_layout_covers_the_grid_evenly(tile, overlap):
    tiler = Tiler(tile, overlap, torch.device("cpu"), torch.float32)
    for size in range(4, 2000, 4):
        length, starts = tiler._layout(size)
        assert length <= max(tile, size) and length % 4 == 0 and all(s % 4 == 0 for s in starts)
        assert starts[0] == 0 and starts[-1] + length == size
        assert all(overlap <= a + length - b for a, b in zip(starts, starts[1:]))
        # No more tiles than fixed-length tiles at the same overlap would need, and no more work.
        fixed = 1 if size <= tile else math.ceil((size - overlap) / (tile - overlap))
        assert len(starts) <= fixed and len(starts) * length <= fixed * min(tile, size)


@pytest.mark.parametrize("shape", [(1, 3, 40, 52), (2, 1, 3, 4)])
@pytest.mark.parametrize("radius", [1, 2])
def test_box_mean_is_the_pooled_mean_without_the_padding(shape, radius):
    import torch.nn.functional as F

    from rawrestore.models.rvae import box_mean

    image = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    expected = F.avg_pool2d(image, 2 * radius + 1, 1, radius, count_include_pad=False)
    torch.testing.assert_close(box_mean(image, radius), expected)
