"""The RAW-domain core: its latent, networks, sampler glue, recipe and training loop."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from rawrestore.isp import normalized_rggb, pack
from rawrestore.models.core import CoreConfig, CoreModel, latent_from_packed, model_inputs, stabilised, unstabilised
from rawrestore.rawio import read_raw
from rawrestore.restore import load_core, render, restored_raw, save_core
from rawrestore.schedulers.irsde import IRSDEScheduler
from rawrestore.training.loop import Checkpoint, export, train
from rawrestore.training.recipe import Recipe

TINY_MODEL = """
[model]
decoder_width = 8
decoder_blocks = 1
decoder_hidden = 8
decoder_half_width = 8
restorer_widths = [8, 8, 8]
restorer_time_dim = 8
"""


def tiny_core() -> CoreModel:
    torch.manual_seed(0)
    model = CoreModel(CoreConfig(decoder_width=8, decoder_blocks=1, decoder_hidden=8, decoder_half_width=8,
                                 restorer_widths=(8, 8, 8), restorer_time_dim=8))
    # Every zero-initialised head given weights, so the networks do something.
    for p in model.parameters():
        if p.abs().sum() == 0:
            p.data.normal_(0, 0.05)
    return model.eval()


def sites_of(rgb: torch.Tensor) -> torch.Tensor:
    """(3, H, W) -> packed (4, H/2, W/2): each CFA site's own colour."""
    return torch.stack([rgb[0, 0::2, 0::2], rgb[1, 0::2, 1::2], rgb[1, 1::2, 0::2], rgb[2, 1::2, 1::2]])


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(-10 * torch.log10((a - b).square().mean().clamp_min(1e-20)))


def test_stabilised_latent_inverts_below_black_and_above_white():
    x = torch.linspace(-0.05, 2.5, 1001)
    assert torch.allclose(unstabilised(stabilised(x, 1e-3), 1e-3), x, atol=1e-6)


def test_round_trip_at_the_cfa_sites_is_lossless():
    """Clean RAW -> latent -> decoder, sampled back at the CFA sites, in display space: >= 50 dB
    (the decoder keeps every measured value; only its 8 missing values per cell are predicted)."""
    model = tiny_core()
    packed = torch.rand(2, 4, 32, 48) * 1.6
    with torch.no_grad():
        rgb = model.decoder(latent_from_packed(packed, model.config))
    for image, truth in zip(rgb, packed, strict=True):
        encoded = [stabilised(v.clamp_min(0), 1e-3) for v in (sites_of(image), truth)]
        assert psnr(*encoded) >= 50


def test_restored_raw_has_the_input_size_and_its_levels(dng_factory, tmp_path):
    """Steps 0 decodes the noisy latent as it is: at the CFA sites, the file's own levels."""
    path = save_core(tiny_core(), IRSDEScheduler(lam=1.0), tmp_path / "core.safetensors")
    raw = read_raw(dng_factory())
    native = restored_raw(load_core(path), raw, steps=0)
    assert native.shape == (3, *raw.mosaic.shape)
    mosaic, _ = normalized_rggb(raw)
    assert torch.allclose(sites_of(native), pack(mosaic), atol=1e-5)


def test_one_step_is_deterministic_and_four_steps_are_stochastic(dng_factory, tmp_path):
    path = save_core(tiny_core(), IRSDEScheduler(lam=1.0), tmp_path / "core.safetensors")
    weights, raw = load_core(path), read_raw(dng_factory())
    one = [restored_raw(weights, raw, steps=1, seed=s) for s in (0, 1)]
    four = [restored_raw(weights, raw, steps=4, seed=s) for s in (0, 1)]
    assert torch.equal(one[0], one[1])
    assert not torch.equal(four[0], four[1])


def test_mono_through_the_core_is_exactly_grey(dng_factory, tmp_path):
    from rawrestore.pipeline import Developer, DevelopOptions

    path = save_core(tiny_core(), IRSDEScheduler(lam=1.0), tmp_path / "core.safetensors")
    image = Developer(DevelopOptions(weights=str(path), style="mono")).develop(read_raw(dng_factory()))
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])


def test_render_is_the_classical_isp_on_the_restored_raw(dng_factory):
    """On a clean file, the ISP over a perfect restored RAW (the classical demosaic) is the
    classical development: colour comes from the file's matrix, exactly."""
    from rawrestore.isp import develop_classical, develop_linear

    raw = read_raw(dng_factory())
    wb = torch.as_tensor(np.asarray(raw.wb, dtype=np.float32))[:, None, None]
    cam_from_srgb = torch.as_tensor(np.linalg.inv(raw.srgb_from_cam), dtype=torch.float32)
    native = torch.einsum("ij,jhw->ihw", cam_from_srgb, develop_linear(raw)) / wb
    difference = (render(native, raw) - develop_classical(raw)).abs()
    # The classical ISP clips highlights before its demosaic, the render after: only the few
    # pixels at the clipped white patch's edges may differ.
    assert float(difference.mean()) < 1e-4 and float((difference > 2e-3).float().mean()) < 0.005


