"""Writing developed images: JPEG (EXIF + sRGB ICC), 8/16-bit TIFF and 8/16-bit PNG.

Every writer goes through :func:`write_image`, which writes to a hidden temporary file in the
destination folder and renames it into place, so a crash or a full disk never leaves a
half-written picture under the final name (and rerunning a batch can trust what exists).
"""
from __future__ import annotations

import functools
import os
import re
import struct
import uuid
import zlib
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from . import __version__

# Format name -> the extension outputs get by default.
FORMAT_EXTENSIONS = {"jpeg": ".jpg", "tiff": ".tif", "png": ".png"}
# Extensions recognised when a format has to be guessed from an output name.
EXTENSION_FORMATS = {".jpg": "jpeg", ".jpeg": "jpeg", ".tif": "tiff", ".tiff": "tiff", ".png": "png"}

SOFTWARE = f"rawrestore {__version__}"
_EXIF_DATETIME = re.compile(r"^\d{4}:\d{2}:\d{2} \d{2}:\d{2}:\d{2}$")


class OutputError(ValueError):
    """A format/bit-depth combination that cannot be written."""


@functools.cache
def srgb_icc_profile() -> bytes:
    """The sRGB ICC profile embedded in every output, so colour-managed viewers do not guess."""
    from PIL import ImageCms

    profile = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    # LittleCMS stamps the creation time into the header (bytes 24-35; no profile ID to update):
    # pin it, so that developing the same RAW twice gives the same file byte for byte.
    profile[24:36] = struct.pack(">6H", 2024, 1, 1, 0, 0, 0)
    return bytes(profile)


def format_for(path: Path) -> str | None:
    """The output format an extension asks for, or None when it names none."""
    return EXTENSION_FORMATS.get(path.suffix.lower())


def to_pixels(image: torch.Tensor, bits: int) -> np.ndarray:
    """(3, H, W) float in [0, 1] -> (H, W, 3) uint8/uint16, rounded (not truncated)."""
    scale, dtype = (255.0, np.uint8) if bits == 8 else (65535.0, np.uint16)
    # In torch, on the contiguous (3, H, W) layout and on every core: numpy on the transposed view
    # took 1 s of a 24 MP JPEG. Both round half to even. In place after the clamp's copy: each new
    # 24 MP float image is 0.3 GB of fresh memory to fault in.
    levels = image.detach().to(torch.float32).clamp(0.0, 1.0).mul_(scale).round_()
    levels = levels.to(torch.uint8 if bits == 8 else torch.int32).permute(1, 2, 0).contiguous().cpu()
    return levels.numpy().astype(dtype, copy=False)


def write_image(path: str | Path, image: torch.Tensor, fmt: str = "jpeg", bits: int = 8,
                quality: int = 92, exif: dict | None = None) -> Path:
    """Write a display sRGB (3, H, W) tensor in [0, 1] as ``fmt`` and return the path.

    ``exif`` is :attr:`RawImage.exif` (make, model, datetime, iso, exposure_time, f_number,
    focal_length; any may be missing or None). The pixels must already be upright: every
    output is tagged Orientation 1.
    """
    path = Path(path)
    if fmt not in FORMAT_EXTENSIONS:
        raise OutputError(f"unknown output format {fmt!r} (choose {', '.join(FORMAT_EXTENSIONS)})")
    if bits not in (8, 16):
        raise OutputError(f"bit depth must be 8 or 16, not {bits}")
    if fmt == "jpeg" and bits != 8:
        raise OutputError("JPEG is 8-bit only; use --format tiff or png for 16 bits")
    if image.ndim != 3 or image.shape[0] != 3:
        raise OutputError(f"expected a (3, H, W) image, got shape {tuple(image.shape)}")
    pixels = to_pixels(image, bits)
    meta = exif or {}
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        _WRITERS[fmt](tmp, pixels, quality, meta)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _exif_datetime(meta: dict) -> str | None:
    value = meta.get("datetime")
    return value if isinstance(value, str) and _EXIF_DATETIME.match(value) else None


def _rational(value: float):
    from PIL.TiffImagePlugin import IFDRational

    fraction = Fraction(float(value)).limit_denominator(100_000)
    return IFDRational(fraction.numerator, fraction.denominator)


def exif_bytes(meta: dict) -> bytes:
    """The JPEG APP1 EXIF payload ('Exif\\0\\0' + a TIFF structure) for RawImage.exif."""
    from PIL import Image
    from PIL.ExifTags import IFD, Base

    exif = Image.Exif()
    exif[Base.Orientation] = 1
    exif[Base.Software] = SOFTWARE
    for tag, key in ((Base.Make, "make"), (Base.Model, "model")):
        if meta.get(key):
            exif[tag] = str(meta[key])
    taken = _exif_datetime(meta)
    if taken:
        exif[Base.DateTime] = taken
    exposure = exif.get_ifd(IFD.Exif)  # Pillow keeps this dict and writes it as the sub-IFD
    if taken:
        exposure[Base.DateTimeOriginal] = taken
    if meta.get("iso"):
        exposure[Base.ISOSpeedRatings] = int(round(meta["iso"]))
    for tag, key in ((Base.ExposureTime, "exposure_time"), (Base.FNumber, "f_number"),
                     (Base.FocalLength, "focal_length")):
        if meta.get(key):
            exposure[tag] = _rational(meta[key])
    return exif.tobytes()


def _write_jpeg(path: Path, pixels: np.ndarray, quality: int, meta: dict) -> None:
    from PIL import Image

    Image.fromarray(pixels, "RGB").save(path, format="JPEG", quality=int(quality),
                                        icc_profile=srgb_icc_profile(), exif=exif_bytes(meta))


def _write_tiff(path: Path, pixels: np.ndarray, quality: int, meta: dict) -> None:
    import tifffile

    tags = [(tag, "s", 0, str(meta[key]), True)
            for tag, key in ((271, "make"), (272, "model")) if meta.get(key)]
    # Uncompressed on purpose: zlib costs seconds on a 24 MP 16-bit frame.
    tifffile.imwrite(path, pixels, photometric="rgb", compression=None, metadata=None,
                     iccprofile=srgb_icc_profile(), software=SOFTWARE,
                     datetime=_exif_datetime(meta), extratags=tags)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _write_png(path: Path, pixels: np.ndarray, quality: int, meta: dict) -> None:
    """A minimal PNG writer, because Pillow cannot write 16-bit RGB PNG."""
    height, width, _ = pixels.shape
    bits = pixels.dtype.itemsize * 8
    rows = pixels.astype(pixels.dtype.newbyteorder(">"), copy=False).reshape(height, -1).view(np.uint8)
    # The 'Up' filter (difference to the row above, modulo 256) roughly halves photo sizes for free.
    filtered = np.empty((height, rows.shape[1] + 1), np.uint8)
    filtered[:, 0] = 2
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
    header = struct.pack(">IIBBBBB", width, height, bits, 2, 0, 0, 0)  # colour type 2: RGB
    with open(path, "wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n")
        fh.write(_png_chunk(b"IHDR", header))
        fh.write(_png_chunk(b"iCCP", b"sRGB\x00\x00" + zlib.compress(srgb_icc_profile())))
        fh.write(_png_chunk(b"eXIf", exif_bytes(meta).removeprefix(b"Exif\x00\x00")))  # PNG wants bare TIFF
        fh.write(_png_chunk(b"IDAT", zlib.compress(filtered.tobytes(), 6)))
        fh.write(_png_chunk(b"IEND", b""))


_WRITERS = {"jpeg": _write_jpeg, "tiff": _write_tiff, "png": _write_png}
