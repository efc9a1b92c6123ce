"""The benchmark: rawrestore and the classical RAW developers on the same DNGs, against ground truth.

``python -m rawrestore.bench`` (``rawrestore bench``):

1. builds, once, a seeded set of noisy Bayer DNGs from the *validation* photos (never training
   ones): each photo centre-cropped, unprocessed with its own random camera (layout, matrix, white
   balance, bit depth, black level) and given the noise of a calibrated ELD camera at ISO 100, 1600,
   6400, 25600, and in low light (ISO 400 exposed 30x and 100x shorter, the digital gain put back
   as in SID), after a 0.7 px Gaussian optics blur (the ground truth is the blurred photo: what the
   lens delivered). The camera has no tone curve and no brightening (``tone=False``,
   ``exposure_gain=1``), so the ground truth is the photo itself at the exposure that a neutral
   developer renders: no method gets auto-brightening or a ground-truth-based rescaling;
2. runs every method on the DNG files (each reads the file itself), timed in process where the
   method allows, one warm-up excluded;
3. scores the same pixels for all (an interior crop, since RawTherapee drops a 4 px border):
   PSNR, SSIM, mean CIEDE2000, and two texture measures, GMSD and the high-frequency energy ratio.

The set lives in ``~/.cache/rawrestore/bench/<hash>`` (``--workdir`` changes the root); the hash
covers the generator's source and the options that define the set, so a changed noise model or
unprocessing never reuses stale files. The tables and every number (JSON) are written beside it.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .dataset import list_photos, load_photo
from .isp import develop_classical
from .noise import eld_cameras, eld_noise
from .rawio import read_raw
from .unprocess import optical_blur, random_camera, synthesize, write_synthetic_dng

DEFAULT_PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "srgb"
DEFAULT_ROOT = Path.home() / ".cache" / "rawrestore" / "bench"
# Real lenses deliver a slightly soft image to the sensor; these photos are sharp to the pixel, which
# would make the benchmark a demosaic test. 0.7 px, as in the peers' synthetic test DNG (peers.md).
OPTICS_BLUR_SIGMA = 0.7
BORDER = 8  # px dropped on every side for every method: RawTherapee crops 4 px, demosaic edges differ
EXPOSURE_NOTE = ("exposure normalisation: none needed — DNG data are at the ground truth's exposure; "
                 "no method gets auto-brightening or GT-based rescaling")
# What defines the synthetic set: a change to any of these files, or a new SET_VERSION (bump it when
# build_set changes), makes a new set instead of reusing stale files.
SET_VERSION = 1
_GENERATOR_SOURCES = ("unprocess.py", "noise.py", "dng.py", "isp.py", "rawio.py", "data/eld_noise.json")


# --- The set -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Level:
    name: str
    label: str
    iso: float
    ratio: float = 1.0  # low-light exposure ratio (digital gain applied back)


LEVELS = {level.name: level for level in (
    Level("iso100", "ISO 100", 100),
    Level("iso1600", "ISO 1600", 1600),
    Level("iso6400", "ISO 6400", 6400),
    Level("iso25600", "ISO 25600", 25600),
    Level("x30", "low light x30", 400, 30),
    Level("x100", "low light x100", 400, 100),
)}


@dataclass
class Shot:
    """One noisy DNG of the set and its ground truth."""

    image: str
    level: str
    dng: Path
    gt: Path


def select_photos(roots: Sequence[Path], count: int) -> list[Path]:
    """``count`` validation photos spread evenly over the sorted list (so every source is used)."""
    photos = list_photos(list(roots), "val")
    if not photos:
        raise SystemExit(f"no validation photos under {', '.join(map(str, roots))}")
    picks = np.unique(np.linspace(0, len(photos) - 1, min(count, len(photos))).round().astype(int))
    return [photos[i] for i in picks]


def centre_crop(photo: torch.Tensor, size: int) -> torch.Tensor:
    """The centre of a (3, H, W) photo, at most size x size, even sides (whole Bayer quads)."""
    _, h, w = photo.shape
    ch, cw = min(size, h) // 2 * 2, min(size, w) // 2 * 2
    top, left = (h - ch) // 2, (w - cw) // 2
    return photo[:, top:top + ch, left:left + cw]


def set_hash(photos: Sequence[Path], size: int, seed: int) -> str:
    digest = hashlib.sha1(json.dumps({"version": SET_VERSION, "photos": [p.name for p in photos], "size": size,
                                     "seed": seed}).encode())
    package = resources.files("rawrestore")
    for name in _GENERATOR_SOURCES:
        digest.update(package.joinpath(name).read_bytes())
    return digest.hexdigest()[:12]


def _image_name(index: int, photo: Path) -> str:
    return f"{index:02d}_{photo.stem}"


def build_set(workdir: Path, photos: Sequence[Path], size: int, levels: Sequence[Level], seed: int) -> list[Shot]:
    """Write the DNGs and ground truths that are not in ``workdir`` yet; return all shots.

    Each photo keeps one camera (sensor and ELD noise model) across levels, so levels differ only
    in the noise; every level has its own noise seed, so ``--levels`` subsets give the same files.
    """
    shots = []
    for index, path in enumerate(photos):
        name = _image_name(index, path)
        gt_path = workdir / "gt" / f"{name}.npy"  # (H, W, 3) uint16, lossless
        dng_paths = {level.name: workdir / "dng" / level.name / f"{name}.dng" for level in levels}
        shots += [Shot(name, level, dng, gt_path) for level, dng in dng_paths.items()]
        if gt_path.exists() and all(p.exists() for p in dng_paths.values()):
            continue
        srgb = optical_blur(centre_crop(load_photo(path), size).float() / 255.0, OPTICS_BLUR_SIGMA)
        rng = np.random.default_rng([seed, index])
        camera = random_camera(rng)
        camera.tone, camera.exposure_gain = False, 1.0
        eld_camera = str(rng.choice(sorted(eld_cameras())))
        for level in levels:
            noise = eld_noise(eld_camera, level.iso, level.ratio, tukey=True)
            # The file says the ISO its data are at: a camera that pushes a short exposure digitally
            # reports the effective ISO (ISO-driven denoisers, darktable's, would be misled otherwise).
            shot_camera = replace(camera, noise=noise, iso=level.iso * level.ratio, camera=eld_camera)
            generator = torch.Generator().manual_seed(int(np.random.default_rng(
                [seed, index, zlib.crc32(level.name.encode())]).integers(2 ** 62)))
            raw = synthesize(srgb, shot_camera, generator)
            dng_paths[level.name].parent.mkdir(parents=True, exist_ok=True)
            write_synthetic_dng(dng_paths[level.name], raw, shot_camera, model=f"Synthetic ({eld_camera} noise)")
        gt_path.parent.mkdir(parents=True, exist_ok=True)
        np.save(gt_path, (srgb.permute(1, 2, 0).numpy() * 65535).round().astype(np.uint16))
    return shots


def load_gt(path: Path) -> np.ndarray:
    return np.load(path).astype(np.float32) / 65535.0


# --- Metrics -----------------------------------------------------------------------------------

def interior(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The interior crop (``BORDER`` px off the ground truth's sides) of an output that may have lost
    a centred border of its own (RawTherapee), as (h, w, 3) float."""
    h, w = shape
    dy, dx = (h - image.shape[0]) // 2, (w - image.shape[1]) // 2
    if not (0 <= dy <= BORDER and 0 <= dx <= BORDER):
        raise ValueError(f"output {image.shape[:2]} cannot be aligned to ground truth {shape}")
    return image[BORDER - dy:h - BORDER - dy, BORDER - dx:w - BORDER - dx]