def test_weights_refuse_nan_and_out_of_bound_configs(tmp_path):
    from safetensors.torch import save_file

    model = tiny_core()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    first = next(iter(state))
    state[first] = torch.full_like(state[first], float("nan"))
    header = {"format": "rawrestore-core", **model.config.to_header(), "sde.lambda": "1.0", "sde.t_start": "70"}
    save_file(state, str(tmp_path / "nan.safetensors"), metadata=header)
    with pytest.raises(ValueError, match="NaN"):
        load_core(tmp_path / "nan.safetensors")
    save_file(model.state_dict(), str(tmp_path / "huge.safetensors"),
              metadata={**header, "core.decoder_width": "1000000"})
    with pytest.raises(ValueError, match="out of bounds"):
        load_core(tmp_path / "huge.safetensors")


def test_model_inputs_give_the_noise_std_of_each_latent_value():
    """On a flat grey patch with known Poisson-Gaussian noise, the latent's spread matches the
    std model_inputs reports for it."""
    config = CoreConfig()
    a, b, level = 2e-4, 1e-5, 0.2
    clean = torch.full((1, 4, 64, 64), level)
    noisy = clean + torch.randn(clean.shape, generator=torch.Generator().manual_seed(0)) * (a * level + b) ** 0.5
    wb = torch.ones(1, 3)
    mu, std = model_inputs(noisy, torch.tensor([[a, b]]), wb, config)
    measured = (mu - latent_from_packed(clean, config)).std()
    assert float(std.mean()) == pytest.approx(float(measured), rel=0.05)


def test_half_precision_path_runs_on_the_cpu(dng_factory, tmp_path):
    """What --device cuda runs (float16), on the CPU: finite output of the right shape."""
    path = save_core(tiny_core(), IRSDEScheduler(lam=1.0), tmp_path / "core.safetensors")
    weights = load_core(path)
    weights.model.to(torch.float16)
    native = restored_raw(weights, read_raw(dng_factory()), steps=2, dtype=torch.float16)
    assert torch.isfinite(native).all()


@pytest.fixture
def photo_root(tmp_path: Path) -> Path:
    """skimage's bundled photos, named so that both the training and the validation split get some."""
    data = pytest.importorskip("skimage.data")
    import imageio.v3 as iio

    root = tmp_path / "data"
    (root / "photos").mkdir(parents=True)
    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    names, i = [], 0
    while len(names) < len(photos):
        name = f"photo{i}.png"
        is_val = int(hashlib.sha1(name.encode()).hexdigest(), 16) % 6 == 0
        if is_val == (len(names) == 0):  # the first one a validation photo, the others training ones
            names.append(name)
        i += 1
    for name, photo in zip(names, photos, strict=True):
        iio.imwrite(root / "photos" / name, photo[:160, :160])
    return root


def test_the_recipe_trains_resumes_and_exports(photo_root: Path, tmp_path: Path):
    """The recipe's first steps on a tiny model: both stages run, a rerun resumes from the
    checkpoint instead of starting over, and the exported weights' config is the recipe's model."""
    recipe_path = tmp_path / "tiny.toml"
    recipe_path.write_text('name = "tiny"\nseed = 1\n[data]\nphotos = ["photos"]\n[synthesis]\ncrop = 64\n'
                           + TINY_MODEL + '[sde]\nlambda = 1.0\nt_start = 70\n'
                           '[[stages]]\nkind = "decoder"\nsamples = 8\nbatch = 4\nwarmup_samples = 4\n'
                           '[[stages]]\nkind = "restorer"\nsamples = 8\nbatch = 4\nwarmup_samples = 4\n')
    recipe = Recipe.load(recipe_path)
    run_dir = tmp_path / "run"
    lines: list[str] = []
    train(recipe, photo_root, run_dir, lines.append)
    assert any("stage 1 done" in line for line in lines)
    _, meta = Checkpoint(run_dir).load()
    assert meta == {"recipe": recipe.digest, "stage": 2, "samples": 0}
    again: list[str] = []
    train(recipe, photo_root, run_dir, again.append)
    assert any("resumed at stage 2" in line for line in again) and not any("done" in line for line in again)
    weights = load_core(export(recipe, run_dir, tmp_path / "w.safetensors", {}))
    assert weights.model.config == recipe.model
    assert weights.scheduler.lam == 1.0 and weights.info["recipe_digest"] == recipe.digest
