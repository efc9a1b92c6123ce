"""The ``rawrestore`` command line: parse options, call the library, report.

The work lives in the library (rawio reads, pipeline develops, output writes, styles colour, batch
runs the files in supervised workers); this module turns options into calls and outcomes into
messages and exit codes: 0 every file done or skipped, 1 some file failed, 2 a usage error (nothing
was processed), 128 + the signal when interrupted (130 SIGINT, 143 SIGTERM).
"""
from __future__ import annotations

import os
import re
import sys
import tempfile
import time
from enum import Enum
from pathlib import Path
from typing import List, NoReturn, Optional

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from . import __version__
from .batch import BatchError, BatchRequest, Events, Job, Limits, Outcome, WriteOptions, run_batch, settings_digest
from .batch.engine import cores
from .batch.inputs import NoInputError, collect_inputs
from .naming import DEFAULT_TEMPLATE, FIELDS, TemplateError, check_template, names_apart, output_name
from .output import FORMAT_ALIASES, FORMAT_EXTENSIONS, extensions_of, format_for
from .pipeline import DEFAULT_STEPS
from .rawio import RawImage, RawReadError, read_raw_quietly
from .weights import WeightsError, weights_source
from .whitebalance import correlated_temperature

EXIT_FAILED = 1
EXIT_USAGE = 2

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]},  # every command inherits it
                  help="Develop camera RAW files into finished sRGB JPEG, TIFF or PNG images.")
stdout = Console(soft_wrap=True)
stderr = Console(stderr=True, soft_wrap=True)


class OutputFormat(str, Enum):
    jpeg = "jpeg"
    jpg = "jpg"    # = jpeg (output.FORMAT_ALIASES), as -o x.jpg
    tiff = "tiff"
    tif = "tif"    # = tiff
    png = "png"


# --- Messages -------------------------------------------------------------------------------

def say_error(message: str) -> None:
    stderr.print(f"[bold red]error:[/] {escape(message)}", highlight=False)


def say_warning(message: str) -> None:
    stderr.print(f"[bold yellow]warning:[/] {escape(message)}", highlight=False)


def say_notice(message: str) -> None:
    stderr.print(f"[yellow]note:[/] {escape(message)}", highlight=False)


def usage_error(message: str) -> NoReturn:
    say_error(message)
    raise typer.Exit(EXIT_USAGE)


def _version_callback(value: bool) -> None:
    if value:
        stdout.print(f"rawrestore {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                      help="Show the version and exit.")) -> None:
    """Develop camera RAW files into finished sRGB JPEG, TIFF or PNG images."""


# --- enhance: planning ----------------------------------------------------------------------

def plan_jobs(inputs: list[tuple[Path, Path]], output: Path | None, out_dir: Path | None,
              extension: str, template: str = DEFAULT_TEMPLATE) -> list[Job]:
    if output is not None:
        (source, root), = inputs
        jobs = [Job(source, output, str(source))]
    else:
        jobs = [Job(source, (out_dir / source.relative_to(root).parent if out_dir else source.parent)
                    / output_name(source, template, extension),
                    str(source) if out_dir is None else str(source.relative_to(root)))
                for source, root in inputs]
    claimed: dict[Path, Job] = {}
    for job in jobs:
        if job.target.resolve() == job.source.resolve():
            usage_error(f"{job.source}: the output would replace the input; choose another --format or -o")
        other = claimed.setdefault(job.target.resolve(), job)
        if other is not job and output is None and template == DEFAULT_TEMPLATE:
            # Inputs that differ only in extension (a.dng, a.CR2): named apart, not a stopped batch.
            for name in names_apart(job.source, extension):
                if claimed.setdefault(job.target.with_name(name).resolve(), job) is job:
                    break
            say_notice(f"{other.source} and {job.source} share the name {job.target.name}: "
                       f"writing {job.source} to {name}")
            job.target, other = job.target.with_name(name), job
        if other is not job:
            usage_error(f"{other.source} and {job.source} would both be written to {job.target}"
                        + (" (use a --name-template that tells them apart)" if output is None else ""))
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

class BatchProgress(Events):
    """The batch as it goes: a progress bar on a terminal, each failure and notice as it happens."""

    def __init__(self, progress: Progress, total: int, debug: bool):
        self.progress, self.debug = progress, debug
        self.task = progress.add_task("developing", total=total, current="")

    def phase(self, job: Job, name: str) -> None:
        self.progress.update(self.task, current=f"{job.label}: {name}")

    def notice(self, job: Job, message: str) -> None:
        say_notice(f"{job.label}: {message}")

    def finished(self, outcome: Outcome) -> None:
        if outcome.status == "failed":
            say_error(f"{outcome.label}: {outcome.detail}")
            if self.debug and outcome.trace:
                stderr.print(outcome.trace, highlight=False, markup=False)
        self.progress.advance(self.task)


def progress_bar() -> Progress:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeRemainingColumn(), TextColumn("{task.fields[current]}"))
    # On stderr, like the error lines, so that rich keeps those above the bar.
    return Progress(*columns, console=stderr, transient=True, disable=not stderr.is_terminal)


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)


