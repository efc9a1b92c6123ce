"""The command line end to end: ``python -m rawrestore`` in a subprocess, as a user runs it."""
from __future__ import annotations

import hashlib
from pathlib import Path

import exifread
import numpy as np
import pytest
import tifffile
from PIL import Image
from typer.testing import CliRunner

from conftest import assert_srgb_icc, make_dng, run_cli
from rawrestore.batch.claims import STATE_DIR
from rawrestore.cli import app


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def hidden_files(folder: Path) -> list[Path]:
    """Hidden files but the batch's own state (its manifest) under .rawrestore."""
    return [p for p in folder.rglob(".*") if STATE_DIR not in p.parts]


def listing(folder: Path) -> list[str]:
    """The names in a folder but the batch's state folder."""
    return sorted(p.name for p in folder.iterdir() if p.name != STATE_DIR)


@pytest.fixture(scope="module")
def developed(tmp_path_factory) -> tuple[Path, str]:
    """A folder with photo.dng developed once by a plain ``enhance photo.dng`` (exit 0)."""
    folder = tmp_path_factory.mktemp("single")
    source = make_dng(folder / "photo.dng", "RGGB")
    before = digest(source)
    result = run_cli("enhance", "photo.dng", "--classical", cwd=folder)
    assert result.returncode == 0, result.stderr
    return folder, before


def test_default_output_is_a_jpeg_beside_the_input(developed):
    folder, before = developed
    assert listing(folder) == ["photo.dng", "photo.jpg"]
    assert digest(folder / "photo.dng") == before
    with Image.open(folder / "photo.jpg") as jpeg:
        assert jpeg.format == "JPEG" and jpeg.size == (192, 128)
        assert_srgb_icc(jpeg.info["icc_profile"])
    with open(folder / "photo.jpg", "rb") as fh:
        tags = exifread.process_file(fh, details=False)
    assert str(tags["Image Make"]) == "TestMake" and str(tags["Image Model"]) == "TestCam 1"
    assert str(tags["EXIF ISOSpeedRatings"]) == "400"
    assert str(tags["Image Orientation"]).startswith("Horizontal")


def test_rerun_skips_existing_output_and_overwrite_rewrites_it(developed):
    folder, _ = developed
    output = folder / "photo.jpg"
    stamp, content = output.stat().st_mtime_ns, digest(output)
    rerun = run_cli("enhance", "photo.dng", "--classical", cwd=folder)
    assert rerun.returncode == 0 and "skipped" in rerun.stdout
    assert output.stat().st_mtime_ns == stamp
    forced = run_cli("enhance", "photo.dng", "--classical", "--overwrite", cwd=folder)
    assert forced.returncode == 0 and "1 done" in forced.stdout
    assert output.stat().st_mtime_ns != stamp
    assert digest(output) == content  # developing is reproducible byte for byte


def test_batch_folder_with_a_bad_file_writes_the_rest_and_exits_1(tmp_path):
    shots = tmp_path / "shots"
    shots.mkdir()
    for cfa in ("RGGB", "BGGR", "GRBG", "GBRG"):
        make_dng(shots / f"{cfa.lower()}.dng", cfa)
    (shots / "broken.dng").write_text("not a raw file\n")
    (shots / "notes.txt").write_text("ignored: not a RAW extension\n")
    out = tmp_path / "out" / "tiff"
    result = run_cli("enhance", shots, "--out-dir", out, "--format", "tiff", "--classical")
    assert result.returncode == 1
    assert listing(out) == ["bggr.tif", "gbrg.tif", "grbg.tif", "rggb.tif"]
    assert "broken.dng" in result.stdout and "failed" in result.stdout and "4 done" in result.stdout
    assert result.stderr.strip().splitlines() == [
        "error: broken.dng: not a RAW file LibRaw can read (unknown format or cut-off header)"]
    assert (result.stdout + result.stderr).count("not a RAW file") == 1  # not repeated in the summary
    means = []
    for tif in sorted(out.glob("*.tif")):
        with tifffile.TiffFile(tif) as handle:
            page = handle.pages[0]
            assert page.dtype == np.uint16 and page.shape == (128, 192, 3)
            assert_srgb_icc(page.tags["InterColorProfile"].value)
            assert page.tags["Make"].value == "TestMake"
            means.append(page.asarray().reshape(-1, 3).mean(0) / 65535)
    # Every Bayer layout develops to the same picture.
    np.testing.assert_allclose(means, [means[0]] * 4, atol=0.01)
    assert hidden_files(tmp_path) == []


