"""The batch engine: workers that crash, hang, bloat or are killed; interrupts; claims and the manifest;
concurrent runs; bad paths named on the command line; a full disk.

Faults are injected into the worker processes by ``worker_hooks/sitecustomize.py`` (see there), so the
product carries no test code; each test that needs one says which.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, make_dng, run_cli
from PIL import Image
from typer.testing import CliRunner

from rawrestore.batch import BatchRequest, Job, Limits, WriteOptions, develop_file, run_batch, settings_digest
from rawrestore.batch.claims import STATE_DIR, Owner, claim_path, sweep, try_claim
from rawrestore.batch.engine import cores
from rawrestore.batch.manifest import Manifest, new_record
from rawrestore.cli import app
from rawrestore.dng import write_dng
from rawrestore.pipeline import DevelopOptions

HOOKS = Path(__file__).parent / "worker_hooks"
GiB = 1 << 30


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def hook_env(**hooks) -> dict[str, str]:
    """Environment entries that inject ``hooks`` into the workers of a batch."""
    return {"PYTHONPATH": f"{HOOKS}{os.pathsep}{REPO}", "RAWRESTORE_TEST_HOOKS": json.dumps(hooks)}


def start_cli(*args, cwd: Path | None = None, env: dict | None = None) -> subprocess.Popen:
    """``python -m rawrestore ARGS`` started in its own session (a terminal's process group)."""
    full = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200", "NO_COLOR": "1", "OMP_NUM_THREADS": "1",
            **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "rawrestore", *map(str, args)], cwd=cwd, env=full,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_for_event(log: Path, event: str, process: subprocess.Popen, timeout: float = 120) -> dict:
    """The first ``event`` line of a hook log, once it is there."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists():
            for line in log.read_text().splitlines():
                if json.loads(line)["event"] == event:
                    return json.loads(line)
        if process.poll() is not None:
            raise AssertionError(f"the batch ended first: {process.communicate()}")
        time.sleep(0.05)
    raise AssertionError(f"no {event} event in {timeout} s")


def shots(folder: Path, names: list[str]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [make_dng(folder / name) for name in names]


def temporaries(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.tmp"))


def claims_left(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.claim"))


def complete_jpeg(path: Path) -> bool:
    with Image.open(path) as image:
        image.load()  # a cut-off file fails here
        return image.format == "JPEG" and image.size == (192, 128)


def classical_request(style: str = "natural", **kwargs) -> BatchRequest:
    options, write = DevelopOptions(classical=True, style=style), WriteOptions()
    return BatchRequest(options, write, settings_digest(options, write, None), **kwargs)


# --- a worker's file fails, the batch goes on --------------------------------------------------

def test_a_crash_in_the_decoder_fails_that_file_only_and_it_is_not_tried_again(tmp_path):
    shots(tmp_path / "in", ["a.dng", "b-crash.dng", "c.dng", "d.dng"])
    log = tmp_path / "hooks.log"
    result = run_cli("enhance", tmp_path / "in", "--out-dir", tmp_path / "out", "--classical",
                     env=hook_env(crash_on_open="crash", log=str(log)))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["error: b-crash.dng: the worker crashed while decoding it (SIGSEGV)"]
    assert "3 done, 0 skipped, 1 failed" in result.stdout
    assert sorted(p.name for p in (tmp_path / "out").glob("*.jpg")) == ["a.jpg", "c.jpg", "d.jpg"]
    assert [json.loads(line)["event"] for line in log.read_text().splitlines()].count("crash") == 1


def test_decode_time_memory_and_develop_time_limits_fail_only_their_file(tmp_path, monkeypatch):
    files = shots(tmp_path / "in", ["a-hang.dng", "b-hog.dng", "d.dng"])
    big = tmp_path / "in" / "c-big.dng"  # 12 MP: its classical development takes seconds
    mosaic = np.full((3000, 4000), 3000.0)
    write_dng(big, mosaic, "RGGB", 256.0, 16383.0, np.eye(3), np.ones(3))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    for name, value in hook_env(hang_on_open="hang", hog_on_open="hog").items():
        monkeypatch.setenv(name, value)
    limits = Limits(decode_seconds=5, develop_seconds=0.5, develop_seconds_per_megapixel_step=0, max_memory=GiB)
    out = tmp_path / "out"
    jobs = [Job(f, out / f"{f.stem}.jpg", f.name) for f in sorted([*files, big])]
    result = run_batch(jobs, classical_request(limits=limits))
    assert [(o.label, o.status, o.detail) for o in result.outcomes] == [
        ("a-hang.dng", "failed", "decoding took longer than 5 s"),
        ("b-hog.dng", "failed", "used more than 1 GiB of memory while decoding it (--max-memory)"),
        ("c-big.dng", "failed", "developing took longer than 0.5 s"),
        ("d.dng", "done", str(out / "d.jpg")),
    ]
    assert sorted(p.name for p in out.iterdir()) == [STATE_DIR, "d.jpg"]
    assert temporaries(tmp_path) == [] and claims_left(tmp_path) == []


def test_the_develop_time_limit_grows_with_megapixels_and_steps():
    limits = Limits()
    assert limits.develop_limit(1.0, 1) == 120 and limits.develop_limit(24.0, 0) == 240
    assert limits.develop_limit(24.0, 4) == 960


def test_jobs_run_that_many_workers_with_a_share_of_the_cores_each(tmp_path, monkeypatch):
    files = shots(tmp_path / "in", [f"{i}.dng" for i in range(8)])
    log = tmp_path / "hooks.log"
    for name, value in hook_env(at_replace={".jpg": "sleep:0.5"}, log=str(log)).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    result = run_batch([Job(f, tmp_path / "out" / f"{f.stem}.jpg", f.name) for f in files],
                       classical_request(workers=2))
    assert [o.status for o in result.outcomes] == ["done"] * 8
    events = [json.loads(line) for line in log.read_text().splitlines() if '"written"' in line]
    assert len(events) == 8 and len({e["pid"] for e in events}) == 2
    assert {e["threads"] for e in events} == {max(1, cores() // 2)}


def test_a_developed_image_with_nan_is_a_failure_not_a_black_picture(tmp_path):
    import torch

    from rawrestore.batch import FileTask
    from rawrestore.pipeline import Developed

    class Broken:  # a Developer whose result is NaN, as from damaged metadata
        options = DevelopOptions(classical=True)

        def develop_frame(self, raw):
            return Developed(torch.full((3, 128, 192), float("nan")), 0.0)

    target = tmp_path / "photo.jpg"
    result = develop_file(Broken(), FileTask(make_dng(tmp_path / "photo.dng"), target, WriteOptions()))
    assert result.status == "failed" and "NaN" in result.detail
    assert not target.exists()


# --- interrupts and kills ----------------------------------------------------------------------

@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_abandons_the_current_file_and_reports_what_was_done(tmp_path, signum):
    shots(tmp_path / "in", ["a.dng", "b.dng", "c.dng", "d.dng", "e.dng"])
    log, out = tmp_path / "hooks.log", tmp_path / "out"
    batch = start_cli("enhance", tmp_path / "in", "--out-dir", out, "--classical",
                      env=hook_env(at_replace={"c.jpg": "block"}, log=str(log)))
    blocked = wait_for_event(log, "block", batch)  # c.jpg's temporary is written, not yet renamed
    assert len(temporaries(out)) == 1
    if signum == signal.SIGINT:
        os.killpg(batch.pid, signum)  # as Ctrl-C does: the whole process group
    else:
        batch.send_signal(signum)  # as kill does: the supervisor alone
    stdout, stderr = batch.communicate(timeout=60)
    assert batch.returncode == 128 + signum
    assert "interrupted: 2 of 5 done, rerun to resume" in stdout and "2 done, 0 skipped, 0 failed" in stdout
    assert stderr == ""
    assert sorted(p.name for p in out.glob("*.jpg")) == ["a.jpg", "b.jpg"]
    assert temporaries(tmp_path) == [] and claims_left(tmp_path) == []
    with pytest.raises(ProcessLookupError):
        os.kill(blocked["pid"], 0)  # the worker went with it
    if signum == signal.SIGINT:
        rerun = run_cli("enhance", tmp_path / "in", "--out-dir", out, "--classical")
        assert rerun.returncode == 0 and "3 done, 2 skipped, 0 failed" in rerun.stdout


def test_a_batch_killed_mid_write_resumes_with_every_output_whole(tmp_path):
    shots(tmp_path / "in", ["a.dng", "b.dng", "c.dng", "d.dng", "e.dng"])
    log, out = tmp_path / "hooks.log", tmp_path / "out"
    batch = start_cli("enhance", tmp_path / "in", "--out-dir", out, "--classical",
                      env=hook_env(at_replace={"c.jpg": "kill_batch"}, log=str(log)))
    batch.communicate(timeout=120)
    assert batch.returncode == -signal.SIGKILL
    # What a kill -9 mid-write leaves: half a temporary, the claim of a dead run.
    half, = temporaries(out)
    assert half.name.startswith(".c.jpg.") and claims_left(out) == [claim_path(out / "c.jpg")]
    finished = {name: (digest(out / name), (out / name).stat().st_mtime_ns) for name in ("a.jpg", "b.jpg")}
    assert sorted(p.name for p in out.glob("*.jpg")) == ["a.jpg", "b.jpg"]

    rerun = run_cli("enhance", tmp_path / "in", "--out-dir", out, "--classical")
    assert rerun.returncode == 0, rerun.stderr
    assert "3 done, 2 skipped, 0 failed" in rerun.stdout
    assert sorted(p.name for p in out.glob("*.jpg")) == ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"]
    assert all(complete_jpeg(path) for path in out.glob("*.jpg"))
    assert temporaries(tmp_path) == [] and claims_left(tmp_path) == []
    assert {name: (digest(out / name), (out / name).stat().st_mtime_ns) for name in finished} == finished


# --- claims, the manifest, resuming ------------------------------------------------------------

def test_two_runs_on_one_folder_write_each_output_once_with_the_claimers_options(tmp_path):
    names = [f"{i:02d}.dng" for i in range(10)]
    shots(tmp_path / "in", names)
    out = tmp_path / "out"
    slow = hook_env(at_replace={".jpg": "sleep:0.3"})  # so that the two runs overlap
    runs = {style: start_cli("enhance", tmp_path / "in", "--out-dir", out, "--classical", "--color-style", style,
                             env=slow) for style in ("mono", "vivid")}
    results = {style: run.communicate(timeout=240) for style, run in runs.items()}
    assert all(run.returncode == 0 for run in runs.values()), results
    records = [json.loads(line) for line in (out / STATE_DIR / "manifest.jsonl").read_text().splitlines()]
    done = [r for r in records if r["status"] == "done"]
    assert sorted(Path(r["output"]).name for r in done) == [n.replace(".dng", ".jpg") for n in names]
    style_of = {run.pid: style for style, run in runs.items()}
    for record in done:
        with Image.open(record["output"]) as jpeg:
            pixels = np.asarray(jpeg).astype(int)
        grey = np.abs(pixels[..., 0] - pixels[..., 2]).max() <= 2
        assert grey == (style_of[record["pid"]] == "mono"), record
    for style, (stdout, _) in results.items():
        mine = sum(style_of[r["pid"]] == style for r in done)
        assert f"{mine} done, {len(names) - mine} skipped, 0 failed" in stdout
        assert mine == len(names) or "taken by another run" in stdout
    assert temporaries(tmp_path) == [] and claims_left(tmp_path) == []


def test_a_rerun_redoes_outputs_whose_settings_differ_and_skips_the_rest(dng_factory, tmp_path, monkeypatch):
    dng_factory("photo.dng")
    monkeypatch.chdir(tmp_path)

    def enhance(*args: str) -> str:
        result = CliRunner().invoke(app, ["enhance", "photo.dng", "--classical", *args])
        assert result.exit_code == 0, result.stderr
        return result.stdout

    def grey() -> bool:
        with Image.open("photo.jpg") as jpeg:
            pixels = np.asarray(jpeg).astype(int)
        return np.abs(pixels[..., 0] - pixels[..., 2]).max() <= 2

    assert "1 done" in enhance() and not grey()
    assert "1 done" in enhance("--color-style", "mono") and grey()
    assert "1 skipped" in enhance("--color-style", "mono")
    records = [json.loads(line) for line in (tmp_path / STATE_DIR / "manifest.jsonl").read_text().splitlines()]
    assert len(records) == 2 and records[0]["settings"] != records[1]["settings"]
    assert records[1]["input"] == str(tmp_path / "photo.dng") and records[1]["output"] == str(tmp_path / "photo.jpg")
    assert records[1]["status"] == "done" and records[1]["error"] is None and records[1]["seconds"] > 0


def test_a_claim_is_exclusive_while_its_run_lives_and_stale_once_it_is_gone(tmp_path):
    output = tmp_path / "photo.jpg"
    tmp = tmp_path / ".photo.jpg.0123abcd.tmp"
    live = Owner.current()
    claim = try_claim(output, live, "s1")
    tmp.write_bytes(b"half a picture")
    other = Owner.current(run="another run")
    assert try_claim(output, other, "s2") == live  # held: told who holds it
    sweep(output, other)
    assert tmp.exists()  # a live run's temporary is never touched
    claim.release()
    assert not claim.path.exists() and not tmp.exists()

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = Owner(socket.gethostname(), int(dead.stdout), None, "a killed run")
    assert try_claim(output, gone, "s1") is not None and claim_path(output).exists()
    tmp.write_bytes(b"half a picture")
    taken = try_claim(output, other, "s2")
    assert taken.path == claim_path(output) and not tmp.exists()  # stale: taken over, its temporary removed
    assert json.loads(claim_path(output).read_text())["run"] == "another run"
    taken.release()


def test_a_claim_file_that_does_not_parse_is_held_until_it_is_old(tmp_path):
    output = tmp_path / "photo.jpg"
    path = claim_path(output)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")  # its writer is between create and write, or was killed there
    assert isinstance(try_claim(output, Owner.current(), "s"), Owner)
    os.utime(path, (time.time() - 60, time.time() - 60))
    assert try_claim(output, Owner.current(), "s").path == path


def test_the_manifest_is_read_incrementally_and_skips_torn_lines(tmp_path):
    manifest = Manifest(tmp_path)
    owner = Owner.current()
    manifest.append(new_record(Path("a.dng"), tmp_path / "a.jpg", "s1", "failed", "damaged", 0.1, owner))
    assert manifest.refresh().latest(tmp_path / "a.jpg").status == "failed"
    assert manifest.latest_done(tmp_path / "a.jpg") is None
    with open(manifest.path, "ab") as fh:
        fh.write(b'{"input": "b.dng", "outp')  # a run killed while appending
    manifest.append(new_record(Path("a.dng"), tmp_path / "a.jpg", "s2", "done", None, 0.2, owner))
    assert manifest.refresh().latest_done(Path("/elsewhere/a.jpg")).settings == "s2"  # by name
    with open(manifest.path, "ab") as fh:
        fh.write(b'{"input": "c.dng"')  # being appended: not read until complete
    assert Manifest(tmp_path).refresh().latest(tmp_path / "c.jpg") is None


def test_the_settings_digest_covers_what_shapes_the_output_and_only_that(tmp_path):
    base, write = DevelopOptions(), WriteOptions()
    reference = settings_digest(base, write, "w1")

    def changed(options=base, out=write, weights="w1") -> bool:
        return settings_digest(options, out, weights) != reference

    for field, value in [("style", "vivid"), ("exposure_ev", 0.5), ("auto_exposure", False), ("steps", 2),
                         ("seed", 3), ("classical", True), ("wb", "daylight"), ("strength", 0.5)]:
        assert changed(DevelopOptions(**{field: value})), field
    assert changed(weights="w2") and changed(out=WriteOptions("png", 16)) and changed(out=WriteOptions(quality=80))
    for field, value in [("device", "cpu"), ("tile", 128), ("overlap", 16), ("weights", "hub")]:
        assert not changed(DevelopOptions(**{field: value})), field
    classical = DevelopOptions(classical=True)
    assert settings_digest(classical, write, None) == settings_digest(DevelopOptions(classical=True, steps=4, seed=9),
                                                                      write, "w2")
    assert (settings_digest(classical, WriteOptions("png", 16, 92), None)
            == settings_digest(classical, WriteOptions("png", 16, 50), None))  # quality: JPEG only
    lut = tmp_path / "look.cube"
    lut.write_text("LUT_3D_SIZE 2\n" + "0 0 0\n" * 8)
    first = settings_digest(DevelopOptions(style=str(lut)), write, "w1")
    lut.write_text("LUT_3D_SIZE 2\n" + "1 1 1\n" * 8)
    assert settings_digest(DevelopOptions(style=str(lut)), write, "w1") != first  # by content


def test_a_skipped_output_loses_the_temporaries_a_dead_run_left(tmp_path, monkeypatch):
    source = make_dng(tmp_path / "photo.dng")
    output = tmp_path / "photo.jpg"
    output.write_bytes(b"an earlier run's output")
    stale = tmp_path / ".photo.jpg.89abcdef.tmp"
    stale.write_bytes(b"half of a newer one")
    result = run_batch([Job(source, output, "photo.dng")], classical_request())
    assert [o.status for o in result.outcomes] == ["skipped"]
    assert not stale.exists() and output.read_bytes() == b"an earlier run's output"


# --- paths named on the command line -----------------------------------------------------------

def test_bad_paths_named_are_one_line_each_and_the_rest_is_developed(dng_factory, tmp_path, monkeypatch):
    dng_factory("good.dng")
    (tmp_path / "dangling.dng").symlink_to(tmp_path / "gone.dng")
    (tmp_path / "loop.dng").symlink_to(tmp_path / "loop.dng")
    (tmp_path / "folder.dng").mkdir()
    os.mkfifo(tmp_path / "fifo.dng")
    named = ["missing.dng", "dangling.dng", "loop.dng", "folder.dng", "fifo.dng", "good.dng"]
    expected = ["error: missing.dng: no such file or folder",
                "error: dangling.dng: broken symbolic link (its target does not exist)",
                "error: loop.dng: symbolic link loop",
                "error: folder.dng: no RAW files in this folder (use --recursive for subfolders)",
                "error: fifo.dng: not a regular file"]
    if os.geteuid() != 0:  # root reads any file
        (tmp_path / "locked.dng").write_bytes((tmp_path / "good.dng").read_bytes())
        (tmp_path / "locked.dng").chmod(0)
        named.insert(-1, "locked.dng")
        expected.append("error: locked.dng: cannot read (Permission denied)")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["enhance", "--classical", *named])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == expected
    assert f"1 done, 0 skipped, {len(expected)} failed" in result.stdout
    assert (tmp_path / "good.jpg").exists()
    # The same entries found by scanning a folder are passed over: the batch is the good file.
    rerun = CliRunner().invoke(app, ["enhance", "--classical", "--overwrite", "."])
    assert rerun.exit_code == 0 and rerun.stderr == "" and "1 done, 0 skipped, 0 failed" in rerun.stdout


def test_only_empty_folders_is_a_usage_error(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["enhance", "a", "b"])
    assert result.exit_code == 2 and result.stderr.strip().splitlines() == [
        "error: a: no RAW files in this folder (use --recursive for subfolders)"]


# --- a full disk -------------------------------------------------------------------------------

def test_a_short_tiff_write_on_a_full_disk_says_so(tmp_path, monkeypatch):
    import errno
    import shutil

    import torch

    from rawrestore import output

    def short_write(path, pixels, quality, meta):  # what tifffile (numpy's tofile) does on a full disk
        Path(path).write_bytes(b"\0" * 1000)
        raise OSError("1179648 requested and 523848 written")

    monkeypatch.setitem(output._WRITERS, "tiff", short_write)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(10 ** 9, 10 ** 9, 2048))
    with pytest.raises(OSError) as raised:
        output.write_image(tmp_path / "photo.tif", torch.zeros(3, 128, 192), fmt="tiff", bits=16)
    assert raised.value.errno == errno.ENOSPC and raised.value.strerror == "No space left on device"
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_fails_the_file_in_one_line(dng_factory, tmp_path):
    """On a real full file system: a 64 KiB tmpfs in a private mount namespace (skipped where
    unprivileged namespaces are not allowed)."""
    source = dng_factory("photo.dng")
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("no unprivileged mount namespaces here")
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200", "NO_COLOR": "1", "OMP_NUM_THREADS": "1"}
    script = (f"mount -t tmpfs -o size=64k none {disk} && {sys.executable} -m rawrestore enhance {source} "
              f"--classical --format tiff --out-dir {disk}; code=$?; ls -A {disk}; exit $code")
    result = subprocess.run(["unshare", "-rm", "sh", "-c", script], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1
    line, = result.stderr.strip().splitlines()
    assert line.startswith("error: ")
    assert line.endswith(f"photo.dng: cannot write {disk}/photo.tif: No space left on device")
    assert "0 done, 0 skipped, 1 failed" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == STATE_DIR  # the disk's listing: no temporary left
