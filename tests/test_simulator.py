"""The RAW simulator against the developer it must invert, the noise model it claims, and LibRaw.

(a) a clean photo unprocessed and developed again by the ISP comes back (colour path alone, then
    through the mosaic and demosaic); (b) simulated noise has the variance the model says, and the
    blind estimator finds it; (c) the synthetic DNGs read back in LibRaw with every tag right.
Uses scikit-image's bundled photos only, so no shared data is needed.
"""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from skimage import data
from skimage.color import deltaE_ciede2000, rgb2lab
from skimage.filters import gaussian

from rawrestore.isp import apply_matrix, develop_linear, pack
from rawrestore.noise import (NoiseParams, add_sensor_noise, darktable_noise, eld_noise, estimate_noise,
                             load_darktable_profiles)
from rawrestore.rawio import read_raw
from rawrestore.unprocess import develop_reference, mosaic, random_camera, synthesize, unprocess, write_synthetic_dng

PHOTOS = {"astronaut": data.astronaut, "chelsea": data.chelsea, "coffee": data.coffee}
LAYOUTS = ("RGGB", "BGGR", "GRBG", "GBRG")


def photo(name: str, blur: float = 0.0, side: int = 224) -> torch.Tensor:
    """(3, side, side) float sRGB in [0, 1] from the photo's centre, optionally Gaussian-blurred
    (smooth, for the demosaic)."""
    img = PHOTOS[name]().astype(np.float64) / 255.0
    top, left = (img.shape[0] - side) // 2, (img.shape[1] - side) // 2
    img = img[top:top + side, left:left + side]
    if blur:
        img = gaussian(img, sigma=blur, channel_axis=2)
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1.0 / torch.mean((a.double() - b.double()) ** 2)))


def median_delta_e(a: torch.Tensor, b: torch.Tensor) -> float:
    lab_a, lab_b = (rgb2lab(x.permute(1, 2, 0).clamp(0, 1).numpy()) for x in (a, b))
    return float(np.median(deltaE_ciede2000(lab_a, lab_b)))


def camera(seed: int, **changes):
    """A random camera with a random brightening to invert (Brooks et al.'s rgb_gain range)."""
    rng = np.random.default_rng(seed)
    cam = random_camera(rng)
    return replace(cam, exposure_gain=float(1 / rng.normal(0.8, 0.1)), **changes)


# --- (a) zero noise: unprocess, then the ISP's colour path, gives the photo back ---------------

@pytest.mark.parametrize("name", PHOTOS)
@pytest.mark.parametrize("tone", [True, False])
def test_colour_path_inverts_unprocess(name, tone):
    srgb = photo(name)
    for seed in range(2):
        cam = camera(seed, tone=tone)
        camera_rgb = unprocess(srgb, cam)
        # The ISP's white balance (isp.white_balance_mosaic), per pixel instead of per CFA site:
        # gains, then the highlight clip at the smallest gain.
        wb = torch.as_tensor(cam.wb, dtype=torch.float32)[:, None, None]
        balanced = (camera_rgb * wb).clamp(0.0, float(cam.wb.min()))
        developed = develop_reference(apply_matrix(balanced, cam.srgb_from_cam), cam)
        assert psnr(developed, srgb) >= 40, (seed, cam)
        assert median_delta_e(developed, srgb) <= 1, (seed, cam)


@pytest.mark.parametrize("name", PHOTOS)
def test_mosaic_and_demosaic_invert_unprocess(name):
    srgb = photo(name, blur=2.0)
    for seed, layout in enumerate(LAYOUTS):
        cam = camera(seed, cfa=layout)
        developed = develop_reference(develop_linear(synthesize(srgb, cam)), cam)
        inner = (slice(None), slice(4, -4), slice(4, -4))  # demosaic reflects at the edges
        assert psnr(developed[inner], srgb[inner]) >= 40, (layout, cam)
        assert median_delta_e(developed[inner], srgb[inner]) <= 1, (layout, cam)


# --- (b) noise: the simulated variance is the model's, and the estimator finds it ----------------

def fit_variance(noise: NoiseParams, levels=(0.0, 0.003, 0.02, 0.08, 0.2, 0.5), side: int = 300
                 ) -> tuple[float, float]:
    """(a, b) of variance = a * mean + b fitted to flat patches of simulated noise, each level
    weighted by its expected relative error (weights 1/variance)."""
    gen = torch.Generator().manual_seed(0)
    means, variances = [], []
    for level in levels:
        noisy = add_sensor_noise(torch.full((side, side), level, dtype=torch.float64), noise, gen)
        means.append(float(noisy.mean()))
        variances.append(float(noisy.var()))
    m, v = np.array(means), np.array(variances)
    weights = 1 / v
    (a, b), *_ = np.linalg.lstsq(np.stack([m, np.ones_like(m)], 1) * weights[:, None], v * weights, rcond=None)
    return float(a), float(b)


@pytest.mark.parametrize("camera_name, iso, ratio", [
    ("CanonEOS70D", 1600, 1.0),
    ("CanonEOS5D4", 6400, 1.0),
    ("NikonD850", 400, 100.0),   # low light: 100x shorter exposure, gain applied back
    ("SonyA7S2", 400, 30.0),
])
@pytest.mark.parametrize("tukey", [False, True])
def test_simulated_noise_recovers_gain_and_read_noise(camera_name, iso, ratio, tukey):
    noise = eld_noise(camera_name, iso, ratio, tukey=tukey)
    w, r = noise.white_range, noise.ratio
    a, b = fit_variance(noise)
    gain = a * w / r                                              # DN per electron
    read_var = b * w ** 2 / r ** 2 - noise.row_sigma ** 2 - 1 / 12  # DN^2 of the short exposure
    expected_read_var = noise.variance(0.0) * w ** 2 / r ** 2 - noise.row_sigma ** 2 - 1 / 12
    assert gain == pytest.approx(noise.K, rel=0.10)
    assert np.sqrt(read_var) == pytest.approx(np.sqrt(expected_read_var), rel=0.10)
    if not tukey:
        assert np.sqrt(read_var) == pytest.approx(noise.read_sigma, rel=0.10)