def test_output_option_takes_the_format_from_its_extension(dng_factory, tmp_path):
    source = dng_factory("photo.dng")
    result = run_cli("enhance", source, "-o", tmp_path / "result.png", "--color-style", "mono", "--classical")
    assert result.returncode == 0, result.stderr
    data = (tmp_path / "result.png").read_bytes()
    assert data[:4] == b"\x89PNG" and data[24:26] == b"\x10\x02"  # IHDR: 16-bit RGB
    with Image.open(tmp_path / "result.png") as png:
        assert_srgb_icc(png.info["icc_profile"])
        pixels = np.asarray(png.convert("RGB")).astype(int)
    assert np.array_equal(pixels[..., 0], pixels[..., 2])  # the style reached the pixels


def test_each_bad_input_gives_one_error_line_and_exit_1(dng_factory, tmp_path):
    good = dng_factory("good.dng")
    (tmp_path / "text.dng").write_text("hello, I am not a RAW file\n")
    Image.new("RGB", (16, 16)).save(tmp_path / "jpeg.dng", format="JPEG")
    (tmp_path / "empty.dng").write_bytes(b"")
    (tmp_path / "truncated.dng").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    names = ["text.dng", "jpeg.dng", "empty.dng", "truncated.dng"]
    before = {name: digest(tmp_path / name) for name in names}
    result = run_cli("enhance", *names, "--classical", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: text.dng: not a RAW file LibRaw can read (unknown format or cut-off header)",
        "error: jpeg.dng: not a RAW file LibRaw can read (unknown format or cut-off header)",
        "error: empty.dng: empty file (0 bytes)",
        "error: truncated.dng: damaged or truncated RAW (LibRawIOError)",
    ]
    assert {name: digest(tmp_path / name) for name in names} == before
    assert listing(tmp_path) == sorted(names + ["good.dng"])


