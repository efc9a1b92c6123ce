"""The benchmark: rawrestore's models and the classical RAW developers on the same DNGs, against ground truth.

``python -m rawrestore.evaluation.bench``:

1. builds, once, the frozen set (:mod:`.bench_set`): every validation photo, centre-cropped to 512 px,
   shot by a held-out real camera at ISO 100, 1600, 6400, 25600, 102400 and in low light (x30, x100),
   half of them razor-sharp and half blurred; its hash names the folder and is printed;
2. runs every method on the DNG files (each reads the file itself), timed, one warm-up excluded;
3. scores the same pixels for all (:mod:`.metrics`) and writes the tables and every number, as
   markdown and JSON, beside the set; ``--docs`` also writes docs/benchmark.md.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import methods as m
from .bench_set import (
    DEFAULT_CAMCONST,
    DEFAULT_NOISE_PROFILES,
    DEFAULT_PHOTOS,
    DEFAULT_ROOT,
    DEFAULT_SIZE,
    LEVELS,
    SetConfig,
    Shot,
    build_set,
    content_digests,
    define_set,
    frozen_check,
    load_gt,
)
from .metrics import interior, piq_module, score, tone_matched_psnr
from .report import docs_page, markdown

DOCS_PAGE = Path(__file__).resolve().parents[2] / "docs" / "benchmark.md"


@dataclass(frozen=True)
class BenchConfig:
    set_config: SetConfig = field(default_factory=SetConfig)
    levels: tuple[str, ...] = tuple(LEVELS)
    methods: tuple[str, ...] = (*m.CLASSICAL_METHODS, *m.MODEL_METHODS)
    models: m.ModelOptions = field(default_factory=m.ModelOptions)
    workdir: Path = DEFAULT_ROOT
    docs: Path | None = None
    set_only: bool = False


def mean_tone_matched_psnr(outputs: Sequence[np.ndarray], targets: Sequence[np.ndarray]) -> float:
    return float(np.mean([tone_matched_psnr(interior(o.clip(0, 1), t.shape[:2]), interior(t, t.shape[:2]))
                          for o, t in zip(outputs, targets, strict=True)]))


def evaluate(method: m.Method, shots_by_level: dict[str, list[Shot]], gts: dict[str, np.ndarray],
             workdir: Path, log: Callable[[str], None]) -> dict:
    """Per level: the chosen setting, the seconds per megapixel, and the per-image and mean scores."""
    result: dict[str, Any] = {"name": method.name, "note": method.note, "model": method.model, "steps": method.steps,
              "seeds": method.seeds, "levels": {}}
    if method.develop is None:
        result["skipped"] = method.note
        log(f"  {method.name}: skipped ({method.note})")
        return result
    try:
        for level, shots in shots_by_level.items():
            dngs = [s.dng for s in shots]
            targets = [gts[s.image] for s in shots]
            setting = method.settings[0]
            if len(method.settings) > 1:
                sweep = slice(0, m.SWEEP_IMAGES)
                setting = max(method.settings, key=lambda candidate: mean_tone_matched_psnr(
                    method.run_level(dngs[sweep], candidate, workdir)[0], targets[sweep]))
            outputs, seconds = method.run_level(dngs, setting, workdir)
            scores = [score(o, t) for o, t in zip(outputs, targets, strict=True)]
            megapixels = [t.shape[0] * t.shape[1] / 1e6 for t in targets]
            mean = {k: float(np.mean([sc[k] for sc in scores])) for k in scores[0]}
            per_mp = [t / mp for t, mp in zip(seconds, megapixels, strict=True)]
            result["levels"][level] = {"setting": setting, "seconds_per_mp": per_mp,
                                       "images": {s.image: sc for s, sc in zip(shots, scores, strict=True)},
                                       "mean": mean}
            log(f"  {method.name:<34} {level:<9} PSNR-tm {mean['psnr_tm']:.2f}  PSNR {mean['psnr']:.2f}  "
                f"dE {mean['de00']:.2f}  SWD {mean['swd']:.1f}  HF {mean['hf_ratio']:.2f}  "
                f"flat {mean['flat_noise']:.2f}  {np.median(per_mp):.2f} s/MP"
                + (f"  [setting {setting}]" if len(method.settings) > 1 else ""))
    except m.Unavailable as err:
        result["skipped"], result["levels"] = str(err), {}
        log(f"  {method.name}: skipped ({err})")
    except Exception as err:  # noqa: BLE001 - one broken method must not lose the others' results
        result["skipped"], result["levels"] = f"failed: {type(err).__name__}: {err}", {}
        log(f"  {method.name}: FAILED ({type(err).__name__}: {err})")
    return result


def parse_args(argv: Sequence[str] | None) -> BenchConfig:
    parser = argparse.ArgumentParser(prog="python -m rawrestore.evaluation.bench",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=None,
                        help="only the first N images of the set's order (default: every validation photo)")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help=f"centre crop side, px (default {DEFAULT_SIZE})")
    parser.add_argument("--levels", nargs="+", choices=list(LEVELS), default=list(LEVELS))
    parser.add_argument("--methods", nargs="+", choices=[*m.CLASSICAL_METHODS, *m.MODEL_METHODS],
                        default=[*m.CLASSICAL_METHODS, *m.MODEL_METHODS])
    parser.add_argument("--steps", nargs="+", type=int, default=[0, 1, 2, 4, 8], help="model step counts")
    parser.add_argument("--weights", type=Path, default=None, help="v15 weights (default: the bundled ones)")
    parser.add_argument("--core-weights", type=Path, default=None, help="the RAW-domain core's weights")
    parser.add_argument("--seed-mean", type=int, default=0, metavar="N",
                        help=f"also the core's mean of N seeds at {m.SEED_MEAN_STEPS} steps (e.g. 8; default off)")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_ROOT, help=f"cache root (default {DEFAULT_ROOT})")
    parser.add_argument("--photos", type=Path, nargs="+", default=[DEFAULT_PHOTOS], help="clean photo folders")
    parser.add_argument("--camconst", type=Path, default=DEFAULT_CAMCONST, help="RawTherapee's camconst.json")
    parser.add_argument("--noise-profiles", type=Path, default=DEFAULT_NOISE_PROFILES,
                        help="darktable's noiseprofiles.json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--docs", type=Path, nargs="?", const=DOCS_PAGE, default=None,
                        help=f"also write the docs page (default {DOCS_PAGE})")
    parser.add_argument("--set-only", action="store_true", help="build (or check) the set, print its hash, stop")
    args = parser.parse_args(argv)
    if args.size < 64 or args.size % 2:
        parser.error("--size must be even and at least 64")
    return BenchConfig(
        set_config=SetConfig(photos=tuple(args.photos), camconst=args.camconst, noise_profiles=args.noise_profiles,
                      size=args.size, images=args.images, seed=args.seed),
        levels=tuple(args.levels), methods=tuple(args.methods),
        models=m.ModelOptions(steps=tuple(args.steps), v15_weights=args.weights, core_weights=args.core_weights,
                              seed_mean=args.seed_mean),
        workdir=args.workdir, docs=args.docs, set_only=args.set_only)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    config = parse_args(argv)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    start = time.perf_counter()
    bench = define_set(config.set_config)
    workdir = config.workdir / bench.hash
    levels = [LEVELS[name] for name in config.levels]
    shots = build_set(bench, workdir, levels)
    digests = content_digests(shots)
    frozen = frozen_check(bench, digests)
    log(f"set {bench.hash}: {len(bench.images)} images x {len(levels)} levels in {workdir} "
        f"({time.perf_counter() - start:.1f} s); pixels " + ", ".join(f"{k} {v}" for k, v in digests.items()))
    if frozen:
        log(f"WARNING: {frozen}")
    header = {"set": bench.hash, "content": digests, "frozen": frozen, "images": len(bench.images),
              "size": config.set_config.size, "seed": config.set_config.seed, "levels": list(config.levels),
              "photos": [{"name": i.name, "sharp": i.sharp, "camera": i.camera, "cfa": i.cfa, "bits": i.bits}
                         for i in bench.images],
              "v15_weights": str(config.models.v15_weights or "bundled"),
              "core_weights": str(config.models.core_weights or "none"), "piq": piq_module()[1],
              "command": shlex.join(["python", "-m", "rawrestore.evaluation.bench", *argv])}
    results = []
    if not config.set_only:
        gts = {s.image: load_gt(s.gt) for s in shots}
        shots_by_level = {level.name: [s for s in shots if s.level == level.name] for level in levels}
        results = [evaluate(method, shots_by_level, gts, workdir, log)
                   for method in m.make_methods(config.methods, config.models)]
        header["seconds_total"] = time.perf_counter() - start
        report = markdown(results, levels, header)
        (workdir / "results.md").write_text(report)
        (workdir / "results.json").write_text(json.dumps({"header": header, "results": results}, indent=1,
                                                         default=str))
        print(report)
        log(f"written {workdir / 'results.md'} and results.json ({header['seconds_total']:.0f} s in all)")
    if config.docs:
        config.docs.parent.mkdir(parents=True, exist_ok=True)
        config.docs.write_text(docs_page(results, levels, header))
        log(f"written {config.docs}")
    print(f"set {bench.hash}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
