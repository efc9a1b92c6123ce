"""The benchmark's set: noisy Bayer DNGs of the validation photos, shot by cameras no model trained on.

Every validation photo (``rawrestore.dataset.list_photos(roots, 'val')``), centre-cropped to at most
``size`` x ``size`` px, becomes one DNG per noise level and its ground truth (the photo itself, as a
neutral developer at the file's exposure renders it: no tone curve, no brightening). Each photo gets:

- optics: razor-sharp (no blur: the aliasing and moire of a sensor without an anti-aliasing filter) or
  a 0.7 px Gaussian blur in linear light (a lens's softness), alternately in the set's seeded order,
  so every prefix of the set (``--images``) is half sharp, half blurred;
- a held-out real camera, one that has both a colour matrix in RawTherapee's camconst.json and a
  measured noise profile in darktable's noiseprofiles.json, held out of training by
  :func:`rawrestore.training.cameras.held_out`: its matrix, its daylight white balance;
- that camera's noise: darktable's measured Poisson-Gaussian profile at the level's ISO (interpolated
  between its measured ISOs; beyond them scaled as a gain would: shot variance with ISO, read variance
  with ISO squared above the highest, constant below the lowest). Its read variance is split into
  ELD-style per-row offsets and Tukey-lambda read noise in the proportions and shape of an ELD-calibrated
  camera (Wei et al., CVPR 2020) at that ISO; low light is ISO 400 exposed 30x or 100x shorter with the
  digital gain applied back (SID), the file tagged with the effective ISO;
- a random Bayer layout, bit depth and black level.

Frozen: the set's definition (``SET_VERSION`` and every input: the photos' bytes, each image's camera,
optics, layout and per-level noise parameters, the crop size, the seed) is hashed; the hash names the
set's folder, is printed and goes into every report. Nothing in it depends on paths or file names. The
generated pixels are digested too, and the default set's digests are pinned in :data:`FROZEN`, so code
that would silently generate other pixels is caught. docs/benchmark.md: the definition must not change
to suit a model.
"""
from __future__ import annotations

import hashlib
import json
import math
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..dataset import list_photos, load_photo
from ..noise import NoiseParams, _tukey_var, eld_cameras, eld_noise
from ..rawio import BAYER_LAYOUTS, XYZ_FROM_SRGB
from ..training.cameras import camera_matrices, darktable_profiles
from ..unprocess import CameraSample, optical_blur, synthesize, write_synthetic_dng

SET_VERSION = 1  # bump when the generation below changes; the new set then needs a new FROZEN entry
SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
DEFAULT_PHOTOS = SHARED_DATA / "srgb"
DEFAULT_NOISE_PROFILES = SHARED_DATA / "noise_models" / "darktable_noiseprofiles.json"
DEFAULT_CAMCONST = Path("/usr/share/rawtherapee/camconst.json")
DEFAULT_ROOT = Path.home() / ".cache" / "rawrestore" / "bench"
DEFAULT_SIZE = 512
OPTICS_BLUR_SIGMA = 0.7
# darktable fits a few profiles with a zero or negative read variance; a floor keeps the log-log
# interpolation defined (1e-10 on [0, 1] data: 0.16 DN of a 14-bit range, below quantisation).
READ_VARIANCE_FLOOR = 1e-10


@dataclass(frozen=True)
class Level:
    name: str
    label: str
    iso: float
    ratio: float = 1.0  # low-light exposure ratio (digital gain applied back)

    @property
    def effective_iso(self) -> float:
        return self.iso * self.ratio


LEVELS = {level.name: level for level in (
    Level("iso100", "ISO 100", 100.0),
    Level("iso1600", "ISO 1600", 1600.0),
    Level("iso6400", "ISO 6400", 6400.0),
    Level("iso25600", "ISO 25600", 25600.0),
    Level("iso102400", "ISO 102400", 102400.0),
    Level("x30", "low light x30", 400.0, 30.0),
    Level("x100", "low light x100", 400.0, 100.0),
)}