def test_a_missing_path_is_a_failure_in_the_summary(tmp_path):
    result = run_cli("enhance", "missing.dng", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["error: missing.dng: no such file or folder"]
    assert "missing.dng" in result.stdout and "0 done, 0 skipped, 1 failed" in result.stdout


# The other usage errors run in-process (same Typer app, same code path) to keep the suite fast:
# every subprocess pays ~2.5 s importing torch.
@pytest.mark.parametrize("args, message", [
    (["empty"], "empty: no RAW files in this folder"),
    (["a.dng", "b.dng", "-o", "x.jpg"], "-o/--output takes one input file, got 2"),
    (["a.dng", "--color-style", "sepia"], "unknown colour style 'sepia'"),
    (["a.dng", "--out-dir", "file.txt/out"], "file.txt/out: output folder is not writable"),
    (["a.dng", "--bits", "16"], "JPEG is 8-bit only"),
    (["a.dng", "--format", "png", "--bits", "12"], "--bits must be 8 or 16"),
    (["c.tif", "-o", "c.tif"], "the output would replace the input"),
    (["a.dng", "a.nef", "--name-template", "x{stem}"], "a.dng and a.nef would both be written to xa.jpg"),
    (["a.dng", "--name-template", "{stem}/{ext}"], "must make a file name, not a path"),
    (["a.dng", "--name-template", "{name}"], "use the fields {stem}, {ext}, {parent}, not {name}"),
    (["a.dng", "-o", "x.jpg", "--name-template", "{stem}_{ext}"], "-o/--output names its one output itself"),
    (["a.dng", "-o", "x.dng"], "needs one of the extensions .jpg, .jpeg, .tif, .tiff, .png (DNG export is not"),
    (["a.dng", "-o", "x.webp"], "needs one of the extensions .jpg, .jpeg, .tif, .tiff, .png"),
    (["a.dng", "-o", "x"], "needs one of the extensions .jpg, .jpeg, .tif, .tiff, .png"),
    (["a.dng", "-o", "y.png", "--format", "tiff"], "y.png: --format tiff writes .tif or .tiff files, not .png"),
    (["a.dng", "-o", "y.jpg", "--format", "tif"], "y.jpg: --format tif writes .tif or .tiff files, not .jpg"),
    (["a.dng", "--wb", "purple"], "--wb purple: unknown white balance"),
    (["a.dng", "--wb", "900"], "--wb 900: a temperature must be 2000-25000 K"),
    (["a.dng", "--strength", "1.5"], "strength must be between 0 and 1, not 1.5"),
    (["a.dng", "--chroma-strength", "-0.1"], "chroma strength must be between 0 and 1, not -0.1"),
])
def test_usage_errors_exit_2_with_one_line_and_write_nothing(dng_factory, tmp_path, monkeypatch,
                                                             args, message):
    dng_factory("a.dng")
    dng_factory("b.dng")
    (tmp_path / "a.nef").write_bytes((tmp_path / "a.dng").read_bytes())
    (tmp_path / "c.tif").write_bytes((tmp_path / "a.dng").read_bytes())
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("a file, so nothing can be created below it")
    before = sorted(p.name for p in tmp_path.iterdir())
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["enhance", "--classical", *args])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_info_shows_metadata_and_cfa_layout(dng_factory):
    result = run_cli("info", dng_factory("photo.dng", "GBRG"))
    assert result.returncode == 0, result.stderr
    for expected in ("GBRG", "TestMake", "TestCam 1", "400", "1/250 s", "f/2.8", "35 mm",
                     "2024:05:17 09:30:05", "192 x 128", "16383", "camera -> XYZ",
                     "2.5  1  1.402  (about 6500 K)"):  # make_dng balances for D65
        assert expected in result.stdout


def test_styles_lists_the_registry():
    result = run_cli("styles")
    assert result.returncode == 0
    for name in ("natural", "neutral", "vivid", "warm", "cool", "mono", ".cube"):
        assert name in result.stdout


def test_real_camera_files_develop(shared_dir, tmp_path):
    raw_dir = shared_dir / "data" / "raw"
    crop = raw_dir / "derived_cfa_phases" / "canon_kissx4_crop_grbg.dng"
    linear = raw_dir / "lg_h815_linear_sample_1mp.dng"
    result = run_cli("enhance", crop, linear, "--out-dir", tmp_path, "--classical")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert listing(tmp_path) == ["canon_kissx4_crop_grbg.jpg", "lg_h815_linear_sample_1mp.jpg"]
    with Image.open(tmp_path / "lg_h815_linear_sample_1mp.jpg") as jpeg:
        assert jpeg.size == (600, 338) and jpeg.getexif()[0x010F] == "LG Mobile"


