"""Damaged RAW files for the robustness tests: a seeded corpus and seeded mutants of a good DNG.

The DNGs of :func:`conftest.make_dng` are little-endian classic TIFF with one IFD, written by
tifffile: the entries start at byte 10, the values they point to follow, then the pixels. The
edits below rewrite entries in place, so every damaged file keeps the good file's size and layout
except where the damage is the point.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

# TIFF field types by code: 1 BYTE, 2 ASCII, 3 SHORT, 4 LONG, 5 RATIONAL, 7 UNDEFINED, 10 SRATIONAL,
# 11 FLOAT, 12 DOUBLE.
ORIENTATION, IMAGE_WIDTH, IMAGE_LENGTH, PHOTOMETRIC = 274, 256, 257, 262
BLACK_LEVEL, WHITE_LEVEL, CFA_PATTERN, COLOR_MATRIX, AS_SHOT_NEUTRAL = 50714, 50717, 33422, 50721, 50728
LINEAR_RAW = 34892
HEADER_BYTES = 64 << 10  # where a RAW's IFDs and tags are: the mutants' damage is concentrated there


@dataclass(frozen=True)
class Entry:
    position: int  # of the 12-byte entry in the file
    tag: int
    type: int
    count: int
    value: int     # the inline value field, read as a LONG


def entries(data: bytes) -> dict[int, Entry]:
    """IFD0's entries by tag."""
    assert data[:4] == b"II*\x00", "little-endian classic TIFF expected"
    ifd = struct.unpack_from("<I", data, 4)[0]
    count = struct.unpack_from("<H", data, ifd)[0]
    found = {}
    for i in range(count):
        position = ifd + 2 + 12 * i
        tag, kind, n, value = struct.unpack_from("<HHII", data, position)
        found[tag] = Entry(position, tag, kind, n, value)
    return found


def with_entry(data: bytes, tag: int, type: int | None = None, count: int | None = None,
               value: int | None = None) -> bytes:
    """``data`` with one IFD0 entry's type, count or inline value field replaced."""
    entry = entries(data)[tag]
    out = bytearray(data)
    struct.pack_into("<HHII", out, entry.position, tag, entry.type if type is None else type,
                     entry.count if count is None else count, entry.value if value is None else value)
    return bytes(out)


def monochrome(data: bytes) -> bytes:
    """The DNG as a one-channel LinearRaw file (what a monochrome camera writes)."""
    return with_entry(data, PHOTOMETRIC, value=LINEAR_RAW)


def odd_orientation(data: bytes, type: int) -> bytes:
    """The Orientation entry re-typed (ASCII, RATIONAL, ...) with its value field unchanged."""
    return with_entry(data, ORIENTATION, type=type)


def damaged_corpus(good: bytes, seed: int = 23) -> dict[str, bytes]:
    """File name -> content of every damaged file, the same for a seed.

    Zero bytes; truncations at 10 points; bit flips (few and many, in the tags and in the pixels);
    other formats under RAW extensions; huge declared dimensions; tags of odd types and values.
    None of them is a RAW that should develop.
    """
    rng = np.random.default_rng(seed)
    size = len(good)
    header = entries(good)[max(entries(good))].position + 12
    corpus = {"zero.dng": b""}
    for fraction in (0.0005, 0.002, 0.005, 0.01, 0.05, 0.2, 0.4, 0.6, 0.8, 0.99):
        corpus[f"truncated-{fraction:g}.dng"] = good[:max(1, int(size * fraction))]
    for i, (flips, end) in enumerate([(1, header), (4, header), (16, header), (64, header),
                                      (256, size), (4096, size)]):
        data = bytearray(good)
        for position in rng.integers(0, end, flips):
            data[position] ^= 1 << int(rng.integers(8))
        corpus[f"flipped-{i}.dng"] = bytes(data)
    corpus["text.nef"] = b"holiday notes, not a picture\n" * 40
    corpus["jpeg.cr2"] = _image_bytes("JPEG")
    corpus["png.arw"] = _image_bytes("PNG")
    corpus["tiff.dng"] = _image_bytes("TIFF")
    corpus["random.raf"] = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    corpus["tiff-header-only.orf"] = good[:8]
    for name, width, length in (("wide", 1 << 20, None), ("tall", None, 1 << 20),
                                ("huge", 60_000, 60_000), ("max", 0xFFFFFFFF, 0xFFFFFFFF), ("zero-width", 0, None)):
        data = good
        if width is not None:
            data = with_entry(data, IMAGE_WIDTH, value=width)
        if length is not None:
            data = with_entry(data, IMAGE_LENGTH, value=length)
        corpus[f"dimensions-{name}.dng"] = data
    for kind in (2, 5, 7, 11, 12):
        corpus[f"orientation-type-{kind}.dng"] = odd_orientation(good, kind)
    corpus["orientation-count-0.dng"] = with_entry(good, ORIENTATION, count=0)
    corpus["orientation-count-huge.dng"] = with_entry(good, ORIENTATION, count=1 << 30)
    corpus["black-level-ascii.dng"] = with_entry(good, BLACK_LEVEL, type=2)
    corpus["black-level-above-white.dng"] = with_entry(good, WHITE_LEVEL, value=100)
    corpus["white-level-zero.dng"] = with_entry(good, WHITE_LEVEL, value=0)
    corpus["cfa-pattern-count-huge.dng"] = with_entry(good, CFA_PATTERN, count=1 << 28)
    corpus["color-matrix-type-ascii.dng"] = with_entry(good, COLOR_MATRIX, type=2)
    corpus["neutral-offset-past-end.dng"] = with_entry(good, AS_SHOT_NEUTRAL, value=size + 1000)
    corpus["ifd-offset-past-end.dng"] = good[:4] + struct.pack("<I", size + 12) + good[8:]
    corpus["ifd-offset-loop.dng"] = good[:4] + struct.pack("<I", 4) + good[8:]
    return corpus


def mutants(good: bytes, count: int, seed: int = 0) -> list[bytes]:
    """``count`` mutants of ``good``: 1-8 byte edits each (a bit flip, a random byte, an extreme
    16- or 32-bit value, a cut), nine in ten within the first :data:`HEADER_BYTES`."""
    rng = np.random.default_rng(seed)
    header = min(len(good), HEADER_BYTES)
    extremes = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]
    out = []
    for _ in range(count):
        data = bytearray(good)
        for _ in range(int(rng.integers(1, 9))):
            position = int(rng.integers(0, header if rng.random() < 0.9 else len(data) - 4))
            action = rng.choice(4, p=[0.35, 0.3, 0.3, 0.05])
            if action == 0:
                data[position] ^= 1 << int(rng.integers(8))
            elif action == 1:
                data[position] = int(rng.integers(256))
            elif action == 2:
                value = int(rng.choice(extremes))
                struct.pack_into("<I" if value > 0xFFFF else "<H", data, position, value)
            else:
                del data[position:]
                break
        out.append(bytes(data))
    return out


def _image_bytes(fmt: str) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (120, 30, 200)).save(buffer, format=fmt)
    return buffer.getvalue()


def write_all(folder: Path, files: dict[str, bytes]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return [folder / name for name in files]
