"""The photographer's controls: --wb (colour only, the model's input untouched) and --strength /
--chroma-strength (the classical grain kept on demand; 0 is exactly --classical)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_dng, synthetic_scene

from rawrestore import pipeline
from rawrestore.isp import srgb_encode
from rawrestore.noise import eld_noise
from rawrestore.pipeline import Developer, DevelopOptions
from rawrestore.rawio import RawImage, read_raw
from rawrestore.unprocess import random_camera, synthesize, write_synthetic_dng
from rawrestore.whitebalance import ILLUMINANTS, parse_white_balance, planckian_xy

D65_XY = (0.31271, 0.32902)
GREYS = [(2, col) for col in range(1, 5)]  # mid-grey patches of synthetic_scene (0.6 to 0.09), 32 px each


@pytest.fixture(scope="module")
def noisy(tmp_path_factory) -> RawImage:
    """The flat patches of synthetic_scene at ISO 12800 (Canon EOS 5D IV noise), through a DNG so
    that the file's daylight white balance is there, as for a camera's file."""
    photo = srgb_encode(torch.tensor(synthetic_scene(), dtype=torch.float32).permute(2, 0, 1))
    cam = random_camera(np.random.default_rng(5), cfa="RGGB")
    cam.tone, cam.noise = False, eld_noise("CanonEOS5D4", 12800)
    raw = synthesize(photo, cam, torch.Generator().manual_seed(5))
    return read_raw(write_synthetic_dng(tmp_path_factory.mktemp("noisy") / "noisy.dng", raw, cam))


@pytest.fixture(scope="module")
def model_available() -> None:
    from rawrestore.weights import WeightsError, load_weights

    try:
        load_weights()
    except WeightsError as err:
        pytest.skip(f"no model weights: {err}")


def luma(image: torch.Tensor) -> torch.Tensor:
    return torch.einsum("c,chw->hw", torch.tensor([0.2126, 0.7152, 0.0722]), image)


def flat_noise(image: torch.Tensor) -> tuple[float, float]:
    """(luma, chroma) standard deviation inside the grey patches' inner 16 x 16 pixels."""
    lumas, chromas = [], []
    for row, col in GREYS:
        patch = image[:, row * 32 + 8:row * 32 + 24, col * 32 + 8:col * 32 + 24]
        lumas.append(float(luma(patch).std()))
        chromas.append(float((patch - luma(patch)).std(dim=(1, 2)).mean()))
    return float(np.mean(lumas)), float(np.mean(chromas))


# --- white balance ----------------------------------------------------------------------------

def test_illuminants_go_through_the_files_matrices(tmp_path):
    raw = read_raw(make_dng(tmp_path / "d65.dng"))  # made with multipliers that make D65 white neutral
    np.testing.assert_allclose(parse_white_balance("camera").multipliers(raw), raw.wb)
    from rawrestore.whitebalance import multipliers_for

    np.testing.assert_allclose(multipliers_for(raw, D65_XY), raw.wb, rtol=2e-3)
    # Warmer light, less red and more blue to make it neutral; in order of temperature.
    order = [parse_white_balance(spec).multipliers(raw) for spec in ("2500", "tungsten", "4000", "daylight", "9000")]
    ratios = [blue / red for red, _, blue in order]
    assert ratios == sorted(ratios, reverse=True)
    assert planckian_xy(2856) == pytest.approx(ILLUMINANTS["tungsten"], abs=2e-3)  # illuminant A is Planckian


def test_grey_world_makes_a_grey_scene_neutral(tmp_path):
    raw = read_raw(make_dng(tmp_path / "d65.dng"))
    raw.mosaic = raw.mosaic.copy()
    scene = np.array([["RGB".index(c) for c in raw.cfa]]).reshape(2, 2)
    # A grey card shot under a light that needs multipliers (2, 1, 1.6): its camera values are their inverse.
    level = np.array([0.5, 1.0, 0.625])[np.tile(scene, (64, 96))] * 0.4
    raw.mosaic = (raw.black[0, 0] + level * (raw.white - raw.black[0, 0])).astype(np.float32)
    np.testing.assert_allclose(parse_white_balance("auto").multipliers(raw), [2.0, 1.0, 1.6], rtol=1e-4)


