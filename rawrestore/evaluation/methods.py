"""The developers under test, each reading the set's DNG files itself.

Classical: LibRaw (AHD, and with its wavelet and FBDD noise reduction swept), rawrestore's classical
ISP (alone, and with OpenCV's NLM swept), RawTherapee pinned to one profile, darktable at its default
profiled denoise and at its best swept setting. Models: v15 through :class:`rawrestore.pipeline.Developer`,
and the RAW-domain core through :mod:`rawrestore.restore`, each at several step counts.

A swept method runs all its settings on each level's first ``SWEEP_IMAGES`` images and develops the
level with the one of the best tone-matched PSNR: the selection is on the benchmark itself, an oracle
in the method's favour (the notes say so).
"""
from __future__ import annotations

import re
import shutil
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ..isp import develop_classical
from ..rawio import read_raw

SWEEP_IMAGES = 4  # settings are compared on the first images of each level (cost), then run on all
LIBRAW_NR_SETTINGS = tuple((t, f) for t in (100, 300, 1000, 3000) for f in ("Off", "Full"))
NLM_STRENGTHS = (3.0, 5.0, 8.0, 12.0, 18.0, 27.0)
DARKTABLE_DEFAULT = ("wavelets", 1.0)  # darktable's own defaults of denoise (profiled): wavelets, Y0U0V0, strength 1
DARKTABLE_SWEEP = tuple((mode, strength) for mode in ("nlmeans", "wavelets") for strength in (0.5, 1.0, 2.0, 4.0))
CLASSICAL_METHODS = ("libraw-ahd", "libraw-nr", "classical", "classical+nlm", "rawtherapee", "darktable",
                     "darktable-best")
MODEL_METHODS = ("v15", "core")
SEED_MEAN_STEPS = 4


class Unavailable(Exception):
    """A method that cannot run here (a tool not installed, no weights): its rows are skipped."""


@dataclass
class Method:
    """A developer under test: ``develop(dng, setting)`` -> display sRGB (H, W, 3) float in [0, 1].

    ``model``, ``steps`` and ``seeds`` (how many samples are averaged) place a model's rows in the
    perception-distortion table; classical methods have none of them."""

    name: str
    develop: Callable[[Path, Any], np.ndarray] | None  # (dng, setting); None: cannot run here, the note says why
    settings: tuple = (None,)
    note: str = ""
    model: str | None = None
    steps: int | None = None
    seeds: int = 1
    _warm: bool = field(default=False, repr=False)

    def run_level(self, dngs: Sequence[Path], setting, workdir: Path) -> tuple[list[np.ndarray], list[float]]:
        """Outputs for the DNGs of one level and the seconds each took (after one warm-up)."""
        assert self.develop is not None, f"{self.name} cannot run: {self.note}"
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


def _v15_method(steps: int, weights: Path | None) -> Method:
    developer = None

    def develop(dng: Path, setting=None) -> np.ndarray:
        nonlocal developer
        if developer is None:
            from ..pipeline import Developer, DevelopOptions

            try:
                developer = Developer(DevelopOptions(auto_exposure=False, steps=steps,
                                                     weights=str(weights) if weights else None))
            except Exception as err:  # noqa: BLE001 - missing or unreadable weights: skip, say why
                raise Unavailable(f"{type(err).__name__}: {err}") from None
        return developer.develop(read_raw(dng)).permute(1, 2, 0).numpy()

    return Method(f"v15 (steps={steps})", develop, model="v15", steps=steps)


@lru_cache(maxsize=1)
def _core_weights(path: Path):
    """The core's weights, loaded once for all its step counts."""
    from ..restore import load_core

    try:
        return load_core(path)
    except Exception as err:  # noqa: BLE001 - missing or unreadable weights: skip, say why
        raise Unavailable(f"{path}: {type(err).__name__}: {err}") from None


def _core_method(steps: int, weights: Path, seeds: int = 1) -> Method:
    """The core at ``steps``; with several ``seeds``, the mean of their restored RAWs, rendered once (the
    posterior mean is a mean of linear values, so it is taken before the tone curve)."""

    def develop(dng: Path, setting=None) -> np.ndarray:
        import torch

        from ..restore import render, restored_raw

        core = _core_weights(weights)
        raw = read_raw(dng)
        native = torch.stack([restored_raw(core, raw, steps, seed) for seed in range(seeds)]).mean(0)
        return render(native, raw, auto_exposure=False).permute(1, 2, 0).numpy()

    name = f"core (mean of {seeds} seeds, steps={steps})" if seeds > 1 else f"core (steps={steps})"
    return Method(name, develop, model="core", steps=steps, seeds=seeds)


