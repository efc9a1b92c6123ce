"""The ``rawrestore`` command line: parse options, call the library, report.

The work lives in the library (rawio reads, pipeline develops, output writes, styles colour);
this module turns options into calls and outcomes into messages and exit codes:
0 every file done or skipped, 1 some file failed, 2 a usage error (nothing was processed).
"""
from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, List, NoReturn, Optional

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from . import __version__
from .output import FORMAT_EXTENSIONS, format_for, write_image
from .pipeline import DEFAULT_STEPS
from .rawio import RawImage, RawReadError, iter_raw_files, read_raw

if TYPE_CHECKING:  # the pipeline (torch models) loads only once a command needs it
    from .pipeline import Developer

EXIT_FAILED = 1
EXIT_USAGE = 2

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Develop camera RAW files into finished sRGB JPEG, TIFF or PNG images.")
stdout = Console(soft_wrap=True)
stderr = Console(stderr=True, soft_wrap=True)

# LibRaw prints its own complaints ("Unexpected end of file") straight to file descriptor 2.
# read_raw already turns those cases into one-line errors, so decoding runs with fd 2 muted;
# the lock keeps our own stderr lines from being written while it is muted.
_stderr_lock = threading.Lock()


class OutputFormat(str, Enum):
    jpeg = "jpeg"
    tiff = "tiff"
    png = "png"


# --- Messages -------------------------------------------------------------------------------

def say_error(message: str) -> None:
    with _stderr_lock:
        stderr.print(f"[bold red]error:[/] {escape(message)}", highlight=False)


def say_notice(message: str) -> None:
    with _stderr_lock:
        stderr.print(f"[yellow]note:[/] {escape(message)}", highlight=False)


def usage_error(message: str) -> NoReturn:
    say_error(message)
    raise typer.Exit(EXIT_USAGE)


@contextmanager
def _libraw_muted() -> Iterator[None]:
    with _stderr_lock:
        sys.stderr.flush()
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)


def decode(path: Path) -> RawImage:
    with _libraw_muted():
        return read_raw(path)


