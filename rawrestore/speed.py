"""Speed and memory of ``rawrestore enhance`` on a 24-megapixel RAW, next to RawTherapee.

    python -m rawrestore.speed [--megapixels 24] [--steps 1 2 4] [--repeats 3] [--workdir DIR]

Writes a noisy 6000x4000 Bayer DNG (ISO 6400, made from a bundled public-domain photo scaled up),
then runs each configuration as a user would: a fresh ``rawrestore enhance`` process writing a
JPEG, timed wall-clock, with the child's peak resident memory. RawTherapee-cli with noise
reduction (``rt_nr.pp3``) runs on the same file when it is installed. With ``--repeats N`` the
configurations run in turn N times over (so a drift in the machine's speed reaches them all) and
the table gives each one's median and range.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
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
    p.add_argument("--repeats", type=int, default=1, help="rounds over all configurations")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be at least 1")

    work = args.workdir or Path(tempfile.mkdtemp(prefix="rawrestore-speed-"))
    work.mkdir(parents=True, exist_ok=True)
    dng = work / f"speed_{args.megapixels:g}mp.dng"
    if not dng.exists():
        # In a fresh interpreter: a child's peak memory as the kernel reports it starts from its
        # parent's size at the fork, and making the file here would leave this process at 2.3 GiB.
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            pool.submit(make_large_dng, dng, args.megapixels).result()
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
    seconds: dict[str, list[float]] = {name: [] for name, _ in runs}
    peak: dict[str, float] = dict.fromkeys(seconds, 0.0)
    for round_ in range(1, args.repeats + 1):
        for name, cmd in runs:
            wall, rss = timed(cmd)
            seconds[name].append(wall)
            peak[name] = max(peak[name], rss)
            print(f"round {round_}/{args.repeats}: {name} {wall:.1f} s", file=sys.stderr, flush=True)
    print(format_table(seconds, peak))


def format_table(seconds: dict[str, list[float]], peak: dict[str, float]) -> str:
    """Markdown rows: the median wall time (and its range over several runs) and the peak memory."""
    repeated = any(len(times) > 1 for times in seconds.values())
    lines = ["| configuration | wall s" + (" (median) | range s" if repeated else "") + " | peak memory GiB |",
             "|---|---|" + ("---|" if repeated else "") + "---|"]
    for name, times in seconds.items():
        spread = f" | {min(times):.1f}-{max(times):.1f}" if repeated else ""
        lines.append(f"| {name} | {float(np.median(times)):.1f}{spread} | {peak[name]:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
