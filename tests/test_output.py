"""rawrestore.output: pixels, EXIF and ICC read back by independent readers; atomic writes."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from PIL.ExifTags import IFD, Base

from conftest import assert_srgb_icc
from rawrestore import __version__
from rawrestore.output import OutputError, srgb_icc_profile, to_pixels, write_image

META = dict(make="TestMake", model="TestCam 1", lens="EF 35mm f/2", datetime="2024:05:17 09:30:05", iso=400.0,
            exposure_time=1 / 250, f_number=2.8, focal_length=35.0)


@pytest.fixture
def image() -> torch.Tensor:
    # A smooth ramp plus noise: exercises every filter row and both bytes of 16-bit samples.
    generator = torch.Generator().manual_seed(0)
    ramp = torch.linspace(0, 1, 48)[None, None, :].expand(3, 32, 48)
    return (0.8 * ramp + 0.2 * torch.rand(3, 32, 48, generator=generator)).clamp(0, 1)


def read_png_rgb16(path: Path) -> tuple[dict, np.ndarray]:
    """Chunks and (H, W, 3) uint16 pixels of a 16-bit RGB PNG (Pillow reads those as 8-bit)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, offset, idat = {}, 8, b""
    while offset < len(data):
        length, kind = struct.unpack(">I4s", data[offset:offset + 8])
        body = data[offset + 8:offset + 8 + length]
        assert zlib.crc32(kind + body) == struct.unpack(">I", data[offset + 8 + length:offset + 12 + length])[0]
        chunks[kind] = body
        idat += body if kind == b"IDAT" else b""
        offset += 12 + length
    width, height, depth, colour_type = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (depth, colour_type) == (16, 2)
    rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(height, 1 + width * 6)
    filters, raw = rows[:, 0], rows[:, 1:]
    assert set(filters) <= {0, 2}  # this reader undoes 'None' and 'Up' only
    out = np.zeros_like(raw)
    for y in range(height):
        out[y] = raw[y] + (out[y - 1] if y and filters[y] == 2 else 0)
    return chunks, out.view(">u2").reshape(height, width, 3).astype(np.uint16)


def test_jpeg_carries_exif_icc_and_upright_orientation(tmp_path, image):
    path = write_image(tmp_path / "out.jpg", image, "jpeg", 8, 95, META)
    with Image.open(path) as jpeg:
        assert jpeg.format == "JPEG" and jpeg.size == (48, 32)
        assert jpeg.info["icc_profile"] == srgb_icc_profile()
        exif = jpeg.getexif()
        pixels = np.asarray(jpeg)
    assert exif[Base.Make] == "TestMake" and exif[Base.Model] == "TestCam 1"
    assert exif[Base.Orientation] == 1
    assert exif[Base.Software] == f"rawrestore {__version__}"
    assert exif[Base.DateTime] == "2024:05:17 09:30:05"
    sub = exif.get_ifd(IFD.Exif)
    assert sub[Base.ISOSpeedRatings] == 400
    assert float(sub[Base.ExposureTime]) == pytest.approx(1 / 250)
    assert float(sub[Base.FNumber]) == pytest.approx(2.8)
    assert float(sub[Base.FocalLength]) == pytest.approx(35.0)
    assert sub[Base.DateTimeOriginal] == "2024:05:17 09:30:05"
    assert sub[Base.LensModel] == "EF 35mm f/2"
    # Lossy and chroma-subsampled: only the average colour must survive.
    np.testing.assert_allclose(pixels.mean(axis=(0, 1)), to_pixels(image, 8).mean(axis=(0, 1)), atol=2)


def test_missing_exif_fields_are_left_out(tmp_path, image):
    path = write_image(tmp_path / "out.jpg", image, exif={"make": None, "iso": None, "datetime": "bogus"})
    with Image.open(path) as jpeg:
        exif = jpeg.getexif()
    assert Base.Make not in exif and Base.DateTime not in exif
    assert Base.ISOSpeedRatings not in exif.get_ifd(IFD.Exif)


