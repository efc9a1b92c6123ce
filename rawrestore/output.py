"""Writing developed images: JPEG (EXIF + sRGB ICC), 8/16-bit TIFF and 8/16-bit PNG.

Every writer goes through :func:`write_image`, which writes to a hidden temporary file in the
destination folder and renames it into place, so a crash or a full disk never leaves a
half-written picture under the final name (and rerunning a batch can trust what exists).
"""
from __future__ import annotations

import errno
import functools
import os
import re
import shutil
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
# Other names a format goes by (--format jpg, as -o x.jpg).
FORMAT_ALIASES = {"jpg": "jpeg", "tif": "tiff"}

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


def extensions_of(fmt: str | None = None) -> list[str]:
    """The extensions an output of ``fmt`` (None: of any format) may have."""
    return [ext for ext, name in EXTENSION_FORMATS.items() if fmt in (None, name)]


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
        try:
            _WRITERS[fmt](tmp, pixels, quality, meta)
        except OSError as err:
            # numpy's tofile, which tifffile writes with, reports a full disk as "N requested and
            # M written", without an errno.
            if err.errno is None and shutil.disk_usage(tmp.parent).free < pixels.nbytes - _size(tmp):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from None
            raise
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


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
    if meta.get("lens"):
        exposure[Base.LensModel] = str(meta["lens"])
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


_EXIF_IFD_POINTER = 34665
# tifffile refuses to write the ExifIFD tag (it writes no EXIF IFD): this unassigned tag, which
# sorts to the same place among IFD0's entries, holds its place and is renamed once the IFD exists.
_EXIF_IFD_PLACEHOLDER = _EXIF_IFD_POINTER - 1


def _write_tiff(path: Path, pixels: np.ndarray, quality: int, meta: dict) -> None:
    import tifffile

    tags = [(tag, "s", 0, str(meta[key]), True)
            for tag, key in ((271, "make"), (272, "model")) if meta.get(key)]
    exif = _exif_entries(meta)
    if exif:
        tags.append((_EXIF_IFD_PLACEHOLDER, "I", 1, 0, True))  # made the pointer by _append_exif_ifd
    # Uncompressed on purpose: zlib costs seconds on a 24 MP 16-bit frame.
    tifffile.imwrite(path, pixels, photometric="rgb", compression=None, metadata=None,
                     iccprofile=srgb_icc_profile(), software=SOFTWARE,
                     datetime=_exif_datetime(meta), extratags=tags)
    if exif:
        _append_exif_ifd(path, exif)


def _exif_entries(meta: dict) -> list[tuple[int, int, int, bytes]]:
    """The EXIF sub-IFD's entries for RawImage.exif, as (tag, TIFF type, count, little-endian
    value), sorted by tag: the same fields as the JPEG's."""
    ascii_, short, rational, undefined = 2, 3, 5, 7
    entries = []
    for tag, key in ((33434, "exposure_time"), (33437, "f_number"), (37386, "focal_length")):
        if meta.get(key):
            fraction = Fraction(float(meta[key])).limit_denominator(100_000)
            entries.append((tag, rational, 1, struct.pack("<II", fraction.numerator, fraction.denominator)))
    if meta.get("iso"):
        entries.append((34855, short, 1, struct.pack("<H", min(65535, int(round(meta["iso"]))))))
    if entries or meta.get("lens") or _exif_datetime(meta):
        entries.append((36864, undefined, 4, b"0232"))  # ExifVersion, required in an EXIF IFD
    for tag, text in ((36867, _exif_datetime(meta)), (42036, meta.get("lens"))):  # DateTimeOriginal, LensModel
        if text:
            value = str(text).encode("ascii", "replace") + b"\0"
            entries.append((tag, ascii_, len(value), value))
    return sorted(entries)


def _append_exif_ifd(path: Path, entries: list[tuple[int, int, int, bytes]]) -> None:
    """Append the EXIF IFD to a TIFF tifffile wrote and point its ExifIFD tag there: tifffile
    writes none itself, and photo software reads the exposure and the lens from one."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if tif.byteorder != "<" or tif.is_bigtiff:
            raise OutputError("unexpected TIFF layout from tifffile (expected little-endian classic TIFF)")
        placeholder = tif.pages[0].tags[_EXIF_IFD_PLACEHOLDER]
        entry, pointer = placeholder.offset, placeholder.valueoffset
    with open(path, "r+b") as fh:
        end = fh.seek(0, os.SEEK_END)
        start = end + end % 2  # IFDs and their values start on a word boundary
        values_at = start + 2 + 12 * len(entries) + 4
        table, values = [struct.pack("<H", len(entries))], b""
        for tag, kind, count, value in entries:
            if len(value) <= 4:
                table.append(struct.pack("<HHI", tag, kind, count) + value.ljust(4, b"\0"))
            else:
                table.append(struct.pack("<HHII", tag, kind, count, values_at + len(values)))
                values += value + b"\0" * (len(value) % 2)
        fh.write(b"\0" * (start - end) + b"".join(table) + struct.pack("<I", 0) + values)
        fh.seek(entry)
        fh.write(struct.pack("<H", _EXIF_IFD_POINTER))
        fh.seek(pointer)
        fh.write(struct.pack("<I", start))


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
