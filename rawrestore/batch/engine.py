"""The batch engine: files developed by spawned worker processes under a supervisor.

By default one worker uses every core; ``workers=N`` runs N, each with cores/N threads. Each worker
loads the model once and takes one file at a time. The supervisor (the calling process) claims
each output before a worker gets it (:mod:`.claims`), records how it ended (:mod:`.manifest`) and
watches the worker: a crash, a decode past ``Limits.decode_seconds``, a develop (and write) past
:meth:`Limits.develop_limit` or resident memory past ``Limits.max_memory`` (polled: an address-space
limit would also stop the big mappings torch and LibRaw make and never touch) fails that file in
one line, the worker is replaced and the batch goes on. A file is sent to a worker once, so the
file that crashed a worker is not tried again in that run.

SIGINT and SIGTERM abandon the files in progress (their temporaries removed, their claims released)
and return what was done, with the signal, for the caller to report and exit 128 + signal.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path
from typing import TYPE_CHECKING

from .claims import Claim, Owner, is_running, mark_running, sweep, try_claim
from .develop import DECODE, DEVELOP, WRITE, FileResult, FileTask, WriteOptions
from .manifest import Manifest, Record, new_record
from .worker import serve

if TYPE_CHECKING:
    from ..pipeline import DevelopOptions

POLL_SECONDS = 0.1
_DOING = {DECODE: "decoding", DEVELOP: "developing", WRITE: "writing"}


@dataclass
class Job:
    source: Path
    target: Path
    label: str  # how the file is named in messages: as given, or relative to the given folder


@dataclass
class Outcome:
    label: str
    status: str                # 'done' | 'skipped' | 'failed'
    detail: str                # the output written, or why not
    seconds: float = 0.0
    trace: str | None = None   # a failure's traceback in the worker, for --debug
    exposure_ev: float | None = None  # the exposure applied, once developed


@dataclass(frozen=True)
class Limits:
    decode_seconds: float = 60.0
    develop_seconds: float = 120.0                   # at least, however small the file
    develop_seconds_per_megapixel_step: float = 10.0
    max_memory: int = 5 << 29                        # resident bytes per worker: 2.5 GiB

    def develop_limit(self, megapixels: float, steps: int) -> float:
        return max(self.develop_seconds, self.develop_seconds_per_megapixel_step * megapixels * max(1, steps))


@dataclass(frozen=True)
class BatchRequest:
    options: DevelopOptions
    write: WriteOptions
    settings: str              # manifest.settings_digest of options and write
    overwrite: bool = False
    workers: int = 1
    limits: Limits = field(default_factory=Limits)


@dataclass
class BatchResult:
    outcomes: list[Outcome]    # in the jobs' order; files abandoned by an interrupt have none
    interrupted: int | None    # the signal that stopped the batch


class BatchError(Exception):
    """The batch cannot go on at all: a worker cannot be started."""


class Events:
    """What a batch reports as it goes, called in the supervisor; the CLI prints it."""

    def phase(self, job: Job, name: str) -> None:
        """``job`` has begun to decode, develop or write."""

    def notice(self, job: Job, message: str) -> None:
        """Something the user should know about ``job`` that is not a failure."""

    def finished(self, outcome: Outcome) -> None:
        """A file is done, skipped or failed."""


def run_batch(jobs: list[Job], request: BatchRequest, events: Events | None = None) -> BatchResult:
    return _Supervisor(jobs, request, events or Events()).run()


def cores() -> int:
    """The cores this process may use, or fewer where OMP_NUM_THREADS says so (as torch honours it)."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    limit = os.environ.get("OMP_NUM_THREADS", "")
    return min(available, int(limit)) if limit.isdigit() and int(limit) > 0 else available


class _Worker:
    def __init__(self, context, options: DevelopOptions, threads: int):
        self.conn, child = context.Pipe()
        self.process = context.Process(target=serve, args=(child, options, threads, os.getpid()),
                                       name="rawrestore-worker", daemon=True)
        self.process.start()
        child.close()
        self.ready = False
        self.index: int | None = None  # the job in progress
        self.claim: Claim | None = None
        self.phase = DECODE
        self.started = self.deadline = self.limit = 0.0

    @property
    def busy(self) -> bool:
        return self.index is not None

    def start_phase(self, name: str, limit: float) -> None:
        self.phase, self.limit = name, limit
        self.deadline = time.monotonic() + limit

    def kill(self) -> None:
        self.process.kill()
        self.process.join()
        self.conn.close()

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


