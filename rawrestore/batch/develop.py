"""One file, RAW to written output: the call every batch engine makes, in whatever process it runs."""
from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..output import write_image
from ..rawio import RawReadError, read_raw_quietly

if TYPE_CHECKING:
    from ..pipeline import Developer

DECODE, DEVELOP, WRITE = "decode", "develop", "write"


@dataclass(frozen=True)
class WriteOptions:
    fmt: str = "jpeg"
    bits: int = 8
    quality: int = 92


@dataclass(frozen=True)
class FileTask:
    source: Path
    target: Path
    write: WriteOptions


@dataclass(frozen=True)
class FileResult:
    status: str                   # 'done' | 'failed'
    detail: str                   # the output written, or why not, in one line
    seconds: float
    notices: tuple[str, ...] = ()
    trace: str | None = None      # the traceback of a failure, for --debug
    exposure_ev: float | None = None  # the exposure applied, once developed


def develop_file(developer: Developer, task: FileTask,
                 phase: Callable[[str, float], None] = lambda name, megapixels: None) -> FileResult:
    """Decode, develop and write ``task``; any failure is a one-line :class:`FileResult`, never an
    exception. ``phase(name, megapixels)`` is called as each of decode, develop and write begins
    (megapixels 0 until the file is decoded), for a supervisor's time limits and progress."""
    started = time.perf_counter()
    notices: list[str] = []
    step = DECODE

    def failed(reason: str) -> FileResult:
        return FileResult("failed", reason, time.perf_counter() - started, tuple(notices), traceback.format_exc())

    try:
        phase(DECODE, 0.0)
        raw = read_raw_quietly(task.source)
        pixels = raw.mosaic if raw.is_bayer else raw.rgb
        megapixels = pixels.shape[0] * pixels.shape[1] / 1e6
        if not raw.is_bayer and not developer.options.classical:
            notices.append(f"{raw.kind} RAW, not Bayer: developed from LibRaw's demosaic; "
                           "the learned model does not apply to it")
        step = DEVELOP
        phase(DEVELOP, megapixels)
        developed = developer.develop_frame(raw)
        image = developed.image
        # NaN from damaged metadata (or weights) would be written as black pixels, with success.
        if not torch.isfinite(image).all():
            return failed("the developed image holds NaN or infinite values (damaged RAW metadata?)")
        step = WRITE
        phase(WRITE, megapixels)
        write = task.write
        write_image(task.target, image, fmt=write.fmt, bits=write.bits, quality=write.quality, exif=raw.exif)
    except RawReadError as err:
        return failed(str(err).removeprefix(f"{task.source}: "))
    except OSError as err:
        if step == WRITE:
            return failed(f"cannot write {task.target}: {err.strerror or err}")
        return failed(f"{type(err).__name__}: {err}")
    except MemoryError:
        return failed("out of memory")
    except Exception as err:  # one broken file must not stop the batch
        return failed(f"{type(err).__name__}: {err}")
    return FileResult("done", str(task.target), time.perf_counter() - started, tuple(notices),
                      exposure_ev=developed.exposure_ev)