def memory_size(text: str) -> int:
    """Bytes from '2.5GiB', '2500M', '2.5g' (binary units: memory)."""
    match = _SIZE.match(text)
    if match is None or float(match[1]) <= 0:
        raise ValueError(f"--max-memory {text!r} is not a memory size such as 2.5GiB or 800M")
    return int(float(match[1]) * 1024 ** "bkmgt".index((match[2] or "b").lower()))


def print_summary(outcomes: list[Outcome], seconds: float) -> None:
    table = Table(title="rawrestore", title_justify="left")
    for column in ("file", "status", "output / reason"):
        table.add_column(column, overflow="fold")
    table.add_column("EV", justify="right")
    table.add_column("s", justify="right")
    colours = {"done": "green", "skipped": "dim", "failed": "bold red"}
    for outcome in outcomes:
        # A failure's reason was printed once already, as it happened, on stderr.
        detail = "[dim]see the error above[/]" if outcome.status == "failed" else escape(outcome.detail)
        table.add_row(escape(outcome.label), f"[{colours[outcome.status]}]{outcome.status}[/]", detail,
                      f"{outcome.exposure_ev:+.2f}" if outcome.exposure_ev is not None else "",
                      f"{outcome.seconds:.1f}" if outcome.status != "skipped" else "")
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
    fmt: Optional[OutputFormat] = typer.Option(None, "--format", show_default=False, case_sensitive=False,
                                               help="Output format (default: from -o's extension, else jpeg)."),
    name_template: str = typer.Option(DEFAULT_TEMPLATE, "--name-template",
                                      help="Output names, from the fields "
                                           f"{', '.join('{' + field + '}' for field in FIELDS)} of the input's "
                                           "(e.g. {stem}_{ext}: a.CR2 -> a_CR2.jpg); with the default, inputs "
                                           "that share a stem are named apart."),
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
    exposure: float = typer.Option(0.0, "--exposure",
                                   help="Exposure compensation in EV (stops), added to the auto exposure."),
    no_auto_exposure: bool = typer.Option(False, "--no-auto-exposure",
                                          help="Do not lift dark frames (the auto exposure; the EV applied "
                                               "is in the summary)."),
    wb: str = typer.Option("camera", "--wb",
                           help="White balance: camera (as shot), auto (grey world), daylight, tungsten, "
                                "fluorescent, or a temperature in kelvin (e.g. 4500). The model's input "
                                "stays as shot; the rendering changes."),
    strength: float = typer.Option(1.0, "--strength",
                                   help="How much of the restoration to keep, 0-1: the rest is the classical "
                                        "development of the original, its grain (0 is --classical)."),
    chroma_strength: Optional[float] = typer.Option(None, "--chroma-strength", show_default=False,
                                                    help="The same for the colour noise alone, 0-1 "
                                                         "(default: --strength)."),
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
    workers: int = typer.Option(1, "--jobs", min=1,
                                help="Worker processes developing files at once, each with its share of the "
                                     f"{cores()} cores (default: one, with all of them)."),
    max_memory: str = typer.Option("2.5GiB", "--max-memory",
                                   help="Resident memory a worker may use: a file that needs more fails, "
                                        "and the batch goes on (e.g. 2.5GiB, 800M)."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks of failures."),
) -> None:
    """Develop RAW files to sRGB images, beside the inputs (photo.dng -> photo.jpg) by default."""
    from .pipeline import Developer, DevelopOptions

    if output is not None and out_dir is not None:
        usage_error("use either -o/--output or --out-dir, not both")
    if output is not None and output.is_dir():
        usage_error(f"{output}: -o/--output names a file; use --out-dir for a folder")
    guessed = format_for(output) if output is not None else None
    fmt_name = FORMAT_ALIASES.get(fmt.value, fmt.value) if fmt else guessed or "jpeg"
    if output is not None and guessed is None:
        usage_error(f"{output}: -o/--output needs one of the extensions {', '.join(extensions_of())}"
                    + (" (DNG export is not available yet)" if output.suffix.lower() == ".dng" else ""))
    if output is not None and guessed != fmt_name:
        usage_error(f"{output}: --format {fmt.value} writes {' or '.join(extensions_of(fmt_name))} files, "
                    f"not {output.suffix}")
    if output is not None and name_template != DEFAULT_TEMPLATE:
        usage_error("--name-template names the outputs of a batch; -o/--output names its one output itself")
    try:
        check_template(name_template)
    except TemplateError as err:
        usage_error(str(err))
    if bits not in (None, 8, 16):
        usage_error(f"--bits must be 8 or 16, not {bits}")
    if fmt_name == "jpeg" and bits == 16:
        usage_error("JPEG is 8-bit only; use --format tiff or png for 16 bits")
    try:
        limits = Limits(max_memory=memory_size(max_memory))
        inputs, bad = collect_inputs(paths, recursive)
    except (ValueError, NoInputError) as err:
        usage_error(str(err))
    if output is not None and len(inputs) + len(bad) != 1:
        usage_error(f"-o/--output takes one input file, got {len(inputs) + len(bad)}; use --out-dir")
    jobs = plan_jobs(inputs, output, out_dir, FORMAT_EXTENSIONS[fmt_name], name_template)
    weights_sha256 = None
    if not classical:
        try:
            source = weights_source(weights)
        except WeightsError as err:
            say_error(str(err))
            raise typer.Exit(EXIT_FAILED) from None
        weights_sha256 = source.sha256
        if not source.verified:
            say_warning(f"{source.path}: not a weights file weights.toml lists (sha256 {source.sha256[:12]}…); "
                        "loaded unverified")
    try:
        developer = Developer(DevelopOptions(exposure_ev=exposure, auto_exposure=not no_auto_exposure,
                                             style=color_style, classical=classical, steps=steps,
                                             device=device, seed=seed, weights=weights, wb=wb,
                                             strength=strength, chroma_strength=chroma_strength))
    except ValueError as err:  # a bad option value: style, steps, device, wb, strength
        usage_error(str(err))
    except Exception as err:  # the model cannot be set up (weights missing or damaged)
        say_error(str(err))
        if debug:
            stderr.print_exception()
        raise typer.Exit(EXIT_FAILED)
    for folder in sorted({job.target.parent for job in jobs}):
        ensure_writable(folder)

    write = WriteOptions(fmt_name, 8 if fmt_name == "jpeg" else bits or 16, quality)
    request = BatchRequest(developer.options, write, settings_digest(developer.options, write, weights_sha256),
                           overwrite, workers, limits)
    started = time.perf_counter()
    for problem in bad:
        say_error(f"{problem.label}: {problem.reason}")
    with progress_bar() as progress:
        try:
            result = run_batch(jobs, request, BatchProgress(progress, len(jobs), debug))
        except BatchError as err:
            say_error(str(err))
            raise typer.Exit(EXIT_FAILED) from None
    outcomes = [Outcome(problem.label, "failed", problem.reason) for problem in bad] + result.outcomes
    print_summary(outcomes, time.perf_counter() - started)
    if result.interrupted is not None:
        finished = sum(outcome.status != "failed" for outcome in result.outcomes)
        stdout.print(f"interrupted: {finished} of {len(jobs)} done, rerun to resume", highlight=False)
        raise typer.Exit(128 + result.interrupted)
    if any(outcome.status == "failed" for outcome in outcomes):
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
    kelvin = correlated_temperature(raw)
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
        ("as-shot WB (R G B)", _numbers(raw.wb) + (f"  (about {round(kelvin, -1):.0f} K)" if kelvin else "")),
        ("camera -> XYZ", "\n".join(_numbers(row) for row in raw.cam_to_xyz)),
        ("orientation", f"{raw.orientation} ({_ORIENTATIONS.get(raw.orientation, 'unknown')})"),
    ]


@app.command()
def info(file: Path = typer.Argument(..., show_default=False, help="A RAW file.")) -> None:
    """Show a RAW file's metadata: camera, exposure, CFA layout, levels, white balance, colour matrix."""
    if not file.exists():
        usage_error(f"{file}: no such file")
    try:
        raw = read_raw_quietly(file)
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


# bench and train parse their own options (argparse): every argument, -h and --help included, goes to them.
_PASS_THROUGH = dict(add_help_option=False,
                     context_settings={"allow_extra_args": True, "ignore_unknown_options": True})


@app.command(**_PASS_THROUGH)
def bench(ctx: typer.Context) -> None:
    """Run the quality benchmark (rawrestore bench --help lists its options)."""
    from .bench import main as bench_main

    raise typer.Exit(bench_main(ctx.args))


@app.command(**_PASS_THROUGH)
def train(ctx: typer.Context) -> None:
    """Train the model on synthetic RAW (rawrestore train --help lists its options)."""
    from .train import main as train_main

    train_main(ctx.args)


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