def psnr(output: np.ndarray, target: np.ndarray) -> float:
    mse = float(np.mean((output.astype(np.float64) - target) ** 2))
    return 10 * np.log10(1.0 / max(mse, 1e-12))


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def gmsd(output: np.ndarray, target: np.ndarray) -> float:
    """Gradient magnitude similarity deviation (Xue et al., IEEE TIP 2014), on full-resolution luma
    (no 2x downsampling, so the finest texture counts). 0 = identical gradients; lower is better."""
    from scipy.ndimage import prewitt

    def magnitude(y):
        return np.hypot(prewitt(y, axis=0) / 3, prewitt(y, axis=1) / 3)

    m_out, m_gt = magnitude(_luma(output)), magnitude(_luma(target))
    c = 170 / 255 ** 2  # the paper's constant, for data in [0, 1]
    similarity = (2 * m_out * m_gt + c) / (m_out ** 2 + m_gt ** 2 + c)
    return float(similarity.std())


def hf_ratio(output: np.ndarray, target: np.ndarray) -> float:
    """Laplacian energy of the output over the ground truth's: 1 = as much fine detail; below 1
    smoothed away, above 1 noise or artefacts added."""
    from scipy.ndimage import laplace

    return float(np.sum(laplace(_luma(output)) ** 2) / max(np.sum(laplace(_luma(target)) ** 2), 1e-12))