@pytest.mark.parametrize("iso, ratio", [(1600, 1.0), (6400, 1.0), (400, 30.0)])
def test_estimate_noise_on_flat_ramp(iso, ratio):
    noise = eld_noise("CanonEOS70D", iso, ratio, tukey=False)
    ramp = torch.linspace(0.02, 0.6, 512).repeat(384, 1)   # smooth in x, flat in y
    noisy = add_sensor_noise(ramp, noise, torch.Generator().manual_seed(1))
    a, b = estimate_noise(pack(noisy))
    true_a = noise.K * noise.ratio / noise.white_range
    assert a == pytest.approx(true_a, rel=0.15)
    assert b == pytest.approx(noise.variance(0.0), rel=0.5, abs=true_a * 0.02)


def test_estimate_noise_on_a_small_frame():
    """128 px: too few blocks for many level bins, yet the shot noise must be seen (with one bin,
    whose flattest blocks are its darkest, the std at a bright level read a sixth of the truth)."""
    noise = eld_noise("CanonEOS70D", 6400, tukey=False)
    ramp = torch.linspace(0.02, 0.6, 128).repeat(128, 1)
    a, b = estimate_noise(pack(add_sensor_noise(ramp, noise, torch.Generator().manual_seed(1))))
    true_a = noise.K * noise.ratio / noise.white_range
    assert np.sqrt(a * 0.5 + b) == pytest.approx(np.sqrt(true_a * 0.5 + noise.variance(0.0)), rel=0.25)


# --- (c) synthetic DNGs read back in LibRaw with every tag right --------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
def test_synthetic_dng_round_trips(tmp_path, layout):
    import rawpy

    cam = replace(camera(LAYOUTS.index(layout), cfa=layout), noise=eld_noise("CanonEOS70D", 3200), iso=3200)
    raw = synthesize(photo("chelsea", side=96), cam, torch.Generator().manual_seed(2))
    path = tmp_path / f"{layout}.dng"
    write_synthetic_dng(path, raw, cam)

    with rawpy.imread(str(path)) as libraw:
        pattern = "".join(libraw.color_desc.decode()[i] for i in libraw.raw_pattern.ravel())
        assert pattern == layout
        assert np.all(np.asarray(libraw.black_level_per_channel) == cam.black)
        assert libraw.white_level == cam.white
        camera_wb = np.asarray(libraw.camera_whitebalance[:3], dtype=np.float64)
        np.testing.assert_allclose(camera_wb / camera_wb[1], cam.wb, rtol=1e-5)
        np.testing.assert_array_equal(libraw.raw_image_visible.astype(np.float32), raw.mosaic)

    back = read_raw(path)
    assert back.cfa == layout
    assert back.white == cam.white
    np.testing.assert_array_equal(back.black, np.full((2, 2), cam.black))
    np.testing.assert_allclose(back.wb, cam.wb, rtol=1e-5)
    np.testing.assert_allclose(back.srgb_from_cam, cam.srgb_from_cam, atol=1e-4)
    np.testing.assert_array_equal(back.mosaic, raw.mosaic)
    assert back.exif["iso"] == 3200


@pytest.mark.parametrize("name", PHOTOS)
@pytest.mark.parametrize("iso", [400, 3200])
def test_estimate_noise_is_not_fooled_by_texture(name, iso):
    """Fine texture (fur, hair, a cup's rim) must not read as noise. The estimated std at the
    photo's median level stays within 0.8-1.6x the truth; the photos' own 8-bit grain and
    quantisation are texture at the level of ISO 400 noise, hence the upper bound. (A median
    of the residuals read 1.5-3.7x.)"""
    cam = camera(3, cfa="RGGB", tone=False)
    noise = eld_noise("SonyA7S2", iso, tukey=False).rescaled(cam.white - cam.black)
    clean = mosaic(unprocess(photo(name, blur=0.7, side=300), cam), "RGGB")
    noisy = add_sensor_noise(clean, noise, torch.Generator().manual_seed(4))
    a, b = estimate_noise(pack(noisy))
    level = float(pack(clean)[1:3].median())
    assert 0.8 <= np.sqrt((a * level + b) / noise.variance(level)) <= 1.6


def test_darktable_profiles_with_a_negative_shot_noise_slope_are_left_out(tmp_path):
    profile = {"noiseprofiles": [{"maker": "Nikon", "models": [{"model": "D5100", "profiles": [
        {"iso": 6400, "a": [1e-4, 2e-4, 1e-4], "b": [1e-6, 2e-6, 1e-6]},
        {"iso": 25600, "a": [-0.01, -0.014, -0.01], "b": [1e-3, 1e-3, 1e-3]},
    ]}]}]}
    path = tmp_path / "noiseprofiles.json"
    path.write_text(json.dumps(profile))
    profiles = load_darktable_profiles(path)
    assert profiles == [("Nikon D5100", 6400, 2e-4, 2e-6)]
    assert darktable_noise(*profiles[0][2:], white_range=16383 - 512).K > 0
