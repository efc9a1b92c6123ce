"""Writing Bayer DNG files (tifffile + the DNG 1.4 tags LibRaw, RawTherapee and darktable need).

Used by the demo, the tests and the benchmark, so that every method reads the same file.
"""
from __future__ import annotations

import datetime as _dt
import os
from fractions import Fraction
from pathlib import Path

import numpy as np

_CFA_CODES = {"R": 0, "G": 1, "B": 2}
_D65 = 21


def _rationals(values) -> list[int]:
    out = []
    for v in np.asarray(values, dtype=np.float64).ravel():
        f = Fraction(float(v)).limit_denominator(1_000_000)
        out += [f.numerator, f.denominator]
    return out


def write_dng(path: str | Path, mosaic: np.ndarray, cfa: str, black: float, white: float,
              cam_from_xyz: np.ndarray, wb: np.ndarray, *, make: str = "rawrestore",
              model: str = "Synthetic", iso: float | None = None, exposure_time: float | None = None,
              f_number: float | None = None, focal_length: float | None = None,
              lens: str | None = None, datetime: _dt.datetime | None = None,
              noise_profile: tuple[float, float] | None = None, orientation: int = 1) -> Path:
    """Write a (H, W) uint16 Bayer mosaic as an uncompressed DNG.

    ``cam_from_xyz`` is the camera's XYZ->camera-native matrix (DNG ColorMatrix1, D65) and
    ``wb`` the as-shot white-balance multipliers (R, G, B); AsShotNeutral is their inverse.
    ``noise_profile`` is the DNG NoiseProfile (scale, offset) on data normalised to [0, 1].
    The file is written to a temporary name and renamed, so it is never left half-written.
    """
    import tifffile

    path = Path(path)
    mosaic = np.ascontiguousarray(np.clip(np.round(mosaic), 0, 65535).astype(np.uint16))
    wb = np.asarray(wb, dtype=np.float64)
    neutral = (1.0 / wb) / (1.0 / wb).max()
    camera = f"{make} {model}"
    tags = [
        (254, 4, 1, 0, True),                                   # NewSubfileType: main image
        (271, 2, 0, make, True),
        (272, 2, 0, model, True),
        (274, 3, 1, orientation, True),
        (33421, 3, 2, (2, 2), True),                            # CFARepeatPatternDim
        (33422, 1, 4, tuple(_CFA_CODES[c] for c in cfa), True),  # CFAPattern
        (50706, 1, 4, (1, 4, 0, 0), True),                      # DNGVersion
        (50707, 1, 4, (1, 1, 0, 0), True),                      # DNGBackwardVersion
        (50708, 2, 0, camera, True),                            # UniqueCameraModel
        (50713, 3, 2, (1, 1), True),                            # BlackLevelRepeatDim
        (50714, 5, 1, _rationals([black]), True),               # BlackLevel
        (50717, 4, 1, int(round(white)), True),                 # WhiteLevel
        (50721, 10, 9, _rationals(cam_from_xyz), True),  # ColorMatrix1
        (50778, 3, 1, _D65, True),                              # CalibrationIlluminant1
        (50728, 5, 3, _rationals(neutral), True),               # AsShotNeutral
    ]
    # EXIF fields in IFD0 (TIFF/EP allows them there); exifread and LibRaw read them back.
    if exposure_time:
        tags.append((33434, 5, 1, _rationals([exposure_time]), True))
    if f_number:
        tags.append((33437, 5, 1, _rationals([f_number]), True))
    if iso:
        # ISOSpeedRatings is a SHORT: above 65535 it holds 65535 and, as EXIF 2.3 has cameras do, the
        # value goes in ISOSpeed (a LONG) with SensitivityType 3 (ISO speed).
        tags.append((34855, 3, 1, min(int(round(iso)), 65535), True))
        if iso > 65535:
            tags += [(34864, 3, 1, 3, True), (34867, 4, 1, int(round(iso)), True)]
    if datetime:
        tags.append((36867, 2, 0, datetime.strftime("%Y:%m:%d %H:%M:%S"), True))
    if focal_length:
        tags.append((37386, 5, 1, _rationals([focal_length]), True))
    if lens:
        tags.append((42036, 2, 0, lens, True))                 # LensModel
    if noise_profile:
        tags.append((51041, 12, 2, tuple(float(v) for v in noise_profile), True))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tifffile.imwrite(tmp, mosaic, photometric=32803, compression=None, extratags=tags,
                         metadata=None, software="rawrestore")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