def test_classical_wb_changes_the_colour_of_grey(tmp_path):
    raw = read_raw(make_dng(tmp_path / "d65.dng"))
    shot = Developer(DevelopOptions(classical=True)).develop(raw)
    tungsten = Developer(DevelopOptions(classical=True, wb="tungsten")).develop(raw)
    grey = (slice(None), slice(64 + 8, 64 + 24), slice(32 + 8, 32 + 24))  # the 0.6 grey patch
    red, green, blue = shot[grey].mean(dim=(1, 2))
    assert abs(red - blue) < 0.01 and abs(red - green) < 0.01  # as shot (D65): neutral
    red, _, blue = tungsten[grey].mean(dim=(1, 2))
    assert blue > red + 0.1  # a daylight scene balanced for tungsten turns blue


def test_wb_daylight_changes_colour_and_nothing_else(noisy, model_available, monkeypatch):
    seen = []
    develop_tiled = pipeline.develop_tiled

    def spy(bundle, x, noise_std, *args):
        seen.append((x.clone(), noise_std.clone()))
        return develop_tiled(bundle, x, noise_std, *args)

    monkeypatch.setattr(pipeline, "develop_tiled", spy)
    shot = Developer(DevelopOptions(auto_exposure=False)).develop_frame(noisy)
    daylight = Developer(DevelopOptions(auto_exposure=False, wb="daylight")).develop_frame(noisy)
    (x_shot, std_shot), (x_daylight, std_daylight) = seen
    assert torch.equal(x_shot, x_daylight) and torch.equal(std_shot, std_daylight)  # the model's input
    assert daylight.exposure_ev == shot.exposure_ev
    # The colour changed as the multipliers did (red against blue) ...
    multipliers = parse_white_balance("daylight").multipliers(noisy) / noisy.wb
    red_blue = [float(image[0].mean() / image[2].mean()) for image in (shot.image, daylight.image)]
    assert (red_blue[1] - red_blue[0]) * (multipliers[0] - multipliers[2]) > 0
    assert abs(red_blue[1] - red_blue[0]) > 0.02
    # ... and the picture did not: the same luminance structure, the same noise left.
    assert np.corrcoef(luma(shot.image).flatten(), luma(daylight.image).flatten())[0, 1] > 0.99
    assert flat_noise(daylight.image)[0] == pytest.approx(flat_noise(shot.image)[0], rel=0.2)


# --- strength ---------------------------------------------------------------------------------

@pytest.mark.parametrize("options", [{}, {"style": "vivid", "wb": "daylight", "exposure_ev": 0.7}])
def test_strength_zero_is_exactly_classical(noisy, model_available, options):
    classical = Developer(DevelopOptions(classical=True, **options)).develop(noisy)
    blended = Developer(DevelopOptions(strength=0.0, **options)).develop(noisy)
    assert torch.equal(blended, classical)


def test_residual_noise_follows_strength_and_chroma_strength(noisy, model_available):
    def noise(strength: float, chroma: float | None = None) -> tuple[float, float]:
        options = DevelopOptions(auto_exposure=False, strength=strength, chroma_strength=chroma)
        return flat_noise(Developer(options).develop(noisy))

    by_strength = [noise(s) for s in (0.0, 0.5, 1.0)]
    assert by_strength[0][0] > by_strength[1][0] > by_strength[2][0]
    assert by_strength[0][1] > by_strength[1][1] > by_strength[2][1]
    by_chroma = [noise(1.0, c) for c in (0.0, 0.5, 1.0)]
    assert by_chroma[0][1] > by_chroma[1][1] > by_chroma[2][1]
    # Chroma strength leaves the luminance noise alone.
    assert max(n[0] for n in by_chroma) < min(n[0] for n in by_chroma) * 1.1


def test_strength_zero_through_the_core_is_the_classical_development(noisy, tmp_path):
    from test_core import tiny_core

    from rawrestore.restore import save_core
    from rawrestore.schedulers.irsde import IRSDEScheduler

    weights = str(save_core(tiny_core(), IRSDEScheduler(lam=1.0), tmp_path / "core.safetensors"))
    options = {"wb": "tungsten", "exposure_ev": 0.5}
    classical = Developer(DevelopOptions(classical=True, **options)).develop(noisy)
    blended = Developer(DevelopOptions(weights=weights, strength=0.0, **options)).develop(noisy)
    restored = Developer(DevelopOptions(weights=weights, **options)).develop(noisy)
    # Nearly the same: the render clips the balanced camera RGB to [0, the smallest multiplier]
    # after the demosaic, the classical ISP clips the mosaic before it and the sRGB after the
    # matrix, which differs on dark noisy pixels (below zero in camera space) and clipped edges.
    assert float((blended - classical).abs().mean()) < 1e-3 < 0.01 < float((restored - classical).abs().mean())