@pytest.mark.parametrize("bits", [8, 16])
def test_tiff_is_exact_with_icc_and_tags(tmp_path, image, bits):
    path = write_image(tmp_path / "out.tif", image, "tiff", bits, exif=META)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        pixels = page.asarray()
        tags = {tag.name: tag.value for tag in page.tags.values()}
    assert pixels.dtype == (np.uint16 if bits == 16 else np.uint8)
    np.testing.assert_array_equal(pixels, to_pixels(image, bits))
    assert tags["InterColorProfile"] == srgb_icc_profile()
    assert tags["Make"] == "TestMake" and tags["Model"] == "TestCam 1"
    assert tags["DateTime"] == "2024:05:17 09:30:05"
    assert tags["Software"] == f"rawrestore {__version__}"
    assert tags["Compression"] == 1
    # The EXIF the JPEG keeps, in an EXIF IFD as photo software expects it.
    assert tags["ExifTag"] == {"ExposureTime": (1, 250), "FNumber": (14, 5), "ISOSpeedRatings": 400,
                               "ExifVersion": "0232", "DateTimeOriginal": "2024:05:17 09:30:05",
                               "FocalLength": (35, 1), "LensModel": "EF 35mm f/2"}
    with Image.open(path) as reread:  # an independent reader finds the same
        assert reread.getexif().get_ifd(IFD.Exif)[Base.LensModel] == "EF 35mm f/2"


def test_tiff_without_exif_has_no_exif_ifd(tmp_path, image):
    with tifffile.TiffFile(write_image(tmp_path / "out.tif", image, "tiff", 8, exif={"make": "TestMake"})) as tif:
        codes = {tag.code for tag in tif.pages[0].tags.values()}
    assert 271 in codes and not codes & {34664, 34665}  # Make; no EXIF IFD, no placeholder left


def test_png16_is_exact_with_icc_and_exif(tmp_path, image):
    path = write_image(tmp_path / "out.png", image, "png", 16, exif=META)
    chunks, pixels = read_png_rgb16(path)
    np.testing.assert_array_equal(pixels, to_pixels(image, 16))
    assert zlib.decompress(chunks[b"iCCP"].split(b"\x00", 1)[1][1:]) == srgb_icc_profile()
    with Image.open(path) as png:  # an independent decoder agrees on the high bytes and metadata
        assert png.info["icc_profile"] == srgb_icc_profile()
        assert png.getexif()[Base.Make] == "TestMake"
        np.testing.assert_array_equal(np.asarray(png.convert("RGB")), (pixels >> 8).astype(np.uint8))


def test_png8_reads_back_exactly_with_pillow(tmp_path, image):
    path = write_image(tmp_path / "out.png", image, "png", 8)
    with Image.open(path) as png:
        assert png.mode == "RGB" and png.info["icc_profile"] == srgb_icc_profile()
        np.testing.assert_array_equal(np.asarray(png), to_pixels(image, 8))


def test_icc_profile_is_srgb():
    assert_srgb_icc(srgb_icc_profile())


def test_jpeg_cannot_be_16_bit(tmp_path, image):
    with pytest.raises(OutputError, match="8-bit"):
        write_image(tmp_path / "out.jpg", image, "jpeg", 16)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_no_temp_file_and_keeps_the_old_output(tmp_path, image):
    existing = tmp_path / "out.jpg"
    existing.write_bytes(b"previous result")
    with pytest.raises(ValueError):
        write_image(existing, image[:, :0], "jpeg")  # an empty image fails inside the encoder
    blocked = tmp_path / "folder.png"
    blocked.mkdir()
    with pytest.raises(OSError):
        write_image(blocked, image, "png")  # written in full, then the rename fails
    assert existing.read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder.png", "out.jpg"]
