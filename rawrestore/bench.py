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

Superseded by :mod:`rawrestore.evaluation.bench` (issue 22's frozen set: held-out cameras, sharp
photos too, more scores), whose methods and metrics this one shares; kept while the README's
figures come from this set.

The set lives in ``~/.cache/rawrestore/bench/<hash>`` (``--workdir`` changes the root); the hash
covers the generator's source and the options that define the set, so a changed noise model or
unprocessing never reuses stale files. The tables and every number (JSON) are written beside it.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import zlib
from collections.abc import Sequence
from dataclasses import replace
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from .dataset import IMAGE_EXTENSIONS, list_photos, load_photo
from .evaluation.bench import evaluate
from .evaluation.bench_set import DEFAULT_PHOTOS, DEFAULT_ROOT, Level, Shot, centre_crop, load_gt
from .evaluation.bench_set import LEVELS as FROZEN_LEVELS
from .evaluation.methods import ModelOptions, make_methods
from .evaluation.metrics import BORDER
from .evaluation.report import method_notes, seconds_per_mp
from .noise import eld_cameras, eld_noise
from .unprocess import optical_blur, random_camera, synthesize, write_synthetic_dng

# Real lenses deliver a slightly soft image to the sensor; these photos are sharp to the pixel, which
# would make the benchmark a demosaic test. 0.7 px, as in the peers' synthetic test DNG (peers.md).
OPTICS_BLUR_SIGMA = 0.7
EXPOSURE_NOTE = ("exposure normalisation: none needed — DNG data are at the ground truth's exposure; "
                 "no method gets auto-brightening or GT-based rescaling")
# What defines the synthetic set: a change to any of these files, or a new SET_VERSION (bump it when
# build_set changes), makes a new set instead of reusing stale files.
SET_VERSION = 1
_GENERATOR_SOURCES = ("unprocess.py", "noise.py", "dng.py", "isp.py", "rawio.py", "data/eld_noise.json")
BASE_METHODS = ("libraw-ahd", "libraw-nr", "classical", "classical+nlm", "rawtherapee", "darktable")


# --- The set -----------------------------------------------------------------------------------

# The frozen set's levels but ISO 102400, which this older set never had.
LEVELS = {name: level for name, level in FROZEN_LEVELS.items() if name != "iso102400"}


def select_photos(roots: Sequence[Path], count: int) -> list[Path]:
    """``count`` validation photos spread evenly over the sorted list (so every source is used)."""
    photos = list_photos(list(roots), "val")
    if not photos:
        missing = " (no such folder)" if not any(Path(root).is_dir() for root in roots) else ""
        print(f"error: no validation photos under {', '.join(map(str, roots))}{missing}: the benchmark makes its "
              f"noisy RAW files from clean photos ({', '.join(sorted(IMAGE_EXTENSIONS))}; those whose file name "
              "falls in the validation split, about 1 in 6); give a folder of them with --photos DIR",
              file=sys.stderr)
        raise SystemExit(2)  # a usage error, as the CLI's
    picks = np.unique(np.linspace(0, len(photos) - 1, min(count, len(photos))).round().astype(int))
    return [photos[i] for i in picks]


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
    lines += method_notes(results, levels)
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

    names = ["v15" if name == "model" else name for name in args.methods]
    results = [evaluate(method, shots_by_level, gts, workdir, log)
               for method in make_methods(names, ModelOptions(steps=tuple(args.steps), v15_weights=args.weights))]
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