class CliMethod(Method):
    """A peer developer run as its command line over a whole level (one process, so its start-up
    is paid once per level as in a real batch); timed as wall clock, after a one-file warm-up."""

    def __init__(self, name: str, command: Callable[[list[Path], Path, Any], list[str]], settings: tuple,
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
        for link, dng in zip(links, dngs, strict=True):
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


def _profile(name: str) -> Path:
    return Path(str(resources.files("rawrestore").joinpath("bench_profiles", name)))


def _rawtherapee_command(dngs: list[Path], out_dir: Path, setting) -> list[str]:
    # -p on top of the neutral profile; -Y overwrite, -t TIFF, -b16, -c the inputs (must be last).
    return ["rawtherapee-cli", "-q", "-Y", "-p", str(_profile("rt_nr.pp3")), "-t", "-b16", "-o", f"{out_dir}/",
            "-c", *map(str, dngs)]


def darktable_profile(mode: str, strength: float, folder: Path) -> Path:
    """A darktable sidecar with denoise (profiled) in ``mode`` at ``strength``: the shipped sidecar of
    that mode with its strength (the third float of the module's parameters) replaced."""
    path = folder / f"dt_nr_{mode}_{strength:g}.xmp"
    if not path.exists():
        text = _profile(f"dt_nr_{mode}.xmp").read_text()
        params = re.search(r'darktable:params="([0-9a-f]+)"', text)
        if params is None:
            raise Unavailable(f"dt_nr_{mode}.xmp holds no denoise (profiled) parameters")
        hexed = params.group(1)
        hexed = hexed[:16] + struct.pack("<f", strength).hex() + hexed[24:]
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(text[:params.start(1)] + hexed + text[params.end(1):])
    return path


def _darktable_command(dngs: list[Path], out_dir: Path, setting: tuple[str, float]) -> list[str]:
    # The folder input (it holds exactly ``dngs``) develops every file in one process; our own
    # configdir and an in-memory library avoid darktable's database lock; workflow=none gives
    # its plain colour-managed (neutral) rendering.
    sidecar = darktable_profile(*setting, out_dir.parent / "darktable-profiles")
    return ["darktable-cli", str(dngs[0].parent), str(sidecar), f"{out_dir}/$(FILE_NAME).tif",
            "--apply-custom-presets", "false", "--core", "--library", ":memory:",
            "--configdir", str(out_dir.parent / "darktable-config"),
            "--conf", "plugins/imageio/format/tiff/bpp=16", "--conf", "plugins/darkroom/workflow=none"]


def _swept(what: str, parameter: str, choices: str) -> str:
    return (f"{what}; {parameter} chosen per level (best tone-matched PSNR on this benchmark's first "
            f"{SWEEP_IMAGES} images) from {choices}")


@dataclass(frozen=True)
class ModelOptions:
    steps: tuple[int, ...] = (0, 1, 2, 4, 8)
    v15_weights: Path | None = None   # None: the bundled weights
    core_weights: Path | None = None  # None: the core's rows are skipped
    seed_mean: int = 0                # > 1: also the core's mean of this many seeds at SEED_MEAN_STEPS


def make_methods(names: Sequence[str], models: ModelOptions) -> list[Method]:
    """The methods by name; command-line peers that are not installed and a core without weights come
    back with ``develop`` None and the reason as their note."""
    darktable_note = ("darktable-cli, workflow none + denoise (profiled), the DNG's camera unknown to it (its "
                      "generic ISO-scaled profile)")
    available: dict[str, Callable[[], list[Method]]] = {
        "libraw-ahd": lambda: [Method("libraw-ahd", lambda dng, _: _rawpy_develop(dng))],
        "libraw-nr": lambda: [Method("libraw-nr", _libraw_nr, LIBRAW_NR_SETTINGS, _swept(
            "rawpy AHD + noise_thr wavelet + FBDD", "(noise_thr, FBDD)",
            ", ".join(f"{t}/{f}" for t, f in LIBRAW_NR_SETTINGS)))],
        "classical": lambda: [Method("classical", _classical)],
        "classical+nlm": lambda: [Method("classical+nlm", _classical_nlm, NLM_STRENGTHS, _swept(
            "our ISP + OpenCV fastNlMeansDenoisingColored on 8 bit (h = hColor, 7/21 windows)", "h",
            ", ".join(f"{h:g}" for h in NLM_STRENGTHS)))],
        "rawtherapee": lambda: [CliMethod("rawtherapee", _rawtherapee_command, (None,),
                                          "rawtherapee-cli, neutral profile + rt_nr.pp3 (pinned: NR luma 70/detail "
                                          "30, chroma auto, impulse NR), AMaZE")],
        "darktable": lambda: [CliMethod("darktable", _darktable_command, (DARKTABLE_DEFAULT,),
                                        f"{darktable_note}, at darktable's defaults (wavelets, strength 1)")],
        "darktable-best": lambda: [CliMethod("darktable-best", _darktable_command, DARKTABLE_SWEEP, _swept(
            darktable_note, "(mode, strength)", ", ".join(f"{m} {s:g}" for m, s in DARKTABLE_SWEEP)))],
        "v15": lambda: [_v15_method(n, models.v15_weights) for n in models.steps],
        "core": lambda: _core_methods(models),
    }
    methods = []
    for name in names:
        tool = {"rawtherapee": "rawtherapee-cli", "darktable": "darktable-cli",
                "darktable-best": "darktable-cli"}.get(name)
        if tool and shutil.which(tool) is None:
            methods.append(Method(name, develop=None, note=f"{tool} not on PATH"))
        else:
            methods += available[name]()
    return methods


def _core_methods(models: ModelOptions) -> list[Method]:
    if models.core_weights is None:
        return [Method("core", develop=None, note="no --core-weights given")]
    methods = [_core_method(n, models.core_weights) for n in models.steps]
    if models.seed_mean > 1:
        methods.append(_core_method(SEED_MEAN_STEPS, models.core_weights, models.seed_mean))
    return methods