@dataclass(frozen=True)
class SetConfig:
    """What the set is made from; all of it (by content, not by path) is in the hash."""

    photos: tuple[Path, ...] = (DEFAULT_PHOTOS,)
    camconst: Path = DEFAULT_CAMCONST
    noise_profiles: Path = DEFAULT_NOISE_PROFILES
    size: int = DEFAULT_SIZE
    images: int | None = None  # the first images of the set's order; None: every validation photo
    seed: int = 0


@dataclass(frozen=True)
class HeldOutCamera:
    name: str
    cam_from_xyz: tuple[tuple[float, float, float], ...]
    profiles: tuple[tuple[float, float, float], ...]  # darktable's (iso, a, b), var = a x + b on [0, 1] data

    def noise_at(self, iso: float) -> tuple[float, float]:
        """(a, b) at an ISO: log-log interpolation between measured ISOs (several at one ISO averaged);
        beyond them, as a gain scales noise: shot variance with ISO; read variance with ISO squared
        above the highest (amplified before the ADC), unchanged below the lowest (read-out dominated)."""
        isos = np.array(sorted({p[0] for p in self.profiles}))
        a = np.array([np.mean([p[1] for p in self.profiles if p[0] == i]) for i in isos])
        b = np.array([max(np.mean([p[2] for p in self.profiles if p[0] == i]), READ_VARIANCE_FLOOR) for i in isos])
        if iso <= isos[0]:
            return float(a[0] * iso / isos[0]), float(b[0])
        if iso >= isos[-1]:
            gain = iso / isos[-1]
            return float(a[-1] * gain), float(b[-1] * gain ** 2)
        at = math.log(iso)
        return (float(np.exp(np.interp(at, np.log(isos), np.log(a)))),
                float(np.exp(np.interp(at, np.log(isos), np.log(b)))))


def held_out_cameras(camconst: Path, noise_profiles: Path) -> list[HeldOutCamera]:
    """The held-out cameras with both a matrix and a noise profile, sorted by name."""
    matrices = camera_matrices(camconst, "heldout")
    profiles: dict[str, list[tuple[float, float, float]]] = {}
    for name, iso, a, b in darktable_profiles(noise_profiles, "heldout"):
        profiles.setdefault(name, []).append((float(iso), a, b))
    return [HeldOutCamera(name, tuple(map(tuple, np.asarray(matrices[name]).tolist())), tuple(profiles[name]))
            for name in sorted(set(matrices) & set(profiles))]


def _rounded(value: float) -> float:
    """10 significant digits: what the definition holds, so that its hash does not depend on the last bit
    of a platform's log and exp."""
    return float(f"{value:.10g}")


def level_noise(camera: HeldOutCamera, shape_camera: str, level: Level, white_range: float) -> NoiseParams:
    """The camera's profiled noise at a level, in DN of ``white_range``, its read variance split into
    row offsets and Tukey-lambda read noise as the ELD camera ``shape_camera`` has them at that ISO."""
    a, b = camera.noise_at(level.iso)
    eld = eld_noise(shape_camera, level.iso, tukey=True)
    assert eld.tukey_lambda is not None  # tukey=True gives the camera's median shape
    tukey_variance = _tukey_var(eld.tukey_lambda)
    row_share = eld.row_sigma ** 2 / (eld.row_sigma ** 2 + eld.read_sigma ** 2 * tukey_variance)
    # The profile was measured on quantised data; synthesis quantises again, so that part comes off.
    dark = max(b * white_range ** 2 - 1 / 12, 0.0)
    return NoiseParams(K=_rounded(a * white_range),
                       read_sigma=_rounded(math.sqrt(dark * (1 - row_share) / tukey_variance)),
                       row_sigma=_rounded(math.sqrt(dark * row_share)), tukey_lambda=_rounded(eld.tukey_lambda),
                       ratio=level.ratio, white_range=white_range)


