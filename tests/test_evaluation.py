"""The frozen benchmark (rawrestore.evaluation): each metric on cases whose answer is known, the set's
definition (hash, optics, cameras, noise), and the benchmark end to end on a tiny set: two skimage photos,
two levels, stand-in held-out cameras, the classical methods and a tiny untrained core."""
from __future__ import annotations

import importlib.util
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from rawrestore.dataset import split_of
from rawrestore.evaluation import bench, metrics
from rawrestore.evaluation.bench_set import (
    DEFAULT_CAMCONST,
    FROZEN,
    LEVELS,
    HeldOutCamera,
    SetConfig,
    define_set,
)
from rawrestore.training.cameras import held_out


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    from skimage import data

    return data.astronaut()[64:256, 128:320].astype(np.float32) / 255.0


def noisy(image: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    return np.clip(image + np.random.default_rng(seed).normal(0, sigma, image.shape), 0, 1).astype(np.float32)


def test_identical_images_score_perfectly(photo):
    scores = metrics.score(photo, photo)
    assert scores["psnr"] >= 100 and scores["psnr_tm"] >= 100
    assert scores["swd"] == 0 and scores["flat_noise"] == 0 and scores["gmsd"] == 0 and scores["de00"] == 0
    assert scores["hf_ratio"] == pytest.approx(1) and scores["ssim"] == pytest.approx(1)


def test_tone_matching_forgives_a_base_curve_and_never_scores_below_plain_psnr(photo):
    from scipy.ndimage import gaussian_filter

    curved = photo ** 1.4
    assert metrics.tone_matched_psnr(curved, photo) > metrics.psnr(curved, photo) + 10
    for output in (curved, noisy(photo, 0.05), gaussian_filter(photo, (1.5, 1.5, 0)), 0.8 * photo + 0.1):
        assert metrics.tone_matched_psnr(output, photo) >= metrics.psnr(output, photo) - 1e-9


def test_flat_patch_noise_grows_with_noise(photo):
    light, heavy = (metrics.flat_patch_noise(noisy(photo, s), photo) for s in (0.01, 0.04))
    assert 0 < light < heavy
    assert heavy == pytest.approx(0.04 * 255, rel=0.25)  # the RMS of the noise itself, in 8-bit levels


def test_texture_scores_tell_smoothing_from_noise(photo):
    from scipy.ndimage import gaussian_filter

    smooth = gaussian_filter(photo, (1.5, 1.5, 0))
    assert metrics.hf_ratio(smooth, photo) < 0.5 < 1.5 < metrics.hf_ratio(noisy(photo, 0.05), photo)
    swd = [metrics.sliced_wasserstein(noisy(photo, s), photo) for s in (0.01, 0.05)]
    assert 0 < swd[0] < swd[1]
    assert metrics.sliced_wasserstein(smooth, photo) > 0
    assert metrics.sliced_wasserstein(smooth, photo, seed=3) == metrics.sliced_wasserstein(smooth, photo, seed=3)


def test_a_profile_is_interpolated_between_its_isos_and_scaled_as_a_gain_beyond():
    camera = HeldOutCamera("x", ((1, 0, 0), (0, 1, 0), (0, 0, 1)), ((100.0, 1e-6, 1e-8), (400.0, 4e-6, 4e-8)))
    assert camera.noise_at(100) == pytest.approx((1e-6, 1e-8))
    assert camera.noise_at(200) == pytest.approx((2e-6, 2e-8))  # log-log between the two
    assert camera.noise_at(1600) == pytest.approx((16e-6, 64e-8))  # shot variance x ISO, read x ISO^2
    assert camera.noise_at(50) == pytest.approx((0.5e-6, 1e-8))


def write_set_sources(root: Path) -> SetConfig:
    """Two validation-split photos from skimage and two stand-in held-out cameras (a matrix and a
    darktable-style noise profile each), so the set needs nothing outside the test."""
    import imageio.v3 as iio
    from skimage import data

    photos = root / "photos"
    photos.mkdir()
    names = [n for n in (f"photo{i}.png" for i in range(40)) if split_of(Path(n)) == "val"][:2]
    for name, image in zip(names, (data.astronaut()[100:260, 150:310], data.coffee()[100:260, 200:360]),
                           strict=True):
        iio.imwrite(photos / name, image)
    cameras = [f"Test Camera {i}" for i in range(100) if held_out(f"Test Camera {i}")][:2]
    (root / "camconst.json").write_text(json.dumps({"camera_constants": [
        {"make_model": name, "dcraw_matrix": [6461, -907, -882, -4300, 12184, 2378, -819, 1944, 5931]}
        for name in cameras]}))
    (root / "noise.json").write_text(json.dumps({"noiseprofiles": [{"maker": "Test", "models": [
        {"model": name.split(" ", 1)[1], "profiles": [
            {"iso": iso, "a": [0, 2e-6 * iso / 100, 0], "b": [0, 1e-8 * (iso / 100) ** 1.5, 0]}
            for iso in (100, 400, 1600, 6400)]} for name in cameras]}]}))
    return SetConfig(photos=(photos,), camconst=root / "camconst.json", noise_profiles=root / "noise.json",
                     size=128)


def test_the_set_definition_is_seeded_balanced_and_path_independent(tmp_path):
    config = write_set_sources(tmp_path)
    first = define_set(config)
    assert [image.sharp for image in first.images] == [True, False]
    assert {image.camera for image in first.images} == {"Test Camera 2", "Test Camera 7"}
    assert set(first.images[0].noise) == set(LEVELS)
    moved = tmp_path / "elsewhere"
    shutil.copytree(config.photos[0], moved)
    assert define_set(replace(config, photos=(moved,))).hash == first.hash
    subset = define_set(replace(config, images=1))
    assert subset.images[0].definition() == first.images[0].definition()
    assert define_set(replace(config, seed=1)).hash != first.hash


def test_the_default_set_is_the_frozen_one(shared_dir):
    if not DEFAULT_CAMCONST.exists():
        pytest.skip(f"{DEFAULT_CAMCONST} not present (Debian's rawtherapee-data)")
    default = define_set(SetConfig())
    assert default.hash in FROZEN
    assert sum(image.sharp for image in default.images) == (len(default.images) + 1) // 2
    assert len({image.camera for image in default.images}) == len(default.images)


@pytest.fixture
def core_weights(tmp_path) -> Path:
    """A tiny untrained core (its restorer and decoder heads start as identities): the harness runs it
    as it would the trained weights."""
    import torch

    from rawrestore.models.core import CoreConfig, CoreModel
    from rawrestore.restore import save_core
    from rawrestore.schedulers.irsde import IRSDEScheduler

    torch.manual_seed(0)
    config = CoreConfig(decoder_width=8, decoder_blocks=1, decoder_hidden=8, decoder_half_width=4,
                        restorer_widths=(8, 8, 8), restorer_time_dim=8)
    return save_core(CoreModel(config), IRSDEScheduler(), tmp_path / "core.safetensors")


def test_a_tiny_benchmark_end_to_end(tmp_path, core_weights, capsys):
    config = write_set_sources(tmp_path)
    work, docs = tmp_path / "work", tmp_path / "docs" / "benchmark.md"
    args = ["--photos", str(config.photos[0]), "--camconst", str(config.camconst), "--noise-profiles",
            str(config.noise_profiles), "--workdir", str(work), "--size", "128", "--levels", "iso100", "iso25600"]
    assert bench.main([*args, "--methods", "classical", "classical+nlm", "rawtherapee", "core", "--steps", "1", "2",
                       "--core-weights", str(core_weights), "--seed-mean", "2", "--docs", str(docs)]) == 0
    (folder,) = work.iterdir()
    assert capsys.readouterr().out.rstrip().endswith(f"set {folder.name}")
    assert json.loads((folder / "set.json").read_text())["hash"] == folder.name
    report = json.loads((folder / "results.json").read_text())
    results = {r["name"]: r for r in report["results"]}
    classical = results["classical"]["levels"]
    assert set(classical) == {"iso100", "iso25600"} and len(classical["iso100"]["images"]) == 2
    assert {"psnr", "psnr_tm", "ssim", "de00", "gmsd", "hf_ratio", "flat_noise", "swd"} <= set(
        classical["iso100"]["mean"])
    assert classical["iso25600"]["mean"]["flat_noise"] > classical["iso100"]["mean"]["flat_noise"]
    assert classical["iso25600"]["mean"]["psnr_tm"] < classical["iso100"]["mean"]["psnr_tm"]
    if importlib.util.find_spec("cv2") is not None:
        nlm = results["classical+nlm"]["levels"]["iso25600"]["mean"]["psnr_tm"]
        assert nlm > classical["iso25600"]["mean"]["psnr_tm"]
    if shutil.which("rawtherapee-cli") is None:
        assert results["rawtherapee"]["skipped"] == "rawtherapee-cli not on PATH"
    if metrics.piq_module()[0] is None:
        assert metrics.PIQ_INSTALL in report["header"]["piq"]
    for name in ("core (steps=1)", "core (steps=2)", "core (mean of 2 seeds, steps=4)"):
        assert set(results[name]["levels"]) == {"iso100", "iso25600"}, results[name].get("skipped")
    tables = (folder / "results.md").read_text()
    assert "### Perception-distortion, core: by step count" in tables
    assert "core (mean of 2 seeds, steps=4) minus --steps 1" in tables
    page = docs.read_text()
    assert "## The set is frozen" in page and f"set `{folder.name}`" in page
    assert "python -m rawrestore.evaluation.bench --photos" in page

    # The set is made once: a second run reuses its files, and finds the same pixels.
    dng = next((folder / "dng" / "iso100").iterdir())
    written = dng.stat().st_mtime_ns
    assert bench.main([*args, "--set-only"]) == 0
    assert dng.stat().st_mtime_ns == written
    assert capsys.readouterr().err.count(", ".join(f"{k} {v}" for k, v in report["header"]["content"].items())) == 1