class _Supervisor:
    def __init__(self, jobs: list[Job], request: BatchRequest, events: Events):
        self.jobs, self.request, self.events = jobs, request, events
        self.limits = request.limits
        self.steps = 0 if request.options.classical else request.options.steps
        self.owner = Owner.current()
        self.manifests: dict[Path, Manifest] = {}
        self.seen: dict[int, Record | None] = {}  # each output's record when the batch was planned
        self.outcomes: dict[int, Outcome] = {}
        self.signal: int | None = None
        self.context = multiprocessing.get_context("spawn")  # a fork would copy torch's threads' state

    def run(self) -> BatchResult:
        workers: list[_Worker] = []
        markers: list[Path] = []
        trapped = self._trap_signals()
        try:
            for folder in sorted({job.target.parent for job in self.jobs}):
                markers.append(mark_running(folder, self.owner))
            pending = self._plan()
            threads = max(1, cores() // self.request.workers)
            while self.signal is None and (pending or any(w.busy for w in workers)):
                wanted = min(self.request.workers, len(pending) + sum(w.busy for w in workers))
                while len(workers) < wanted:
                    workers.append(_Worker(self.context, self.request.options, threads))
                for worker in workers:
                    if worker.ready and not worker.busy and pending:
                        self._dispatch(worker, pending)
                wait([w.conn for w in workers] + [w.process.sentinel for w in workers], POLL_SECONDS)
                workers = [w for w in workers if self._watch(w)]
        finally:
            for name, handler in trapped.items():
                signal.signal(name, handler)
            for worker in workers:
                if worker.busy or self.signal is not None:
                    worker.kill()
                    if worker.claim is not None:
                        worker.claim.release()  # removes the file's temporary
                else:
                    worker.stop()
            for marker in markers:
                marker.unlink(missing_ok=True)
        return BatchResult([self.outcomes[i] for i in sorted(self.outcomes)], self.signal)

    # --- planning and claiming ----------------------------------------------------------------

    def _manifest(self, target: Path) -> Manifest:
        folder = target.parent
        if folder not in self.manifests:
            self.manifests[folder] = Manifest(folder).refresh()
        return self.manifests[folder]

    def _plan(self) -> deque[int]:
        """The jobs to develop; the rest are skipped here (done by a run still going, or done before
        with these settings)."""
        todo: deque[int] = deque()
        for index, job in enumerate(self.jobs):
            manifest = self._manifest(job.target)
            self.seen[index] = manifest.latest(job.target)
            done = manifest.latest_done(job.target)
            if done is not None and is_running(job.target.parent, done.owner):
                self._finish(index, Outcome(job.label, "skipped", f"taken by another run ({done.owner.describe()})"))
            elif (not self.request.overwrite and job.target.exists()
                  and (done is None or done.settings == self.request.settings)):
                sweep(job.target, self.owner)
                self._finish(index, Outcome(job.label, "skipped", f"{job.target} exists (use --overwrite)"))
            else:
                todo.append(index)
        return todo

    def _claim(self, index: int) -> Claim | Outcome:
        job = self.jobs[index]
        claim = try_claim(job.target, self.owner, self.request.settings)
        if isinstance(claim, Owner):
            return Outcome(job.label, "skipped", f"taken by another run ({claim.describe()})")
        # Done by another run since this one planned: not done twice.
        latest = self._manifest(job.target).refresh().latest(job.target)
        if latest is not None and latest != self.seen[index] and latest.status == "done":
            claim.release()
            return Outcome(job.label, "skipped", f"taken by another run ({latest.owner.describe()})")
        return claim

    def _dispatch(self, worker: _Worker, pending: deque[int]) -> None:
        while pending:
            index = pending.popleft()
            claim = self._claim(index)
            if isinstance(claim, Outcome):
                self._finish(index, claim)
                continue
            job = self.jobs[index]
            try:
                worker.conn.send(FileTask(job.source, job.target, self.request.write))
            except OSError:  # the worker is gone; _watch replaces it, and the file waits for the next
                claim.release()
                pending.appendleft(index)
                return
            worker.index, worker.claim, worker.started = index, claim, time.monotonic()
            worker.start_phase(DECODE, self.limits.decode_seconds)
            self.events.phase(job, DECODE)
            return

    # --- watching -----------------------------------------------------------------------------

    def _watch(self, worker: _Worker) -> bool:
        """Take in the worker's messages and check its limits; False once it is gone."""
        try:
            while worker.conn.poll():
                self._receive(worker, worker.conn.recv())
        except (EOFError, OSError):
            worker.process.join(1)  # gone: its exit code follows at once
        if worker.process.exitcode is not None:
            worker.conn.close()
            if not worker.ready:
                raise BatchError(f"a worker process could not start ({_exit_reason(worker.process.exitcode)})")
            if worker.busy:
                self._fail(worker, f"the worker crashed while {_DOING[worker.phase]} it "
                                   f"({_exit_reason(worker.process.exitcode)})")
            return False
        if worker.busy and (reason := self._over_limit(worker)):
            worker.kill()
            self._fail(worker, reason)
            return False
        return True

    def _over_limit(self, worker: _Worker) -> str | None:
        doing = _DOING[worker.phase]
        if time.monotonic() > worker.deadline:
            return f"{doing} took longer than {round(worker.limit, 1):g} s"
        resident = resident_memory(worker.process.pid)
        if resident is not None and resident > self.limits.max_memory:
            return f"used more than {self.limits.max_memory / 2**30:.3g} GiB of memory while {doing} it (--max-memory)"
        return None

    def _receive(self, worker: _Worker, message: tuple) -> None:
        kind = message[0]
        if kind == "ready":
            worker.ready = True
        elif kind == "fatal":
            raise BatchError(message[1])
        elif kind == "phase" and worker.busy and message[1] != DECODE:  # decoding began at dispatch
            name, megapixels = message[1], message[2]
            if name == DEVELOP:
                worker.start_phase(name, self.limits.develop_limit(megapixels, self.steps))
            else:  # writing: within the develop phase's time
                worker.phase = name
            self.events.phase(self.jobs[worker.index], name)
        elif kind == "result" and worker.busy:
            self._complete(worker, message[1])

    # --- ending a file ------------------------------------------------------------------------

    def _complete(self, worker: _Worker, result: FileResult) -> None:
        job = self.jobs[worker.index]
        for notice in result.notices:
            self.events.notice(job, notice)
        self._end(worker, Outcome(job.label, result.status, result.detail, result.seconds,
                                  result.trace if result.status == "failed" else None, result.exposure_ev))

    def _fail(self, worker: _Worker, reason: str) -> None:
        job = self.jobs[worker.index]
        self._end(worker, Outcome(job.label, "failed", reason, time.monotonic() - worker.started))

    def _end(self, worker: _Worker, outcome: Outcome) -> None:
        """Record the outcome in the manifest, then release the claim (the record first, so that a run
        that claims the output next sees it)."""
        index, job = worker.index, self.jobs[worker.index]
        record = new_record(job.source, job.target, self.request.settings, outcome.status,
                            None if outcome.status == "done" else outcome.detail, outcome.seconds, self.owner)
        try:
            self._manifest(job.target).append(record)
        except OSError as err:  # a full disk, say: the output itself is complete or absent either way
            self.events.notice(job, f"cannot record it in the manifest ({err.strerror or err})")
        worker.claim.release()
        worker.index = worker.claim = None
        self._finish(index, outcome)

    def _finish(self, index: int, outcome: Outcome) -> None:
        self.outcomes[index] = outcome
        self.events.finished(outcome)

    def _trap_signals(self) -> dict[int, object]:
        if threading.current_thread() is not threading.main_thread():
            return {}

        def stop(signum: int, _frame: object) -> None:
            self.signal = signum

        return {name: signal.signal(name, stop) for name in (signal.SIGINT, signal.SIGTERM)}


def resident_memory(pid: int) -> int | None:
    """A process's resident memory in bytes (Linux), or None where the system does not tell."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return None


def _exit_reason(code: int) -> str:
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"
