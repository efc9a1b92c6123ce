"""Faults injected into rawrestore's worker processes, for the batch tests.

On PYTHONPATH, Python imports this module at the start of every process; it acts only in a
multiprocessing child (a batch worker) and only when RAWRESTORE_TEST_HOOKS holds a JSON object:

- ``crash_on_open``, ``hang_on_open``, ``hog_on_open``: a part of a file's name; opening such a
  file (read_raw does first) segfaults, sleeps for an hour, or allocates memory without end;
- ``at_replace``: {substring: action} for the rename of a finished temporary onto its output:
  ``kill_batch`` cuts the temporary to half its size and SIGKILLs the supervisor and the worker (a
  batch killed mid-write), ``block`` sleeps for an hour (a file in the middle of its write),
  ``sleep:S`` waits S seconds first;
- ``log``: a file that gets a JSON line per hook event (event, file name, pid, torch threads).
"""
import builtins
import ctypes
import json
import os
import signal
import time

_HOOKS = json.loads(os.environ.get("RAWRESTORE_TEST_HOOKS", "{}"))
_open, _replace = builtins.open, os.replace


def _in_worker() -> bool:
    import multiprocessing

    return multiprocessing.parent_process() is not None


def _log(event: str, name: str) -> None:
    if "log" in _HOOKS:
        import torch

        with _open(_HOOKS["log"], "a") as fh:
            fh.write(json.dumps({"event": event, "name": name, "pid": os.getpid(),
                                 "threads": torch.get_num_threads()}) + "\n")


def _matches(key: str, path) -> bool:
    return key in _HOOKS and isinstance(path, (str, os.PathLike)) and _HOOKS[key] in os.path.basename(path)


if _HOOKS:

    def _hooked_open(file, *args, **kwargs):
        if _in_worker():
            if _matches("crash_on_open", file):
                _log("crash", os.path.basename(file))
                ctypes.string_at(0)
            if _matches("hang_on_open", file):
                _log("hang", os.path.basename(file))
                time.sleep(3600)
            if _matches("hog_on_open", file):
                _log("hog", os.path.basename(file))
                hoard = []
                while True:
                    hoard.append(b"x" * (64 << 20))  # written: resident (zeros could stay unmapped)
        return _open(file, *args, **kwargs)

    def _hooked_replace(src, dst, *args, **kwargs):
        if _in_worker():
            name = os.path.basename(dst)
            for part, action in _HOOKS.get("at_replace", {}).items():
                if part not in name:
                    continue
                _log(action, name)
                if action == "kill_batch":
                    os.truncate(src, os.path.getsize(src) // 2)
                    os.kill(os.getppid(), signal.SIGKILL)
                    os.kill(os.getpid(), signal.SIGKILL)
                elif action == "block":
                    time.sleep(3600)
                elif action.startswith("sleep:"):
                    time.sleep(float(action.removeprefix("sleep:")))
            _log("written", name)
        return _replace(src, dst, *args, **kwargs)

    builtins.open, os.replace = _hooked_open, _hooked_replace
