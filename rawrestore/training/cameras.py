"""Real cameras' colour matrices and noise profiles, split into training and held-out cameras.

Matrices: RawTherapee's ``camconst.json`` (GPL data, read at training time from the path a recipe
names, never shipped), whose ``dcraw_matrix`` is XYZ (D65) -> camera x 10000, plus the six built
into the synthesis (Brooks et al.'s four and the project's two real DNGs). Noise: darktable's
measured profiles. A camera is held out (kept for the benchmark) when the SHA-1 of its name is
divisible by 5, so the split does not depend on the files' order or version.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np

from ..noise import load_darktable_profiles
from ..unprocess import CAMERA_MATRICES


def held_out(name: str) -> bool:
    return int(hashlib.sha1(name.encode()).hexdigest(), 16) % 5 == 0


def _json_with_comments(text: str) -> dict:
    # camconst.json has // line comments and /* */ blocks; no string in it holds "//".
    text = re.sub(r"//[^\n]*", "", text)
    return json.loads(re.sub(r"/\*.*?\*/", "", text, flags=re.S))


def camconst_matrices(path: str | Path) -> dict[str, np.ndarray]:
    """make_model -> XYZ->camera matrix for every camera in camconst.json with a dcraw matrix."""
    data = _json_with_comments(Path(path).read_text(encoding="utf-8", errors="replace"))
    out = {}
    for cam in data.get("camera_constants", []):
        matrix = cam.get("dcraw_matrix")
        names = cam["make_model"] if isinstance(cam["make_model"], list) else [cam["make_model"]]
        if matrix and len(matrix) == 9:
            m = np.asarray(matrix, dtype=np.float64).reshape(3, 3) / 10000.0
            if np.isfinite(m).all() and abs(np.linalg.det(m)) > 1e-6:
                for name in names:
                    out[name] = m
    return out


def camera_matrices(camconst: str | Path | None, split: str) -> dict[str, np.ndarray]:
    """The cameras of one split ('train' or 'heldout'): camconst's and the built-in six (the
    built-in ones are always training cameras: v15 trained on them)."""
    cams = {n: np.asarray(m) for n, m in CAMERA_MATRICES.items()} if split == "train" else {}
    if camconst and Path(camconst).exists():
        cams.update({n: m for n, m in camconst_matrices(camconst).items() if held_out(n) == (split == "heldout")})
    return cams


def darktable_profiles(path: str | Path | None, split: str) -> list[tuple[str, int, float, float]]:
    if not path or not Path(path).exists():
        return []
    return [p for p in load_darktable_profiles(path) if held_out(p[0]) == (split == "heldout")]
