"""Speed and memory of ``rawrestore enhance`` on a 24-megapixel RAW, next to RawTherapee.

    python -m rawrestore.speed [--megapixels 24] [--steps 1 2 4] [--workdir DIR]

Writes a noisy 6000x4000 Bayer DNG (ISO 6400, made from a bundled public-domain photo scaled up),
then runs each configuration as a user would: a fresh ``rawrestore enhance`` process writing a
JPEG, timed wall-clock, with the child's peak resident memory. RawTherapee-cli with noise
reduction (``rt_nr.pp3``) runs on the same file when it is installed.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .demo import demo_photo
from .noise import eld_noise
from .unprocess import random_camera, synthesize, write_synthetic_dng

RT_PROFILE = Path(__file__).parent / "bench_profiles" / "rt_nr.pp3"


def make_large_dng(path: Path, megapixels: float) -> Path:
    photo, _ = demo_photo()
    height = int(round(np.sqrt(megapixels * 1e6 * 2 / 3) / 4) * 4)
    width = height * 3 // 2
    big = F.interpolate(photo[None], size=(height, width), mode="bicubic", align_corners=False)[0].clamp(0, 1)
    cam = random_camera(np.random.default_rng(0), cfa="RGGB")
    cam.tone, cam.iso, cam.noise = False, 6400, eld_noise("CanonEOS5D4", 6400)
    return write_synthetic_dng(path, synthesize(big, cam, torch.Generator().manual_seed(0)), cam)


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in GiB) of a child process."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.read()}")
    return seconds, usage.ru_maxrss / 2 ** 20


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--megapixels", type=float, default=24.0)
    p.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--weights", default=None)
    p.add_argument("--workdir", type=Path, default=None)
    args = p.parse_args(argv)

    work = args.workdir or Path(tempfile.mkdtemp(prefix="rawrestore-speed-"))
    work.mkdir(parents=True, exist_ok=True)
    dng = work / f"speed_{args.megapixels:g}mp.dng"
    if not dng.exists():
        make_large_dng(dng, args.megapixels)
    runs: list[tuple[str, list[str]]] = []
    base = [sys.executable, "-m", "rawrestore", "enhance", str(dng), "--overwrite", "--no-auto-exposure"]
    if args.weights:
        base += ["--weights", args.weights]
    runs.append(("rawrestore --classical", base + ["--classical", "-o", str(work / "classical.jpg")]))
    for steps in args.steps:
        runs.append((f"rawrestore --steps {steps}", base + ["--steps", str(steps), "-o", str(work / f"steps{steps}.jpg")]))
    if shutil.which("rawtherapee-cli") and RT_PROFILE.exists():
        runs.append(("RawTherapee-cli, rt_nr.pp3 (NR)",
                     ["rawtherapee-cli", "-Y", "-o", str(work / "rt.jpg"), "-p", str(RT_PROFILE), "-j95", "-c", str(dng)]))
    print(f"{dng.name}: {args.megapixels:g} MP, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}\n")
    print("| configuration | wall s | peak memory GiB |\n|---|---|---|")
    for name, cmd in runs:
        seconds, rss = timed(cmd)
        print(f"| {name} | {seconds:.1f} | {rss:.2f} |", flush=True)


if __name__ == "__main__":
    main()