@dataclass(frozen=True)
class ImageSpec:
    """One photo of the set and the camera that shoots it at every level."""

    name: str                 # a label (index and file stem); not in the hash
    photo: Path               # where it was found; not in the hash
    digest: str               # SHA-1 of the photo file
    sharp: bool
    camera: str
    cam_from_xyz: tuple[tuple[float, float, float], ...]
    wb: tuple[float, float, float]   # the camera's daylight (D65) multipliers, G = 1
    cfa: str
    bits: int
    black: float
    shape_camera: str         # the ELD camera whose row share and Tukey shape the read noise takes
    noise: dict[str, NoiseParams]    # per level name, every level of LEVELS

    def camera_at(self, level: Level) -> CameraSample:
        return CameraSample(cam_from_xyz=np.array(self.cam_from_xyz), wb=np.array(self.wb), cfa=self.cfa,
                            bits=self.bits, black=self.black, exposure_gain=1.0, tone=False,
                            noise=self.noise[level.name], iso=level.effective_iso, camera=self.camera)

    def definition(self) -> dict:
        fields = asdict(self)
        del fields["name"], fields["photo"]
        return fields


@dataclass(frozen=True)
class BenchSet:
    config: SetConfig
    images: list[ImageSpec]
    hash: str


def file_digest(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def _order_key(seed: int, digest: str) -> str:
    return hashlib.sha1(f"{seed}:{digest}".encode()).hexdigest()


def daylight_wb(cam_from_xyz: np.ndarray) -> tuple[float, float, float]:
    """Multipliers that make the camera's response to D65 white neutral, G = 1 (LibRaw's pre_mul)."""
    red, green, blue = (np.asarray(cam_from_xyz) @ XYZ_FROM_SRGB).sum(axis=1)
    return _rounded(green / red), 1.0, _rounded(green / blue)


def define_set(config: SetConfig) -> BenchSet:
    """The set's definition: its images in the seeded order (by photo content), each with its camera."""
    photos = list_photos(list(config.photos), "val")
    if not photos:
        raise SystemExit(f"no validation photos under {', '.join(map(str, config.photos))}")
    cameras = held_out_cameras(config.camconst, config.noise_profiles)
    if not cameras:
        raise SystemExit(f"no held-out camera has both a matrix in {config.camconst} and a noise profile in "
                         f"{config.noise_profiles} (--camconst, --noise-profiles)")
    digests = {p: file_digest(p) for p in photos}
    ordered = sorted(photos, key=lambda p: _order_key(config.seed, digests[p]))[:config.images]
    camera_order = np.random.default_rng(config.seed).permutation(len(cameras))
    eld = sorted(eld_cameras())
    images = []
    for index, path in enumerate(ordered):
        camera = cameras[int(camera_order[index % len(cameras)])]
        rng = np.random.default_rng([config.seed, int(digests[path][:15], 16)])
        bits = int(rng.choice([12, 14]))
        black = float(rng.choice([0, 64, 128, 256, 512, 1024]) * (1 if bits == 14 else 0.25))
        cfa = str(rng.choice(BAYER_LAYOUTS))
        shape_camera = str(rng.choice(eld))
        white_range = 2.0 ** bits - 1 - black
        images.append(ImageSpec(
            name=f"{index:02d}_{path.stem}", photo=path, digest=digests[path], sharp=index % 2 == 0,
            camera=camera.name, cam_from_xyz=camera.cam_from_xyz, wb=daylight_wb(np.array(camera.cam_from_xyz)),
            cfa=cfa, bits=bits, black=black, shape_camera=shape_camera,
            noise={level.name: level_noise(camera, shape_camera, level, white_range) for level in LEVELS.values()}))
    definition = {"version": SET_VERSION, "size": config.size, "seed": config.seed,
                  "images": [image.definition() for image in images]}
    digest = hashlib.sha1(json.dumps(definition, sort_keys=True).encode()).hexdigest()[:12]
    return BenchSet(config, images, digest)


@dataclass(frozen=True)
class Shot:
    """One noisy DNG of the set and its ground truth."""

    image: str
    level: str
    dng: Path
    gt: Path


def centre_crop(photo: torch.Tensor, size: int) -> torch.Tensor:
    """The centre of a (3, H, W) photo, at most size x size, even sides (whole Bayer quads)."""
    _, h, w = photo.shape
    ch, cw = min(size, h) // 2 * 2, min(size, w) // 2 * 2
    top, left = (h - ch) // 2, (w - cw) // 2
    return photo[:, top:top + ch, left:left + cw]


def noise_seed(seed: int, digest: str, level: str) -> int:
    """Each shot's own noise seed, so that ``--levels`` and ``--images`` subsets give the same files."""
    return int(np.random.default_rng([seed, int(digest[:15], 16), zlib.crc32(level.encode())]).integers(2 ** 62))


def build_set(bench: BenchSet, workdir: Path, levels: list[Level]) -> list[Shot]:
    """Write the DNGs and ground truths that are not in ``workdir`` yet, and the definition; return all shots."""
    shots = []
    for image in bench.images:
        gt_path = workdir / "gt" / f"{image.name}.npy"  # (H, W, 3) uint16, lossless
        dng_paths = {level.name: workdir / "dng" / level.name / f"{image.name}.dng" for level in levels}
        shots += [Shot(image.name, level, dng, gt_path) for level, dng in dng_paths.items()]
        missing = [level for level in levels if not dng_paths[level.name].exists()]
        if gt_path.exists() and not missing:
            continue
        srgb = centre_crop(load_photo(image.photo), bench.config.size).float() / 255.0
        if not image.sharp:
            srgb = optical_blur(srgb, OPTICS_BLUR_SIGMA)
        for level in missing:
            camera = image.camera_at(level)
            generator = torch.Generator().manual_seed(noise_seed(bench.config.seed, image.digest, level.name))
            dng_paths[level.name].parent.mkdir(parents=True, exist_ok=True)
            write_synthetic_dng(dng_paths[level.name], synthesize(srgb, camera, generator), camera,
                                model=f"Synthetic ({image.camera})")
        gt_path.parent.mkdir(parents=True, exist_ok=True)
        np.save(gt_path, (srgb.permute(1, 2, 0).numpy() * 65535).round().astype(np.uint16))
    definition = workdir / "set.json"
    if not definition.exists():
        definition.write_text(json.dumps({"version": SET_VERSION, "hash": bench.hash, "size": bench.config.size,
                                          "seed": bench.config.seed,
                                          "images": [{"name": i.name, **i.definition()} for i in bench.images]},
                                         indent=1))
    return shots


def load_gt(path: Path) -> np.ndarray:
    return np.load(path).astype(np.float32) / 65535.0


def _pixels_digest(shots: list[Shot]) -> str:
    import tifffile

    digest = hashlib.sha1()
    for shot in shots:
        digest.update(np.load(shot.gt).tobytes())
        digest.update(np.ascontiguousarray(tifffile.imread(shot.dng)).tobytes())
    return digest.hexdigest()[:12]


def content_digests(shots: list[Shot]) -> dict[str, str]:
    """Per level, a digest of the pixels on disk: every ground truth and DNG mosaic, in the set's order."""
    by_level: dict[str, list[Shot]] = {}
    for shot in shots:
        by_level.setdefault(shot.level, []).append(shot)
    return {level: _pixels_digest(group) for level, group in by_level.items()}


# The default set (every validation photo, 512 px, seed 0) as first generated: set hash -> per-level
# pixel digests. A set with this hash and other pixels was made by changed code (or another platform's
# arithmetic): its results are not comparable with the recorded ones.
FROZEN: dict[str, dict[str, str]] = {
    "25d52f9b3f4d": {"iso100": "9fa2563ee02d", "iso1600": "91b6676d5bb1", "iso6400": "b2a7caf1c85d",
                     "iso25600": "79441e8021f4", "iso102400": "d6055c08cda2", "x30": "5aae35333e34",
                     "x100": "2b272d930446"},
}


def frozen_check(bench: BenchSet, digests: dict[str, str]) -> str:
    """'' where the pixels are the frozen ones or the set has no frozen record; else what differs."""
    frozen = FROZEN.get(bench.hash)
    if frozen is None:
        return ""
    changed = [level for level, digest in digests.items() if frozen.get(level) != digest]
    return (f"set {bench.hash}: the pixels of {', '.join(changed)} differ from the frozen set's "
            "(changed generator code or platform arithmetic): not comparable with docs/benchmark.md") if changed else ""