def _version_callback(value: bool) -> None:
    if value:
        stdout.print(f"rawrestore {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                      help="Show the version and exit.")) -> None:
    """Develop camera RAW files into finished sRGB JPEG, TIFF or PNG images."""


# --- enhance: planning ----------------------------------------------------------------------

@dataclass
class Job:
    source: Path
    target: Path
    label: str  # how the file is named in messages: as given, or relative to the given folder


@dataclass
class Outcome:
    label: str
    status: str  # 'done' | 'skipped' | 'failed'
    detail: str  # the output written, or why not
    seconds: float = 0.0


def collect_inputs(paths: list[Path], recursive: bool) -> list[tuple[Path, Path]]:
    """(file, the folder its name is relative to) for every input, in order, without repeats."""
    found: dict[Path, tuple[Path, Path]] = {}
    for path in paths:
        if not path.exists():
            usage_error(f"{path}: no such file or folder")
        if path.is_dir():
            files = iter_raw_files(path, recursive)
            if not files:
                usage_error(f"{path}: no RAW files in this folder"
                            + ("" if recursive else " (use --recursive for subfolders)"))
            pairs = [(file, path) for file in files]
        else:
            pairs = [(path, path.parent)]
        for file, root in pairs:
            found.setdefault(file.resolve(), (file, root))
    return list(found.values())


def plan_jobs(inputs: list[tuple[Path, Path]], output: Path | None, out_dir: Path | None,
              extension: str) -> list[Job]:
    if output is not None:
        (source, root), = inputs
        jobs = [Job(source, output, str(source))]
    else:
        jobs = [Job(source, (out_dir / source.relative_to(root) if out_dir else source).with_suffix(extension),
                    str(source) if out_dir is None else str(source.relative_to(root)))
                for source, root in inputs]
    claimed: dict[Path, Job] = {}
    for job in jobs:
        if job.target.resolve() == job.source.resolve():
            usage_error(f"{job.source}: the output would replace the input; choose another --format or -o")
        other = claimed.setdefault(job.target.resolve(), job)
        if other is not job:
            usage_error(f"{other.source} and {job.source} would both be written to {job.target}")
    return jobs


def ensure_writable(folder: Path) -> None:
    """Create ``folder`` if needed and prove a file can be created in it (os.access lies for root)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder, prefix=".rawrestore-probe-"):
            pass
    except OSError as err:
        usage_error(f"{folder}: output folder is not writable ({err.strerror or err})")


# --- enhance: running -----------------------------------------------------------------------

def _failure(job: Job, reason: str, started: float, debug: bool) -> Outcome:
    say_error(f"{job.label}: {reason}")
    if debug:
        with _stderr_lock:
            stderr.print_exception()
    return Outcome(job.label, "failed", reason, time.perf_counter() - started)


def run_jobs(jobs: list[Job], developer: Developer, write_options: dict, debug: bool) -> list[Outcome]:
    """Develop and write every job; the next file decodes in the background meanwhile."""
    outcomes: list[Outcome] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeRemainingColumn(), TextColumn("{task.fields[current]}"))
    # On stderr, like the error lines, so that rich keeps those above the bar.
    with Progress(*columns, console=stderr, transient=True, disable=not stderr.is_terminal) as progress, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode") as pool:
        task = progress.add_task("developing", total=len(jobs), current="")
        upcoming: Future | None = pool.submit(decode, jobs[0].source) if jobs else None
        for index, job in enumerate(jobs):
            started = time.perf_counter()
            current = upcoming
            upcoming = pool.submit(decode, jobs[index + 1].source) if index + 1 < len(jobs) else None
            try:
                progress.update(task, current=f"{job.label}: decode")
                raw = current.result()
                if not raw.is_bayer and not developer.options.classical:
                    say_notice(f"{job.label}: {raw.kind} RAW, not Bayer: developed from LibRaw's "
                               "demosaic; the learned model does not apply to it")
                progress.update(task, current=f"{job.label}: develop")
                image = developer.develop(raw)
                progress.update(task, current=f"{job.label}: write")
                write_image(job.target, image, exif=raw.exif, **write_options)
                outcomes.append(Outcome(job.label, "done", str(job.target), time.perf_counter() - started))
            except RawReadError as err:
                outcomes.append(_failure(job, str(err).removeprefix(f"{job.source}: "), started, debug))
            except OSError as err:
                outcomes.append(_failure(job, f"cannot write {job.target}: {err.strerror or err}", started, debug))
            except Exception as err:  # one broken file must not stop the batch
                outcomes.append(_failure(job, f"{type(err).__name__}: {err}", started, debug))
            progress.advance(task)
    return outcomes


def print_summary(outcomes: list[Outcome], seconds: float) -> None:
    table = Table(title="rawrestore", title_justify="left")
    for column in ("file", "status", "output / reason"):
        table.add_column(column, overflow="fold")
    table.add_column("s", justify="right")
    colours = {"done": "green", "skipped": "dim", "failed": "bold red"}
    for outcome in outcomes:
        table.add_row(escape(outcome.label), f"[{colours[outcome.status]}]{outcome.status}[/]",
                      escape(outcome.detail), f"{outcome.seconds:.1f}" if outcome.status != "skipped" else "")
    stdout.print(table)
    counts = {status: sum(o.status == status for o in outcomes) for status in colours}
    stdout.print(f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed "
                 f"in {seconds:.1f} s", highlight=False)


@app.command()
def enhance(
    paths: List[Path] = typer.Argument(..., show_default=False, help="RAW files and folders of RAW files."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Output file (only with one input file)."),
    out_dir: Optional[Path] = typer.Option(None, "--out-dir",
                                           help="Write outputs to this folder (created if needed) "
                                                "instead of beside the inputs."),
    fmt: Optional[OutputFormat] = typer.Option(None, "--format", show_default=False,
                                               help="Output format (default: from -o's extension, else jpeg)."),
    bits: Optional[int] = typer.Option(None, "--bits", show_default=False,
                                       help="Bits per channel, 8 or 16, for TIFF and PNG "
                                            "(default: 16; JPEG is always 8)."),
    quality: int = typer.Option(92, "--quality", min=1, max=100, help="JPEG quality."),
    overwrite: bool = typer.Option(False, "--overwrite",
                                   help="Replace existing outputs (by default they are skipped, "
                                        "so rerunning a batch resumes it)."),
    recursive: bool = typer.Option(False, "--recursive", help="Also take RAW files in subfolders."),
    color_style: str = typer.Option("natural", "--color-style",
                                    help="A style name (see 'rawrestore styles'), a reference "
                                         "image or a .cube LUT."),
    exposure: float = typer.Option(0.0, "--exposure", help="Exposure compensation in EV (stops)."),
    no_auto_exposure: bool = typer.Option(False, "--no-auto-exposure", help="Do not lift very dark frames."),
    classical: bool = typer.Option(False, "--classical",
                                   help="Use the fast classical ISP only, without the learned model."),
    steps: int = typer.Option(DEFAULT_STEPS, "--steps",
                              help="Diffusion sampling steps: 1 (deterministic), 2, 4 or 8; 0 skips the diffusion (faster; "
                                   "with the shipped weights 0 and 2-8 steps score within 0.04 dB of 1: README)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or mps (half precision on CUDA)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sampler's noise: same seed, same output."),
    weights: Optional[str] = typer.Option(None, "--weights",
                                          help="A .safetensors weights file, or 'hub' for the published copy "
                                               "(default: the weights shipped with rawrestore)."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks of failures."),
) -> None:
    """Develop RAW files to sRGB images, beside the inputs (photo.dng -> photo.jpg) by default."""
    from .pipeline import Developer, DevelopOptions

    if output is not None and out_dir is not None:
        usage_error("use either -o/--output or --out-dir, not both")
    if output is not None and output.is_dir():
        usage_error(f"{output}: -o/--output names a file; use --out-dir for a folder")
    guessed = format_for(output) if output is not None else None
    fmt_name = fmt.value if fmt else guessed or "jpeg"
    if bits not in (None, 8, 16):
        usage_error(f"--bits must be 8 or 16, not {bits}")
    if fmt_name == "jpeg" and bits == 16:
        usage_error("JPEG is 8-bit only; use --format tiff or png for 16 bits")
    inputs = collect_inputs(paths, recursive)
    if output is not None and len(inputs) != 1:
        usage_error(f"-o/--output takes one input file, got {len(inputs)}; use --out-dir")
    jobs = plan_jobs(inputs, output, out_dir, FORMAT_EXTENSIONS[fmt_name])
    try:
        developer = Developer(DevelopOptions(exposure_ev=exposure, auto_exposure=not no_auto_exposure,
                                             style=color_style, classical=classical, steps=steps,
                                             device=device, seed=seed, weights=weights))
    except ValueError as err:  # a bad option value: style, steps, device
        usage_error(str(err))
    except Exception as err:  # the model cannot be set up (weights missing or damaged)
        say_error(str(err))
        if debug:
            stderr.print_exception()
        raise typer.Exit(EXIT_FAILED)
    for folder in sorted({job.target.parent for job in jobs}):
        ensure_writable(folder)

    started = time.perf_counter()
    outcomes = {job.target: Outcome(job.label, "skipped", f"{job.target} exists (use --overwrite)")
                for job in jobs if not overwrite and job.target.exists()}
    todo = [job for job in jobs if job.target not in outcomes]
    write_options = dict(fmt=fmt_name, bits=8 if fmt_name == "jpeg" else bits or 16, quality=quality)
    outcomes.update(zip((job.target for job in todo), run_jobs(todo, developer, write_options, debug)))
    ordered = [outcomes[job.target] for job in jobs]
    print_summary(ordered, time.perf_counter() - started)
    if any(outcome.status == "failed" for outcome in ordered):
        raise typer.Exit(EXIT_FAILED)


# --- info -----------------------------------------------------------------------------------

_ORIENTATIONS = {1: "upright", 2: "mirrored", 3: "rotated 180°", 4: "mirrored vertically",
                 5: "transposed", 6: "rotated 90° clockwise", 7: "transverse",
                 8: "rotated 90° counter-clockwise"}


def _seconds(value: float) -> str:
    return f"1/{round(1 / value)} s" if value < 0.5 else f"{value:g} s"


def _numbers(values, digits: int = 4) -> str:
    return "  ".join(f"{v:.{digits}g}" for v in np.asarray(values, dtype=np.float64).ravel())


def describe(raw: RawImage) -> list[tuple[str, str]]:
    """(field, value) rows for ``rawrestore info``; a missing EXIF value shows as '-'."""
    exif = raw.exif

    def shown(key: str, fmt) -> str:
        return fmt(exif[key]) if exif.get(key) else "-"

    height, width = (raw.mosaic if raw.is_bayer else raw.rgb).shape[:2]
    if raw.is_bayer:
        black = "  ".join(f"{site} {level:g}" for site, level in zip(raw.cfa, raw.black.ravel()))
    else:
        black = _numbers(raw.black) + "  (LibRaw already subtracted it)"
    return [
        ("file", str(raw.path)),
        ("make", shown("make", str)),
        ("model", shown("model", str)),
        ("ISO", shown("iso", lambda v: f"{v:g}")),
        ("exposure", shown("exposure_time", _seconds)),
        ("aperture", shown("f_number", lambda v: f"f/{v:.3g}")),
        ("focal length", shown("focal_length", lambda v: f"{v:.3g} mm")),
        ("date", shown("datetime", str)),
        ("CFA layout", raw.cfa if raw.is_bayer else f"none ({raw.kind})"),
        ("size", f"{width} x {height}"),
        ("black levels", black),
        ("white level", f"{raw.white:g}"),
        ("as-shot WB (R G B)", _numbers(raw.wb)),
        ("camera -> XYZ", "\n".join(_numbers(row) for row in raw.cam_to_xyz)),
        ("orientation", f"{raw.orientation} ({_ORIENTATIONS.get(raw.orientation, 'unknown')})"),
    ]


@app.command()
def info(file: Path = typer.Argument(..., show_default=False, help="A RAW file.")) -> None:
    """Show a RAW file's metadata: camera, exposure, CFA layout, levels, white balance, colour matrix."""
    if not file.exists():
        usage_error(f"{file}: no such file")
    try:
        raw = decode(file)
    except RawReadError as err:
        say_error(str(err))
        raise typer.Exit(EXIT_FAILED)
    table = Table(show_header=False, title=escape(file.name), title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for name, value in describe(raw):
        table.add_row(name, escape(value))
    stdout.print(table)


# --- styles ---------------------------------------------------------------------------------

@app.command()
def styles() -> None:
    """List the colour styles for --color-style."""
    from .styles import list_styles

    table = Table(title="colour styles (--color-style)", title_justify="left")
    table.add_column("name", style="bold")
    table.add_column("look")
    for name, description in list_styles():
        table.add_row(name, description)
    stdout.print(table)
    stdout.print("Also accepted: a reference image (.jpg/.png/.tif) whose colour statistics are "
                 "matched, or a .cube 3D LUT file.", highlight=False)


# --- demo, bench, train -----------------------------------------------------------------------

@app.command()
def demo(
    out_dir: Path = typer.Option(Path("rawrestore-demo"), "--out-dir", help="Where to write the demo files."),
    steps: int = typer.Option(DEFAULT_STEPS, "--steps", help="Diffusion sampling steps (0, 1, 2, 4 or 8)."),
    weights: Optional[str] = typer.Option(None, "--weights", help="A .safetensors weights file, or 'hub'."),
) -> None:
    """Make a noisy ISO 12800 DNG from a public-domain photo and develop it (no download)."""
    from .demo import run_demo
    from .pipeline import Developer, DevelopOptions

    try:
        developer = Developer(DevelopOptions(steps=steps, weights=weights))
    except ValueError as err:
        usage_error(str(err))
    ensure_writable(out_dir)
    started = time.perf_counter()
    files = run_demo(out_dir, developer)
    table = Table(title=f"rawrestore demo ({time.perf_counter() - started:.1f} s)", title_justify="left")
    table.add_column("file", style="bold")
    table.add_column("what")
    table.add_row(escape(str(files.dng)), f"noisy RAW input, made from {escape(files.source)}")
    table.add_row(escape(str(files.model)), f"rawrestore model, {steps} step{'s' if steps > 1 else ''}: PSNR {files.psnr_model:.2f} dB")
    table.add_row(escape(str(files.classical)), f"classical ISP: PSNR {files.psnr_classical:.2f} dB")
    table.add_row(escape(str(files.ground_truth)), "ground truth (the clean photo)")
    table.add_row(escape(str(files.side_by_side)), "side by side: classical | rawrestore | ground truth")
    stdout.print(table)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench(ctx: typer.Context) -> None:
    """Run the quality benchmark (options: rawrestore bench --help-bench)."""
    from .bench import main as bench_main

    bench_main([("--help" if a == "--help-bench" else a) for a in ctx.args])


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train(ctx: typer.Context) -> None:
    """Train the model on synthetic RAW (options: rawrestore train --help-train)."""
    from .train import main as train_main

    train_main([("--help" if a == "--help-train" else a) for a in ctx.args])


def run() -> NoReturn:
    """The ``rawrestore`` command: :data:`app`, then the process ends without tearing down the
    interpreter.

    A process that has imported torch spends about half a second in that teardown here (a bare
    ``import torch`` too), which a finished command does not need: its outputs are renamed into
    place and its streams are flushed below (README, Speed). Where child processes remain (data
    workers of a training run), the usual exit waits for them."""
    import multiprocessing

    try:
        app(prog_name="rawrestore")
        code = 0
    except SystemExit as done:
        if done.code is None or isinstance(done.code, int):
            code = done.code or 0
        else:  # as the interpreter treats sys.exit("message")
            print(done.code, file=sys.stderr)
            code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    if multiprocessing.active_children():
        sys.exit(code)
    os._exit(code)
