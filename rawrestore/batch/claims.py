"""Claim files: before a run develops an output it creates ``DST/.rawrestore/claims/NAME.claim``
exclusively (``O_CREAT | O_EXCL``, atomic on local disks and on NFS v3 and later), so that of any
number of runs on one folder exactly one develops each output. The claim names its holder (host,
pid, the process's start time, the run, the settings digest); it is removed once the output's
record is in the manifest.

A claim whose process is gone is stale: a run killed outright (SIGKILL, a power cut) leaves its
claims and perhaps a half-written temporary behind, and the next run to claim that output removes
both. A temporary is removed only by a run that holds its output's claim, so a live run's is never
touched. Whether a process on another host is alive cannot be told from here: its claims are held.
"""
from __future__ import annotations

import glob
import json
import os
import socket
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

STATE_DIR = ".rawrestore"
# A claim file that does not parse is one being written, or one its writer was killed while
# writing: after this long it is the latter.
UNREADABLE_CLAIM_SECONDS = 30.0


@dataclass(frozen=True)
class Owner:
    """A run: the process that holds claims and writes records."""

    host: str
    pid: int
    started: str | None  # the process's start time where the system tells it (tells a reused pid apart)
    run: str

    @classmethod
    def current(cls, run: str | None = None) -> Owner:
        return cls(socket.gethostname(), os.getpid(), process_started(os.getpid()), run or uuid.uuid4().hex)

    def alive(self) -> bool:
        if self.host != socket.gethostname():
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # another user's process
            pass
        started = process_started(self.pid)
        return started is None or self.started is None or started == self.started

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}"


def process_started(pid: int) -> str | None:
    """A process's start time in clock ticks since boot (Linux), or None where it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[19].decode() if len(fields) > 19 else None  # field 22, counted after the name


def state_dir(output: Path) -> Path:
    return output.parent / STATE_DIR


def claim_path(output: Path) -> Path:
    return state_dir(output) / "claims" / f"{output.name}.claim"


def temporaries(output: Path) -> list[Path]:
    """Hidden temporaries of ``output`` that :func:`rawrestore.output.write_image` writes beside it."""
    return [Path(p) for p in glob.glob(str(output.parent / f".{glob.escape(output.name)}.*.tmp"))]


@dataclass(frozen=True)
class Claim:
    path: Path
    output: Path

    def release(self) -> None:
        """Remove what a writer of the output may have left, then the claim itself."""
        for tmp in temporaries(self.output):
            tmp.unlink(missing_ok=True)
        self.path.unlink(missing_ok=True)


def try_claim(output: Path, owner: Owner, settings: str) -> Claim | Owner:
    """Claim ``output`` for ``owner``: the :class:`Claim`, or the live :class:`Owner` that holds it.

    A stale claim is taken over, and the temporaries its holder left are removed."""
    path = claim_path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    content = json.dumps({**asdict(owner), "settings": settings, "claimed": time.time()}).encode()
    for _ in range(3):  # a stale claim broken, then a fresh one made; more means a busy race
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder, seen = _read(path)
            if holder is not None and holder.alive():
                return holder
            _break_stale(path, seen)
            continue
        try:
            os.write(fd, content)
        finally:
            os.close(fd)
        claim = Claim(path, output)
        for tmp in temporaries(output):  # a dead writer's: only a claim holder writes them
            tmp.unlink(missing_ok=True)
        return claim
    holder, _ = _read(path)
    return holder or Owner("?", 0, None, "?")


def sweep(output: Path, owner: Owner) -> None:
    """Remove temporaries of ``output`` left by dead runs (claiming it for the moment it takes)."""
    if temporaries(output) or claim_path(output).exists():
        claim = try_claim(output, owner, "")
        if isinstance(claim, Claim):
            claim.release()


def run_marker(folder: Path, run: str) -> Path:
    return folder / STATE_DIR / "runs" / f"{run}.run"


def mark_running(folder: Path, owner: Owner) -> Path:
    """Mark ``owner``'s run as in progress in an output folder, until the marker is removed: a
    record of a run that is still going means a concurrent run, one of a finished run a result."""
    marker = run_marker(folder, owner.run)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(asdict(owner)))
    return marker


def is_running(folder: Path, owner: Owner) -> bool:
    marker = run_marker(folder, owner.run)
    if not marker.exists():
        return False
    if owner.alive():
        return True
    marker.unlink(missing_ok=True)  # a run killed outright
    return False


def _read(path: Path) -> tuple[Owner | None, bytes | None]:
    """The holder a claim file names (None: unreadable and old enough to be a dead writer's, or
    gone), and the bytes read."""
    try:
        data = path.read_bytes()
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None, None
    try:
        fields = json.loads(data)
        return Owner(str(fields["host"]), int(fields["pid"]), fields["started"], str(fields["run"])), data
    except (ValueError, KeyError, TypeError):
        return (None if age > UNREADABLE_CLAIM_SECONDS else Owner("?", 0, None, "?")), data


def _break_stale(path: Path, seen: bytes | None) -> None:
    """Remove the stale claim whose content was ``seen``. It is first renamed to a name of our own,
    so that of two runs breaking it at once only one succeeds; were the renamed file not the one
    seen (another run broke it and claimed afresh in between), it is put back."""
    if seen is None:
        return
    private = path.with_name(f"{path.name}.{uuid.uuid4().hex}.stale")
    try:
        os.rename(path, private)
    except FileNotFoundError:
        return
    if private.read_bytes() == seen:
        private.unlink()
    else:
        os.rename(private, path)
