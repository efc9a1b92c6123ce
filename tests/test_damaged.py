"""Damaged and unusual RAW files: a seeded corpus and seeded mutants through ``info`` and a batch,
monochrome DNGs, tags of odd types. Every file ends in a result or one line, never a traceback, a
stopped batch, or a partial or bogus picture."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from conftest import make_dng, run_cli
from PIL import Image
from rawfaults import WHITE_LEVEL, damaged_corpus, monochrome, mutants, odd_orientation, with_entry, write_all
from typer.testing import CliRunner

from rawrestore.batch import BatchRequest, Job, WriteOptions, run_batch, settings_digest
from rawrestore.batch.claims import STATE_DIR
from rawrestore.cli import app
from rawrestore.pipeline import DevelopOptions
from rawrestore.rawio import read_raw

# What an unexpected exception looks like when it reaches a message: "IndexError: ...".
EXCEPTION = re.compile(r"\b[A-Z]\w*(Error|Exception): ")


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> bytes:
    return make_dng(tmp_path_factory.mktemp("good") / "good.dng").read_bytes()


def developed_size(source: Path) -> tuple[int, int]:
    raw = read_raw(source)
    height, width = (raw.mosaic if raw.is_bayer else raw.rgb).shape[:2]
    return (height, width) if raw.orientation in (5, 6, 7, 8) else (width, height)


def assert_whole_picture(path: Path, size: tuple[int, int]) -> None:
    """A complete image file of the decoded size that is not one flat colour (a bogus output)."""
    with Image.open(path) as image:
        image.load()
        assert image.size == size, path
        assert np.asarray(image).std() > 1, f"{path} is flat"


def test_the_damaged_corpus_fails_file_by_file_with_the_good_files_developed(good, tmp_path, monkeypatch):
    shots = tmp_path / "shots"
    damaged = write_all(shots, damaged_corpus(good))
    goods = [make_dng(shots / "good-rggb.dng"), make_dng(shots / "good-gbrg.dng", "GBRG"),
             make_dng(shots / "good-rotated.dng", orientation=6)]
    (shots / "good-mono.dng").write_bytes(monochrome(good))
    goods.append(shots / "good-mono.dng")
    assert len(damaged) >= 40

    monkeypatch.chdir(shots)
    runner = CliRunner()
    for path in [*damaged, *goods]:
        result = runner.invoke(app, ["info", path.name])
        assert result.exit_code in (0, 1) and not isinstance(result.exception, Exception), path.name
        assert "Traceback" not in result.output
        if result.exit_code == 1:
            line, = result.stderr.strip().splitlines()
            assert line.startswith(f"error: {path.name}: ") and not EXCEPTION.search(line), line

    out = tmp_path / "out"
    batch = run_cli("enhance", shots, "--out-dir", out, "--classical")
    assert batch.returncode == 1 and "Traceback" not in batch.stderr + batch.stdout
    failed = {}
    for line in batch.stderr.strip().splitlines():
        name, reason = re.fullmatch(r"error: (\S+): (.*)", line).groups()
        assert not EXCEPTION.search(reason), line
        failed[name] = reason
    outputs = {path.name for path in out.iterdir()} - {STATE_DIR}
    every = [*damaged, *goods]
    assert f"{len(outputs)} done, 0 skipped, {len(failed)} failed" in batch.stdout
    assert len(outputs) + len(failed) == len(every)  # each file reached its end
    for path in every:
        if path.name in failed:
            assert f"{path.stem}.jpg" not in outputs
        else:
            assert_whole_picture(out / f"{path.stem}.jpg", developed_size(path))
    assert all(good.name not in failed for good in goods)
    assert [p for p in out.rglob("*") if p.name.endswith((".tmp", ".claim"))] == []


def test_seeded_mutants_of_the_tags_end_in_a_picture_or_one_line(good, tmp_path, monkeypatch):
    """A few hundred mutants, their damage in the first 64 KiB (where the IFDs and tags are),
    through ``info``'s reading and one batch."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny frames: threads would only wait for each other
    files = write_all(tmp_path / "mutants", {f"m{i:03d}.dng": data for i, data in enumerate(mutants(good, 300))})
    runner = CliRunner()
    for path in files:  # in process: read_raw and describe, what info runs
        result = runner.invoke(app, ["info", str(path)])
        assert result.exit_code in (0, 1) and not isinstance(result.exception, Exception), path.name
        assert not EXCEPTION.search(result.stderr), result.stderr
    out = tmp_path / "out"
    options, write = DevelopOptions(classical=True), WriteOptions()
    request = BatchRequest(options, write, settings_digest(options, write, None))
    result = run_batch([Job(f, out / f"{f.stem}.jpg", f.name) for f in files], request)
    assert len(result.outcomes) == len(files) and result.interrupted is None
    failures = [o for o in result.outcomes if o.status == "failed"]
    assert not [o.detail for o in failures if EXCEPTION.search(o.detail)]
    for outcome, path in zip(result.outcomes, files, strict=True):
        if outcome.status == "done":
            assert_whole_picture(out / f"{path.stem}.jpg", developed_size(path))
    assert 0 < len(failures) < len(files)  # the mutants do damage, and not all of it fatal


# --- files the reader once failed on (issue 23, bugs 1 and 2) ----------------------------------

def test_a_monochrome_dng_develops_grey_with_and_without_the_model(good, tmp_path):
    mono = tmp_path / "mono.dng"
    mono.write_bytes(monochrome(good))
    info = run_cli("info", mono)
    assert info.returncode == 0 and "none (mono)" in info.stdout
    result = run_cli("enhance", mono, "--classical", "-o", tmp_path / "classical.png")
    assert result.returncode == 0, result.stderr
    with Image.open(tmp_path / "classical.png") as png:
        pixels = np.asarray(png).astype(int)
    assert np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 1], pixels[..., 2])
    assert pixels.std() > 10  # the chart's patches, not a flat frame

    from rawrestore.weights import WeightsError, load_weights

    try:
        load_weights()
    except WeightsError as err:
        pytest.skip(f"no model weights: {err}")
    model = run_cli("enhance", mono, "-o", tmp_path / "model.jpg")
    assert model.returncode == 0, model.stderr
    assert model.stderr.strip().splitlines() == [
        f"note: {mono}: mono RAW, not Bayer: developed from LibRaw's demosaic; the learned model does not apply to it"]


@pytest.mark.parametrize("kind", [2, 5, 7, 11, 12])  # ASCII, RATIONAL, UNDEFINED, FLOAT, DOUBLE
def test_an_orientation_tag_of_an_odd_type_is_ignored(good, tmp_path, kind):
    path = tmp_path / "photo.dng"
    path.write_bytes(odd_orientation(good, kind))
    result = CliRunner().invoke(app, ["info", str(path)])
    assert result.exit_code == 0 and result.exception is None, result.output
    assert read_raw(path).orientation == 1


def test_a_white_level_below_the_black_level_fails_instead_of_developing_black(good, tmp_path):
    path = tmp_path / "photo.dng"
    path.write_bytes(with_entry(good, WHITE_LEVEL, value=100))
    result = run_cli("enhance", path, "--classical")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[0].endswith(
        "photo.dng: damaged RAW (white level 100 is not above the black level 256)")
    assert not (tmp_path / "photo.jpg").exists()
