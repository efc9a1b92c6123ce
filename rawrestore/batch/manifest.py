"""``DST/.rawrestore/manifest.jsonl``: one JSON line per output a run developed or failed on.

The latest line for an output is its record: where it came from, the digest of the settings it was
developed with, how it ended and how long it took. A rerun skips an output whose record says it was
done with the settings asked for, and develops again one whose settings differ. Lines are appended
with one ``write`` each while the output's claim is held, so concurrent runs do not interleave
within a line; a line that does not parse (the end of a run killed while appending) is ignored.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .claims import STATE_DIR, Owner

if TYPE_CHECKING:
    from ..pipeline import DevelopOptions
    from .develop import WriteOptions

MANIFEST = "manifest.jsonl"


@dataclass(frozen=True)
class Record:
    input: str
    output: str
    settings: str           # settings_digest of the run
    status: str             # 'done' | 'failed'
    error: str | None
    seconds: float
    run: str
    host: str
    pid: int
    started: str | None     # the run's process start time (claims.process_started)
    finished: float         # Unix time

    @property
    def owner(self) -> Owner:
        return Owner(self.host, self.pid, self.started, self.run)


class Manifest:
    """The records of one output folder, read incrementally: the file only grows."""

    def __init__(self, folder: Path):
        self.path = folder / STATE_DIR / MANIFEST
        self._offset = 0
        self._latest: dict[str, Record] = {}
        self._latest_done: dict[str, Record] = {}

    @classmethod
    def of(cls, output: Path) -> Manifest:
        return cls(output.parent)

    def refresh(self) -> Manifest:
        """Take in the lines appended since the last read (complete lines only)."""
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except FileNotFoundError:
            return self
        complete = data[:data.rfind(b"\n") + 1]
        self._offset += len(complete)
        for line in complete.splitlines():
            try:
                record = Record(**json.loads(line))
            except (ValueError, TypeError):
                continue
            # By name: the folder may be mounted at another path on another host.
            name = Path(record.output).name
            self._latest[name] = record
            if record.status == "done":
                self._latest_done[name] = record
        return self

    def latest(self, output: Path) -> Record | None:
        return self._latest.get(output.name)

    def latest_done(self, output: Path) -> Record | None:
        return self._latest_done.get(output.name)

    def append(self, record: Record) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(asdict(record)) + "\n").encode()
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":  # a run killed while appending: end its line
                line = b"\n" + line
            os.write(fd, line)
        finally:
            os.close(fd)


def new_record(source: Path, output: Path, settings: str, status: str, error: str | None, seconds: float,
               owner: Owner) -> Record:
    return Record(os.path.abspath(source), os.path.abspath(output), settings, status, error, round(seconds, 3),
                  owner.run, owner.host, owner.pid, owner.started, time.time())


# DevelopOptions fields that do not change the output: where it runs (the CPU's float32 and a GPU's
# half precision differ far below what a picture shows) and the tiling (tiled == untiled, tested).
_NOT_IN_DIGEST = {"device", "tile", "overlap"}
# ... and those that only matter for the model.
_MODEL_ONLY = {"steps", "seed", "weights"}


def settings_digest(options: DevelopOptions, write: WriteOptions, weights_sha256: str | None) -> str:
    """A digest of everything that shapes an output: every development option (new ones included
    by default) but those in ``_NOT_IN_DIGEST``, the weights by their sha256, a style file by its
    content, and the output format."""
    fields = {k: v for k, v in dataclasses.asdict(options).items() if k not in _NOT_IN_DIGEST}
    if options.classical:
        fields = {k: v for k, v in fields.items() if k not in _MODEL_ONLY}
    else:
        fields["weights"] = weights_sha256
    style = Path(options.style).expanduser()
    if style.is_file():  # a reference image or a LUT: what it holds, not what it is called
        fields["style"] = hashlib.sha256(style.read_bytes()).hexdigest()
    fields["write"] = {"fmt": write.fmt, "bits": write.bits}
    if write.fmt == "jpeg":  # the others are lossless
        fields["write"]["quality"] = write.quality
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]
