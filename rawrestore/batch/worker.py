"""The worker process: a Developer set up once (the model loaded once), then one file after another.

It runs in a spawned interpreter, so that whatever a file does to it (a crash in LibRaw, memory
without end, a loop) stays there; the supervisor (:mod:`.engine`) watches it and replaces it.
Messages to the supervisor: ``("ready",)``, ``("fatal", reason)`` when it cannot be set up,
``("phase", name, megapixels)`` and ``("result", FileResult)``.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

from .develop import FileTask, develop_file

if TYPE_CHECKING:
    from ..pipeline import DevelopOptions


def serve(conn: Connection, options: DevelopOptions, threads: int, supervisor: int) -> None:
    # Ctrl-C reaches the whole process group: the supervisor decides what it abandons.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_end_with, args=(supervisor,), daemon=True).start()
    try:
        import torch

        from ..pipeline import Developer

        developer = Developer(options)
        torch.set_num_threads(threads)
    except Exception as err:  # the supervisor checked the options; this is a changed weights file or the like
        conn.send(("fatal", f"{type(err).__name__}: {err}"))
        return
    conn.send(("ready",))
    while True:
        try:
            task: FileTask | None = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        result = develop_file(developer, task, lambda name, megapixels: conn.send(("phase", name, megapixels)))
        conn.send(("result", result))


def _end_with(supervisor: int) -> None:
    """End this process once the supervisor is gone (killed outright), rather than finish a file
    for nobody and write it past the claims of the runs after it."""
    while os.getppid() == supervisor:
        time.sleep(0.5)
    os._exit(1)
