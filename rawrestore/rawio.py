"""Reading camera RAW files: a thin, typed layer over rawpy and exifread.

Everything downstream (the classical ISP, the model, the writers) sees a :class:`RawImage`,
never a rawpy object, so tests and the synthetic-data code can build one directly.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

RAW_EXTENSIONS = {
    ".dng", ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".raf", ".orf",
    ".rw2", ".pef", ".srw", ".x3f", ".3fr", ".fff", ".iiq", ".mos", ".mrw", ".dcr", ".kdc",
    ".erf", ".mef", ".raw", ".rwl", ".gpr",
}

BAYER_LAYOUTS = ("RGGB", "BGGR", "GRBG", "GBRG")

# sRGB (D65) -> XYZ, IEC 61966-2-1.
XYZ_FROM_SRGB = np.array(
    [[0.4124564, 0.3575761, 0.1804375],
     [0.2126729, 0.7151522, 0.0721750],
     [0.0193339, 0.1191920, 0.9503041]], dtype=np.float64)


class RawReadError(Exception):
    """A file that is not a RAW LibRaw can decode; the message is one line for the user."""


@dataclass
class RawImage:
    """A decoded RAW frame plus the metadata the pipeline needs.

    ``mosaic`` is the visible sensor area, in digital numbers, for Bayer files; ``rgb`` holds
    LibRaw's own linear demosaic for the others (X-Trans, linear DNG, Foveon, monochrome).
    """

    cfa: str | None                        # 'RGGB' | 'BGGR' | 'GRBG' | 'GBRG' | None (not Bayer)
    mosaic: np.ndarray | None              # (H, W) float32 DN, Bayer only
    black: np.ndarray                      # (2, 2) black level per CFA site, DN
    white: float                           # white level, DN
    wb: np.ndarray                         # (3,) as-shot white-balance multipliers, G = 1
    srgb_from_cam: np.ndarray              # (3, 3) white-balanced camera RGB -> linear sRGB
    orientation: int = 1                   # EXIF orientation to apply to the pixels
    rgb: np.ndarray | None = None          # (H, W, 3) linear sRGB in [0, 1] for non-Bayer files
    kind: str = "bayer"                    # 'bayer' | 'x-trans' | 'linear' | 'foveon' | 'mono' | ...
    exif: dict = field(default_factory=dict)  # make, model, lens, iso, exposure_time, f_number, focal_length, datetime
    path: Path | None = None
    daylight_wb: np.ndarray | None = None  # (3,) multipliers that make D65 white neutral, G = 1 (LibRaw's pre_mul)

    @property
    def is_bayer(self) -> bool:
        return self.cfa is not None

    @property
    def cam_to_xyz(self) -> np.ndarray:
        """Camera RGB (white-balanced) to CIE XYZ D65."""
        return XYZ_FROM_SRGB @ self.srgb_from_cam

    def normalized(self) -> np.ndarray:
        """The mosaic with black subtracted and divided by (white - black): 1.0 is sensor clipping."""
        out = np.empty(self.mosaic.shape, np.float32)
        # Site by site, in place: a full-size black-level frame and temporaries cost 0.5-1 s on 24 MP.
        for (py, px), black in np.ndenumerate(self.black):
            sites = out[py::2, px::2]
            np.subtract(self.mosaic[py::2, px::2], black, out=sites)
            np.divide(sites, np.float32(self.white - black), out=sites)
        return out


def cfa_site_colors(cfa: str) -> np.ndarray:
    """(2, 2) array of 0/1/2 (R/G/B) for a layout name."""
    return np.array(["RGB".index(c) for c in cfa]).reshape(2, 2)


def _layout_from_rawpy(raw) -> str | None:
    pattern = raw.raw_pattern
    if pattern is None or np.asarray(pattern).shape != (2, 2):
        return None
    desc = raw.color_desc.decode()
    # raw_pattern indexes color_desc, whose 4th entry is the second green: map through it.
    name = "".join(desc[i] for i in np.asarray(pattern).ravel())
    return name if name in BAYER_LAYOUTS else None


def _exif_tags(path: Path) -> dict:
    import exifread

    try:
        with open(path, "rb") as fh:
            tags = exifread.process_file(fh, details=False)
    except Exception:  # exifread cannot parse every container (CR3, RAF); EXIF is optional
        return {}

    def text(*keys):
        for key in keys:
            value = str(tags.get(key, "")).strip()
            if value and value != "0":
                return value
        return None

    def number(*keys):
        for key in keys:
            tag = tags.get(key)
            if tag is None:
                continue
            value = tag.values[0] if isinstance(tag.values, list) and tag.values else tag.values
            try:
                value = float(value.num) / float(value.den) if hasattr(value, "num") else float(value)
            except (TypeError, ValueError, ZeroDivisionError):
                continue
            if value > 0:
                return value
        return None

    return {
        "make": text("Image Make"),
        "model": text("Image Model"),
        "lens": text("EXIF LensModel", "Image LensModel"),
        "datetime": text("EXIF DateTimeOriginal", "Image DateTimeOriginal", "Image DateTime"),
        "iso": number("EXIF ISOSpeedRatings", "Image ISOSpeedRatings"),
        "exposure_time": number("EXIF ExposureTime", "Image ExposureTime"),
        "f_number": number("EXIF FNumber", "Image FNumber"),
        "focal_length": number("EXIF FocalLength", "Image FocalLength"),
        "orientation": _orientation(tags.get("Image Orientation")),
    }


def _orientation(tag) -> int | None:
    """The EXIF orientation 1-8, or None where the tag is missing or not a small integer (a damaged
    file can give it any type: text, a rational, a float)."""
    values = getattr(tag, "values", None)
    value = values[0] if isinstance(values, list) and values else None
    return value if type(value) is int and 1 <= value <= 8 else None


_FLIP_TO_ORIENTATION = {0: 1, 3: 3, 5: 8, 6: 6}


def _camera_matrix(raw) -> np.ndarray:
    """White-balanced camera RGB -> linear sRGB, as LibRaw computes it (its ``rgb_cam``)."""
    rgb_cam = np.asarray(raw.color_matrix, dtype=np.float64)[:, :3]
    if np.abs(rgb_cam).sum() > 0:
        return rgb_cam
    cam_xyz = np.asarray(raw.rgb_xyz_matrix, dtype=np.float64)[:3]
    if np.abs(cam_xyz).sum() == 0:
        return np.eye(3)
    return srgb_from_cam_matrix(cam_xyz)


def srgb_from_cam_matrix(cam_from_xyz: np.ndarray) -> np.ndarray:
    """White-balanced camera RGB -> linear sRGB from an XYZ->camera matrix (DNG ColorMatrix).

    Rows of camera-from-sRGB are normalised to 1 so that white stays white once the white
    balance is applied, as dcraw's ``cam_xyz_coeff`` and LibRaw do.
    """
    cam_srgb = np.asarray(cam_from_xyz, dtype=np.float64) @ XYZ_FROM_SRGB
    cam_srgb = cam_srgb / cam_srgb.sum(axis=1, keepdims=True)
    return np.linalg.inv(cam_srgb)


def _daylight_white_balance(raw) -> np.ndarray | None:
    wb = np.asarray(raw.daylight_whitebalance, dtype=np.float64)[:3]
    return wb / wb[1] if wb[1] > 0 and np.all(wb > 0) else None


def _white_balance(raw) -> np.ndarray:
    for wb in (raw.camera_whitebalance, raw.daylight_whitebalance):
        wb = np.asarray(wb, dtype=np.float64)[:3]
        if wb[1] > 0 and np.all(wb > 0):
            return wb / wb[1]
    return np.ones(3)


def read_raw(path: str | Path) -> RawImage:
    """Decode a RAW file. Raises :class:`RawReadError` with a one-line reason on bad input."""
    import rawpy

    path = Path(path)
    if not path.exists():
        raise RawReadError(f"{path}: no such file")
    if path.is_dir():
        raise RawReadError(f"{path}: is a folder, not a RAW file")
    if not path.is_file():  # opening a FIFO would wait for a writer
        raise RawReadError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise RawReadError(f"{path}: empty file (0 bytes)")
    try:
        with open(path, "rb"):  # LibRaw would report a permission problem as a bad header
            pass
    except OSError as err:
        raise RawReadError(f"{path}: cannot open ({err.strerror})") from None
    try:
        raw = rawpy.imread(str(path))
    except (rawpy.LibRawFileUnsupportedError, rawpy.LibRawIOError):
        # LibRaw answers a header it cannot parse (a text file, a cut-off header) with an I/O error.
        raise RawReadError(f"{path}: not a RAW file LibRaw can read (unknown format or cut-off header)") from None
    except rawpy.LibRawError as err:
        raise RawReadError(f"{path}: unreadable RAW ({type(err).__name__})") from None
    with raw:
        try:
            return _from_rawpy(raw, path)
        except rawpy.LibRawError as err:  # truncated files fail while unpacking the data
            raise RawReadError(f"{path}: damaged or truncated RAW ({type(err).__name__})") from None


def _from_rawpy(raw, path: Path) -> RawImage:
    import rawpy

    exif = _exif_tags(path)
    other = raw.other if hasattr(raw, "other") else None
    # LibRaw's values only where exifread could not parse the container (CR3, RAF): when the
    # EXIF says 0, LibRaw reports placeholders (1 s, f/1) rather than the truth.
    if other is not None and not any(exif.values()):
        exif["iso"] = exif.get("iso") or (other.iso_speed or None)
        exif["exposure_time"] = exif.get("exposure_time") or (other.shutter_speed or None)
        exif["f_number"] = exif.get("f_number") or (other.aperture or None)
        exif["focal_length"] = exif.get("focal_length") or (other.focal_length or None)
        if not exif.get("datetime") and other.timestamp and other.timestamp.year > 1970:
            exif["datetime"] = other.timestamp.strftime("%Y:%m:%d %H:%M:%S")
    orientation = _FLIP_TO_ORIENTATION.get(raw.sizes.flip, exif.get("orientation") or 1)
    exif.pop("orientation", None)
    white = float(raw.white_level)
    wb = _white_balance(raw)
    srgb_from_cam = _camera_matrix(raw)
    cfa = _layout_from_rawpy(raw) if raw.raw_type == rawpy.RawType.Flat else None
    common = dict(white=white, wb=wb, srgb_from_cam=srgb_from_cam, orientation=orientation,
                  exif=exif, path=path, daylight_wb=_daylight_white_balance(raw))
    # A damaged header can put the white level at or below the black level: every pixel would
    # develop to black.
    if white <= max(raw.black_level_per_channel):
        raise RawReadError(f"{path}: damaged RAW (white level {white:g} is not above the black level "
                           f"{max(raw.black_level_per_channel):g})")
    if cfa is not None:
        mosaic = raw.raw_image_visible.astype(np.float32)
        colors = np.asarray(raw.raw_colors_visible[:2, :2])
        black = np.asarray(raw.black_level_per_channel, dtype=np.float32)[colors]
        if not np.isfinite(mosaic).all() or mosaic.max() <= black.min():
            raise RawReadError(f"{path}: RAW holds no image data")
        return RawImage(cfa=cfa, mosaic=mosaic, black=black, kind="bayer", **common)
    kind = _non_bayer_kind(raw)
    rgb = raw.postprocess(use_camera_wb=True, no_auto_bright=True, output_bps=16, gamma=(1, 1),
                          output_color=rawpy.ColorSpace.sRGB, user_flip=0)
    if rgb.shape[2] == 1:  # a monochrome sensor (or a CFA LibRaw reads as one): grey in sRGB
        rgb = np.repeat(rgb, 3, axis=2)
    return RawImage(cfa=None, mosaic=None, black=np.zeros((2, 2), np.float32), kind=kind,
                    rgb=rgb.astype(np.float32) / 65535.0, **common)


def _non_bayer_kind(raw) -> str:
    pattern = raw.raw_pattern
    if pattern is not None and np.asarray(pattern).shape == (6, 6):
        return "x-trans"
    if raw.num_colors == 1:
        return "mono"
    if raw.raw_type != raw.raw_type.Flat:
        return "linear"
    return "other"


@contextmanager
def libraw_muted() -> Iterator[None]:
    """File descriptor 2 pointed at /dev/null meanwhile. LibRaw prints its own complaints ("Unexpected
    end of file") straight to it, for files that :func:`read_raw` turns into one-line errors."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def read_raw_quietly(path: str | Path) -> RawImage:
    """:func:`read_raw` with LibRaw's own messages muted."""
    with libraw_muted():
        return read_raw(path)


def iter_raw_files(root: Path, recursive: bool) -> list[Path]:
    """RAW files in a folder, by extension, sorted for a stable batch order."""
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in root.glob(pattern) if p.is_file() and p.suffix.lower() in RAW_EXTENSIONS)

