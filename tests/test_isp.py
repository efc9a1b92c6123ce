"""The classical ISP against LibRaw on real camera files, and across the four Bayer layouts."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import CAM_FROM_XYZ, PATCHES, make_dng

from rawrestore.conditioning import render_condition, render_detail, upsample_condition
from rawrestore.isp import (
    binned_linear,
    demosaic,
    demosaic_in_strips,
    develop_classical,
    normalized_rggb,
    pack,
    to_rggb,
    unpack,
)
from rawrestore.rawio import RawImage, read_raw


def libraw_reference(path) -> np.ndarray:
    """rawpy with camera WB, no auto-brightening, sRGB primaries and the sRGB curve; the metadata
    white level as is (adjust_maximum_thr=0: LibRaw otherwise rescales white from the data)."""
    import rawpy

    with rawpy.imread(str(path)) as raw:
        out = raw.postprocess(use_camera_wb=True, no_auto_bright=True, output_color=rawpy.ColorSpace.sRGB,
                              output_bps=16, gamma=(2.4, 12.92), adjust_maximum_thr=0.0)
    return out.astype(np.float32) / 65535.0


def median_delta_e(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.color import deltaE_ciede2000, rgb2lab

    return float(np.median(deltaE_ciede2000(rgb2lab(a), rgb2lab(b))))


def real_bayer_files(shared_dir):
    raw_dir = shared_dir / "data" / "raw"
    return [raw_dir / "canon_eos_kiss_x4_magiclantern_colorchart.dng",
            *sorted((raw_dir / "derived_cfa_phases").glob("*.dng"))]


def test_colour_matches_libraw_on_real_files(shared_dir):
    for path in real_bayer_files(shared_dir):
        ours = develop_classical(read_raw(path), auto_exposure=False).permute(1, 2, 0).numpy()
        reference = libraw_reference(path)
        assert ours.shape == reference.shape
        assert median_delta_e(ours, reference) <= 2.0, path.name


def test_the_four_real_cfa_phases_give_the_same_picture(shared_dir):
    files = real_bayer_files(shared_dir)[1:]
    layouts = {read_raw(p).cfa for p in files}
    assert layouts == {"RGGB", "BGGR", "GRBG", "GBRG"}
    images = [develop_classical(read_raw(p), auto_exposure=False) for p in files]
    # Each crop starts one pixel further: compare the common interior, shifted back.
    offsets = {"rggb": (0, 0), "grbg": (0, 1), "gbrg": (1, 0), "bggr": (1, 1)}
    ref = None
    for path, img in zip(files, images):
        dy, dx = offsets[path.stem.rsplit("_", 1)[1]]
        inner = img[:, 8 - dy:-8 - dy, 8 - dx:-8 - dx]
        ref = inner if ref is None else ref
        assert float((inner - ref).abs().mean()) < 2e-3


@pytest.mark.parametrize("cfa", ["RGGB", "BGGR", "GRBG", "GBRG"])
def test_known_patches_come_out_right_in_every_layout(tmp_path, cfa):
    from rawrestore.isp import srgb_encode
    from rawrestore.rawio import XYZ_FROM_SRGB

    image = develop_classical(read_raw(make_dng(tmp_path / f"{cfa}.dng", cfa)), auto_exposure=False)
    # make_dng exposes the scene so that the camera's brightest channel on white sits at 0.9 of
    # clipping; after white balance (green = 1) white is neutral[G] / max(neutral) * 0.9.
    neutral = CAM_FROM_XYZ @ XYZ_FROM_SRGB @ np.ones(3)
    expected = srgb_encode(torch.tensor(PATCHES * 0.9 * neutral[1] / neutral.max(), dtype=torch.float32))
    centres = image[:, 16::32, 16::32].permute(1, 2, 0).reshape(-1, 3)  # patch centres, 32 px patches
    torch.testing.assert_close(centres, expected, atol=2e-3, rtol=0)


def test_pack_unpack_and_layout_unification_are_lossless():
    mosaic = torch.rand(10, 14)
    torch.testing.assert_close(unpack(pack(mosaic)), mosaic)
    for cfa in ("RGGB", "BGGR", "GRBG", "GBRG"):
        padded, (top, left) = to_rggb(mosaic, cfa)
        assert padded.shape[0] % 2 == 0 and padded.shape[1] % 2 == 0
        torch.testing.assert_close(padded[top:top + 10, left:left + 14], mosaic)


def test_normalisation_takes_each_sites_own_black_level():
    black = np.array([[512, 500], [520, 508]], np.float32)
    mosaic = np.array([[512, 500, 2000], [4000, 16383, 520], [1000, 1100, 1200]], np.float32)  # odd
    raw = RawImage(cfa="RGGB", mosaic=mosaic, black=black, white=16383.0, wb=np.ones(3),
                   srgb_from_cam=np.eye(3))
    site_black = np.array([[black[y % 2, x % 2] for x in range(3)] for y in range(3)])
    expected = (mosaic - site_black) / (16383 - site_black)
    np.testing.assert_allclose(raw.normalized(), expected, rtol=1e-6)


def test_demosaic_is_exact_on_flat_colour():
    rgb = torch.tensor([0.2, 0.5, 0.7])
    mosaic = torch.empty(16, 16)
    mosaic[0::2, 0::2], mosaic[0::2, 1::2], mosaic[1::2, 0::2], mosaic[1::2, 1::2] = rgb[0], rgb[1], rgb[1], rgb[2]
    torch.testing.assert_close(demosaic(mosaic)[:, 4:-4, 4:-4], rgb[:, None, None].expand(3, 8, 8))


def test_demosaic_follows_edges_on_a_photo():
    # A directional demosaic keeps edges that a fixed-kernel one zips: on this (lens-blurred)
    # photo, bilinear interpolation gives 37.7 dB, Malvar-He-Cutler 42.0 dB, weighted
    # Hamilton-Adams 43.2 dB; ours (RCD) 45.6 dB.
    from skimage import data

    from rawrestore.unprocess import mosaic, optical_blur

    photo = optical_blur(torch.from_numpy(data.astronaut()).permute(2, 0, 1).float() / 255, 0.7)
    error = (demosaic(mosaic(photo, "RGGB")).clamp(0, 1) - photo)[:, 8:-8, 8:-8]
    assert float(10 * torch.log10(1 / error.pow(2).mean())) > 45.3


def test_demosaic_in_strips_is_the_same_demosaic():
    mosaic = torch.rand(70, 52)
    torch.testing.assert_close(demosaic_in_strips(mosaic, rows=16), demosaic(mosaic), rtol=0, atol=0)


def test_condition_plus_detail_is_the_classical_render(tmp_path):
    # The decoder's base with its detail gate fully open: the colour condition (H/4) brought up
    # plus the detail must give back the classical development, in colour and exposure.
    raw = read_raw(make_dng(tmp_path / "patches.dng"))
    packed = pack(normalized_rggb(raw)[0])
    gain = 1.7
    color = render_condition(binned_linear(packed, raw.wb, raw.srgb_from_cam), gain)
    detail = render_detail(packed, color, raw.wb, raw.srgb_from_cam, gain)
    assert detail.shape == (3, *raw.mosaic.shape)
    rebuilt = upsample_condition(color[None])[0] + detail
    classical = develop_classical(raw, gain=gain)
    torch.testing.assert_close(rebuilt, classical, rtol=0, atol=1e-5)


def check_auto_exposure(frame: torch.Tensor) -> None:
    """A normally exposed frame stays near 0 EV, 16x darker it is lifted 3 EV or more, and frames
    1 % apart in brightness (from it down to 64x darker, the whole ramp) get EVs within 0.05."""
    from rawrestore.isp import auto_exposure_ev

    frame = frame[:, ::4, ::4]  # the percentile of fewer pixels: a fast test of the same function
    assert auto_exposure_ev(frame) < 0.25
    assert auto_exposure_ev(frame / 16) >= 3
    evs = [auto_exposure_ev(frame / 1.01 ** k) for k in range(420)]
    assert max(abs(a - b) for a, b in zip(evs, evs[1:], strict=False)) <= 0.05
    assert all(b >= a for a, b in zip(evs, evs[1:], strict=False))  # darker is never lifted less


def test_auto_exposure_is_continuous_and_lifts_dark_frames(tmp_path):
    from rawrestore.isp import exposure_reference

    check_auto_exposure(exposure_reference(read_raw(make_dng(tmp_path / "patches.dng"))))


def test_auto_exposure_on_real_frames_is_continuous(shared_dir):
    from rawrestore.isp import exposure_reference

    # The full chart frame (a 99th percentile of 0.2, dim but normal) was lifted +1.34 EV, its
    # crop (0.47) not at all: now both stay within 0.25 EV of each other.
    raw_dir = shared_dir / "data" / "raw"
    for name in ("canon_eos_kiss_x4_magiclantern_colorchart.dng", "derived_cfa_phases/canon_kissx4_crop_rggb.dng"):
        check_auto_exposure(exposure_reference(read_raw(raw_dir / name)))


def test_exposure_adds_to_the_auto_exposure(tmp_path):
    from rawrestore.isp import exposure_reference, frame_exposure_ev

    frame = exposure_reference(read_raw(make_dng(tmp_path / "dark.dng", exposure=1 / 16)))
    auto = frame_exposure_ev(frame, 0.0, True)
    assert auto > 2
    assert frame_exposure_ev(frame, 1.5, True) == pytest.approx(auto + 1.5)
    assert frame_exposure_ev(frame, -0.5, False) == -0.5


def test_blend_with_zero_strength_is_exactly_the_classical_and_splits_luma_from_chroma():
    from rawrestore.isp import blend_restored

    generator = torch.Generator().manual_seed(0)
    classical, restored = torch.rand(3, 8, 8, generator=generator), torch.rand(3, 8, 8, generator=generator)
    assert torch.equal(blend_restored(restored, classical, 0.0, 0.0), classical)
    torch.testing.assert_close(blend_restored(restored, classical, 1.0, 1.0), restored)
    luma = torch.tensor([0.2126, 0.7152, 0.0722])
    luma_only = blend_restored(restored, classical, 1.0, 0.0)
    # The luminance is the restored one, the chroma (the difference to it) the classical one.
    torch.testing.assert_close(torch.einsum("c,chw->hw", luma, luma_only), torch.einsum("c,chw->hw", luma, restored))
    torch.testing.assert_close(luma_only - luma_only.mul(luma[:, None, None]).sum(0),
                               classical - classical.mul(luma[:, None, None]).sum(0))