def score(output: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    from skimage.color import deltaE_ciede2000, rgb2lab
    from skimage.metrics import structural_similarity

    out = np.clip(interior(output, gt.shape[:2]), 0, 1)
    ref = interior(gt, gt.shape[:2])
    return {"psnr": psnr(out, ref),
            "ssim": float(structural_similarity(out, ref, channel_axis=2, data_range=1.0)),
            "de00": float(deltaE_ciede2000(rgb2lab(ref), rgb2lab(out)).mean()),
            "gmsd": gmsd(out, ref),
            "hf_ratio": hf_ratio(out, ref)}


# --- Methods -----------------------------------------------------------------------------------

class Unavailable(Exception):
    """A method that cannot run here (a tool not installed, no weights): its rows are skipped."""


@dataclass
class Method:
    """A developer under test: ``develop(dng, setting)`` -> display sRGB (H, W, 3) float in [0, 1].

    With several ``settings``, each level's first ``SWEEP_IMAGES`` images are run with all of them
    and the one with the best mean PSNR develops the level (the selection is on the benchmark
    itself; the notes say so).
    """

    name: str
    develop: Callable[[Path, object], np.ndarray]
    settings: tuple = (None,)
    note: str = ""
    _warm: bool = field(default=False, repr=False)

    def run_level(self, dngs: Sequence[Path], setting, workdir: Path) -> tuple[list[np.ndarray], list[float]]:
        """Outputs for the DNGs of one level and the seconds each took (after one warm-up)."""
        if not self._warm:
            self.develop(dngs[0], setting)
            self._warm = True
        outputs, seconds = [], []
        for dng in dngs:
            start = time.perf_counter()
            outputs.append(self.develop(dng, setting))
            seconds.append(time.perf_counter() - start)
        return outputs, seconds


def _rawpy_develop(dng: Path, **options) -> np.ndarray:
    """LibRaw, neutral: AHD, camera WB, sRGB curve, 16 bit, the file's white level as written."""
    import rawpy

    with rawpy.imread(str(dng)) as raw:
        rgb = raw.postprocess(demosaic_algorithm=rawpy.DemosaicAlgorithm.AHD, use_camera_wb=True,
                              no_auto_bright=True, output_color=rawpy.ColorSpace.sRGB, gamma=(2.4, 12.92),
                              output_bps=16, adjust_maximum_thr=0.0, **options)
    return rgb.astype(np.float32) / 65535.0


def _libraw_nr(dng: Path, setting: tuple[int, str]) -> np.ndarray:
    import rawpy

    threshold, fbdd = setting
    return _rawpy_develop(dng, noise_thr=threshold, fbdd_noise_reduction=rawpy.FBDDNoiseReductionMode[fbdd])


def _classical(dng: Path, setting=None) -> np.ndarray:
    return develop_classical(read_raw(dng), auto_exposure=False).permute(1, 2, 0).numpy()


def _classical_nlm(dng: Path, h: float) -> np.ndarray:
    try:
        import cv2
    except ImportError:
        raise Unavailable('needs OpenCV: pip install -e ".[bench]"') from None

    # OpenCV's colour NLM takes 8-bit images only; the ground truth is 8-bit photos anyway.
    image = (np.clip(_classical(dng), 0, 1) * 255).round().astype(np.uint8)
    return cv2.fastNlMeansDenoisingColored(image, None, h, h, 7, 21).astype(np.float32) / 255.0


def _model_method(steps: int, weights: Path | None) -> Method:
    developer = None

    def develop(dng: Path, setting=None) -> np.ndarray:
        nonlocal developer
        if developer is None:
            from .pipeline import DevelopOptions, Developer

            try:
                developer = Developer(DevelopOptions(auto_exposure=False, steps=steps,
                                                     weights=str(weights) if weights else None))
            except TypeError as err:  # DevelopOptions without the model fields
                raise Unavailable(f"the model path is not available ({err})") from None
            except Exception as err:  # noqa: BLE001 - missing or unreadable weights: skip, say why
                raise Unavailable(f"{type(err).__name__}: {err}") from None
        return developer.develop(read_raw(dng)).permute(1, 2, 0).numpy()

    return Method(f"model (steps={steps})", develop)


class CliMethod(Method):
    """A peer developer run as its command line over a whole level (one process, so its start-up
    is paid once per level as in a real batch); timed as wall clock, after a one-file warm-up."""

    def __init__(self, name: str, command: Callable[[list[Path], Path, object], list[str]], settings: tuple,
                 note: str):
        super().__init__(name, develop=self._develop_one, settings=settings, note=note)
        self.command = command

    def _batch(self, dngs: Sequence[Path], setting, out_dir: Path) -> list[np.ndarray]:
        import tifffile

        # The inputs are linked into a folder of their own: darktable develops whole folders.
        in_dir = out_dir.with_name(out_dir.name + "-inputs")
        for folder in (in_dir, out_dir):
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
        links = [in_dir / dng.name for dng in dngs]
        for link, dng in zip(links, dngs):
            link.symlink_to(dng.resolve())
        done = subprocess.run(self.command(links, out_dir, setting), capture_output=True, text=True)
        outputs = []
        for dng in dngs:
            tif = out_dir / f"{dng.stem}.tif"
            if not tif.exists():
                raise Unavailable(f"{self.name} wrote no {tif.name} (exit {done.returncode}): "
                                  f"{(done.stderr or done.stdout).strip()[-300:]}")
            outputs.append(tifffile.imread(tif)[..., :3].astype(np.float32) / 65535.0)
        return outputs

    def _develop_one(self, dng: Path, setting) -> np.ndarray:
        with tempfile.TemporaryDirectory() as tmp:
            return self._batch([dng], setting, Path(tmp) / "out")[0]

    def run_level(self, dngs, setting, workdir):
        if not self._warm:
            self._develop_one(dngs[0], setting)
            self._warm = True
        start = time.perf_counter()
        outputs = self._batch(dngs, setting, workdir / "peers" / self.name)
        return outputs, [(time.perf_counter() - start) / len(dngs)] * len(dngs)


def _profile(name: str) -> str:
    return str(resources.files("rawrestore").joinpath("bench_profiles", name))


def _rawtherapee_command(dngs: list[Path], out_dir: Path, setting) -> list[str]:
    # -p on top of the neutral profile; -Y overwrite, -t TIFF, -b16, -c the inputs (must be last).
    return ["rawtherapee-cli", "-q", "-Y", "-p", _profile("rt_nr.pp3"), "-t", "-b16", "-o", f"{out_dir}/",
            "-c", *map(str, dngs)]


def _darktable_command(dngs: list[Path], out_dir: Path, profile: str) -> list[str]:
    # The folder input (it holds exactly ``dngs``) develops every file in one process; our own
    # configdir and an in-memory library avoid darktable's database lock; workflow=none gives
    # its plain colour-managed (neutral) rendering.
    return ["darktable-cli", str(dngs[0].parent), _profile(f"dt_nr_{profile}.xmp"), f"{out_dir}/$(FILE_NAME).tif",
            "--apply-custom-presets", "false", "--core", "--library", ":memory:",
            "--configdir", str(out_dir.parent / "darktable-config"),
            "--conf", "plugins/imageio/format/tiff/bpp=16", "--conf", "plugins/darkroom/workflow=none"]


LIBRAW_NR_SETTINGS = tuple((t, f) for t in (300, 1000, 3000) for f in ("Off", "Full"))
NLM_STRENGTHS = (5.0, 8.0, 12.0, 18.0, 27.0)
SWEEP_IMAGES = 4  # settings are compared on the first images of each level (cost), then run on all
BASE_METHODS = ("libraw-ahd", "libraw-nr", "classical", "classical+nlm", "rawtherapee", "darktable")


def make_methods(names: Sequence[str], steps: Sequence[int], weights: Path | None) -> list[Method]:
    available = {
        "libraw-ahd": lambda: Method("libraw-ahd", lambda dng, _: _rawpy_develop(dng)),
        "libraw-nr": lambda: Method("libraw-nr", _libraw_nr, LIBRAW_NR_SETTINGS,
                                    "rawpy AHD + noise_thr wavelet + FBDD; (noise_thr, FBDD) chosen per level "
                                    f"(best PSNR on this benchmark's first {SWEEP_IMAGES} images) from " + ", ".join(f"{t}/{f}" for t, f in LIBRAW_NR_SETTINGS)),
        "classical": lambda: Method("classical", _classical),
        "classical+nlm": lambda: Method("classical+nlm", _classical_nlm, NLM_STRENGTHS,
                                        "our ISP + OpenCV fastNlMeansDenoisingColored on 8 bit (h = hColor, 7/21 windows), "
                                        f"h chosen per level (best PSNR on this benchmark's first {SWEEP_IMAGES} images) from "
                                        + ", ".join(f"{h:g}" for h in NLM_STRENGTHS)),
        "rawtherapee": lambda: CliMethod("rawtherapee", _rawtherapee_command, (None,),
                                         "rawtherapee-cli, neutral profile + rt_nr.pp3 (NR luma 70/detail 30, "
                                         "chroma auto, impulse NR), AMaZE"),
        "darktable": lambda: CliMethod("darktable", _darktable_command, ("nlmeans", "wavelets"),
                                       "darktable-cli, workflow none + denoise (profiled); nlmeans or wavelets "
                                       f"chosen per level (best PSNR on this benchmark's first {SWEEP_IMAGES} images)"),
    }
    methods = []
    for name in names:
        if name == "model":
            methods += [_model_method(n, weights) for n in steps]
        elif name in ("rawtherapee", "darktable") and shutil.which(f"{name}-cli") is None:
            methods.append(Method(name, develop=None, note=f"{name}-cli not on PATH"))
        else:
            methods.append(available[name]())
    return methods


# --- Running and reporting ---------------------------------------------------------------------

def mean_psnr(outputs: Sequence[np.ndarray], targets: Sequence[np.ndarray]) -> float:
    return float(np.mean([psnr(interior(o.clip(0, 1), t.shape[:2]), interior(t, t.shape[:2]))
                          for o, t in zip(outputs, targets)]))


def evaluate(method: Method, shots_by_level: dict[str, list[Shot]], gts: dict[str, np.ndarray],
             workdir: Path, log: Callable[[str], None]) -> dict:
    """Per level: the chosen setting, the seconds and megapixels, and the per-image scores."""
    result = {"name": method.name, "note": method.note, "levels": {}}
    if method.develop is None:
        result["skipped"] = method.note
        return result
    try:
        for level, shots in shots_by_level.items():
            dngs = [s.dng for s in shots]
            targets = [gts[s.image] for s in shots]
            setting = method.settings[0]
            if len(method.settings) > 1:
                sweep = slice(0, SWEEP_IMAGES)
                setting = max(method.settings, key=lambda candidate: mean_psnr(
                    method.run_level(dngs[sweep], candidate, workdir)[0], targets[sweep]))
            outputs, seconds = method.run_level(dngs, setting, workdir)
            scores = [score(o, t) for o, t in zip(outputs, targets)]
            megapixels = [t.shape[0] * t.shape[1] / 1e6 for t in targets]
            result["levels"][level] = {
                "setting": setting, "seconds_per_mp": [t / mp for t, mp in zip(seconds, megapixels)],
                "images": {s.image: sc for s, sc in zip(shots, scores)},
                "mean": {k: float(np.mean([sc[k] for sc in scores])) for k in scores[0]},
            }
            mean = result["levels"][level]["mean"]
            log(f"  {method.name:<18} {level:<9} PSNR {mean['psnr']:.2f}  SSIM {mean['ssim']:.3f}  "
                f"dE {mean['de00']:.2f}  {np.median(result['levels'][level]['seconds_per_mp']):.2f} s/MP"
                + (f"  [setting {setting}]" if len(method.settings) > 1 else ""))
    except Unavailable as err:
        result["skipped"] = str(err)
        result["levels"] = {}
        log(f"  {method.name}: skipped ({err})")
    except Exception as err:  # noqa: BLE001 - one broken method must not lose the others' results
        result["skipped"] = f"failed: {type(err).__name__}: {err}"
        result["levels"] = {}
        log(f"  {method.name}: FAILED ({type(err).__name__}: {err})")
    return result


def seconds_per_mp(result: dict) -> float:
    """Median over every image of every level: robust to the odd file slowed by other work."""
    return float(np.median([t for level in result["levels"].values() for t in level["seconds_per_mp"]]))


def markdown(results: list[dict], levels: Sequence[Level], header: dict) -> str:
    """The README-ready report: quality per level, texture per level, notes."""
    ran = [r for r in results if r["levels"]]
    columns = " | ".join(level.label for level in levels)
    rule = "|---" * (len(levels) + 2) + "|"

    def cells(result: dict, template: str) -> str:
        return " | ".join(template.format(**result["levels"][level.name]["mean"]) for level in levels)

    lines = [f"# rawrestore bench ({header['images']} validation images, up to {header['size']}x{header['size']} px, "
             f"seed {header['seed']}, set {header['set']})", "",
             "Cells: PSNR dB / SSIM / mean CIEDE2000 on display sRGB against the ground truth, "
             f"{BORDER} px border excluded for every method; s/MP: wall seconds per megapixel "
             "(reading the DNG included, one warm-up excluded; median over all images and levels; "
             "command-line peers: one process per level, its wall time shared by the images).", "",
             f"| method | {columns} | s/MP |", rule]
    lines += [f"| {r['name']} | {cells(r, '{psnr:.2f} / {ssim:.3f} / {de00:.2f}')} | {seconds_per_mp(r):.2f} |"
              for r in ran]
    lines += ["", "Texture: GMSD (gradient similarity deviation, lower is better) / high-frequency energy "
              "ratio (Laplacian energy output / ground truth: 1 = the ground truth's detail, <1 smoothed, "
              ">1 noise or artefacts).", "", f"| method | {columns} |", "|---" * (len(levels) + 1) + "|"]
    lines += [f"| {r['name']} | {cells(r, '{gmsd:.3f} / {hf_ratio:.2f}')} |" for r in ran]
    lines += ["", "Notes:", f"- {EXPOSURE_NOTE}.",
              "- Noise: one seeded random camera per image (layout, matrix, WB, 12/14 bit, black level) and a "
              "calibrated ELD camera at its fitted read/row noise (Tukey-lambda read noise); low light is ISO 400 "
              "exposed 30x or 100x shorter with the digital gain applied back (SID), the file tagged with the "
              "effective ISO (12000, 40000).",
              f"- Optics: the photo is blurred by a {OPTICS_BLUR_SIGMA} px Gaussian in linear light before "
              "unprocessing (a lens's softness); that blurred photo is the ground truth.",
              f"- Model weights: {header['weights']}. Timings are wall clock on this machine as it was: other "
              "work on the cores (a training run) slows torch-based rows many times over; the command-line "
              "peers' figures at these sizes are mostly process start-up."]
    for r in results:
        if r.get("skipped"):
            lines.append(f"- {r['name']}: skipped — {r['skipped']}")
        elif r["note"]:
            chosen = ", ".join(f"{level.label}: {r['levels'][level.name]['setting']}" for level in levels
                               if r["levels"][level.name]["setting"] is not None)
            lines.append(f"- {r['name']}: {r['note']}" + (f" — chosen {chosen}" if chosen else "") + ".")
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="rawrestore bench", description=__doc__.split("\n\n")[0])
    # Default size: 8 x 6 = 48 DNGs of up to 224 x 224 px. Without the peers this is a few minutes
    # on 2 idle cores; beside a 2-thread training run, torch-based rows (ours, the model) slow
    # down many times over. RawTherapee refuses frames of 208 px or less.
    parser.add_argument("--images", type=int, default=8, help="validation photos used (default 8)")
    parser.add_argument("--size", type=int, default=224, help="centre crop side, px (default 224)")
    parser.add_argument("--levels", nargs="+", choices=list(LEVELS), default=list(LEVELS))
    parser.add_argument("--methods", nargs="+", choices=[*BASE_METHODS, "model"], default=[*BASE_METHODS, "model"])
    parser.add_argument("--steps", nargs="+", type=int, default=[0, 1, 2, 4, 8],
                        help="model step counts (0: no diffusion step, the encoder's latent decoded as it is)")
    parser.add_argument("--weights", type=Path, default=None, help="model weights (default: the bundled ones)")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_ROOT, help=f"cache root (default {DEFAULT_ROOT})")
    parser.add_argument("--photos", type=Path, nargs="+", default=[DEFAULT_PHOTOS], help="clean photo folders")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.size < 64 or args.size % 2:
        parser.error("--size must be even and at least 64")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    photos = select_photos(args.photos, args.images)
    digest = set_hash(photos, args.size, args.seed)
    workdir = args.workdir / digest
    levels = [LEVELS[name] for name in args.levels]
    start = time.perf_counter()
    shots = build_set(workdir, photos, args.size, levels, args.seed)
    log(f"set {workdir}: {len(photos)} images x {len(levels)} levels ({time.perf_counter() - start:.1f} s)")
    gts = {s.image: load_gt(s.gt) for s in shots}
    shots_by_level = {level.name: [s for s in shots if s.level == level.name] for level in levels}

    results = [evaluate(method, shots_by_level, gts, workdir, log)
               for method in make_methods(args.methods, args.steps, args.weights)]
    header = {"images": len(photos), "size": args.size, "seed": args.seed, "set": digest,
              "photos": [p.name for p in photos], "levels": args.levels, "exposure": EXPOSURE_NOTE,
              "weights": str(args.weights) if args.weights else "bundled",
              "seconds_total": time.perf_counter() - start}
    report = markdown(results, levels, header)
    (workdir / "results.md").write_text(report)
    (workdir / "results.json").write_text(json.dumps({"header": header, "results": results}, indent=1, default=str))
    print(report)
    log(f"written {workdir / 'results.md'} and results.json ({header['seconds_total']:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