def test_non_bayer_file_gets_a_notice_with_the_model(shared_dir, tmp_path):
    from rawrestore.weights import WeightsError, load_weights

    try:
        load_weights()
    except WeightsError as err:
        pytest.skip(f"no model weights: {err}")
    linear = shared_dir / "data" / "raw" / "lg_h815_linear_sample_1mp.dng"
    result = run_cli("enhance", linear, "--out-dir", tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines() == [
        "note: lg_h815_linear_sample_1mp.dng: linear RAW, not Bayer: developed from LibRaw's "
        "demosaic; the learned model does not apply to it"]


@pytest.mark.parametrize("raised, code, stderr_text", [(SystemExit(None), 0, ""), (SystemExit(2), 2, ""),
                                                     (SystemExit("bad input"), 1, "bad input\n")])
def test_run_ends_the_process_with_the_commands_exit_code(monkeypatch, capsys, raised, code, stderr_text):
    import rawrestore.cli as cli

    def command(**_):
        raise raised

    ended = []
    monkeypatch.setattr(cli, "app", command)
    monkeypatch.setattr(cli.os, "_exit", ended.append)
    cli.run()
    assert ended == [code] and capsys.readouterr().err == stderr_text


@pytest.mark.parametrize("command", [[], ["enhance"], ["info"], ["styles"], ["demo"]])
def test_h_is_help_on_every_command(command):
    result = CliRunner().invoke(app, [*command, "-h"])
    assert result.exit_code == 0 and "Usage: " in result.stdout


@pytest.mark.parametrize("command, option", [("bench", "--photos"), ("train", "--data")])
@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_bench_and_train_help_lists_their_own_options(command, option, flag):
    result = CliRunner().invoke(app, [command, flag])
    assert result.exit_code == 0
    assert result.stdout.startswith(f"usage: rawrestore {command} ") and option in result.stdout


def test_bench_without_photos_names_the_data_and_the_option(tmp_path, capsys):
    from rawrestore import bench

    with pytest.raises(SystemExit) as stopped:
        bench.main(["--photos", str(tmp_path / "none"), "--workdir", str(tmp_path / "work")])
    assert stopped.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no validation photos under ")
    assert "clean photos" in lines[0] and "--photos DIR" in lines[0]


def test_hub_weights_offline_fail_fast_in_one_line(dng_factory, tmp_path):
    import time

    source = dng_factory("photo.dng")
    unreachable = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")}  # port 9: refused
    started = time.perf_counter()
    result = run_cli("enhance", source, "--weights", "hub", env=unreachable)
    assert result.returncode == 1 and time.perf_counter() - started < 12  # was 24 s of retries
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: weights ") and "cannot be reached" in lines[0]


@pytest.mark.parametrize("alias, extension, magic", [("jpg", ".jpg", b"\xff\xd8"), ("TIF", ".tif", b"II*\x00")])
def test_format_aliases(dng_factory, tmp_path, monkeypatch, alias, extension, magic):
    dng_factory("a.dng")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["enhance", "--classical", "a.dng", "--format", alias])
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / f"a{extension}").read_bytes()[:4].startswith(magic)


def test_inputs_sharing_a_stem_are_named_apart(dng_factory, tmp_path, monkeypatch):
    dng_factory("a.dng")
    (tmp_path / "a.NEF").write_bytes((tmp_path / "a.dng").read_bytes())
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["enhance", "--classical", "a.dng", "a.NEF"])
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in tmp_path.glob("*.jpg")) == ["a.jpg", "a_NEF.jpg"]
    assert result.stderr.strip().splitlines() == [
        "note: a.dng and a.NEF share the name a.jpg: writing a.NEF to a_NEF.jpg"]
    templated = CliRunner().invoke(app, ["enhance", "--classical", ".", "--out-dir", "out",
                                         "--name-template", "{parent}-{stem}_{ext}"])
    assert templated.exit_code == 0, templated.stderr
    folder = tmp_path.name
    assert listing(tmp_path / "out") == [f"{folder}-a_NEF.jpg", f"{folder}-a_dng.jpg"]


def test_the_summary_shows_the_exposure_applied(dng_factory, tmp_path, monkeypatch):
    from rawrestore.pipeline import Developer, DevelopOptions
    from rawrestore.rawio import read_raw

    dng_factory("dark.dng", exposure=1 / 16)
    dng_factory("normal.dng")
    expected = Developer(DevelopOptions(classical=True, exposure_ev=0.5)).develop_frame(
        read_raw(tmp_path / "dark.dng")).exposure_ev
    assert expected > 3.5  # the lift, plus the --exposure
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["enhance", "--classical", "dark.dng", "normal.dng", "--exposure", "0.5"],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.stderr
    rows = {line.split()[1]: line for line in result.stdout.splitlines() if ".dng" in line}
    assert f"{expected:+.2f}" in rows["dark.dng"] and "+0.50" in rows["normal.dng"]
