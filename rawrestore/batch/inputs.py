"""The paths a user names: files and folders of RAW files, each bad one a reason rather than an abort.

A bad path named on the command line gets the treatment the same entry gets when it is found by
scanning a folder: one line in the batch's summary, and the rest of the batch goes on.
"""
from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ..rawio import iter_raw_files


@dataclass(frozen=True)
class BadInput:
    label: str   # the path as the user named it
    reason: str  # one line


class NoInputError(Exception):
    """Nothing to develop at all: every path named is a folder without RAW files (a usage error)."""


def path_problem(path: Path) -> str | None:
    """Why ``path`` cannot be read as an input (a file or a folder), or None."""
    try:
        info = os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "symbolic link loop"
        if err.errno == errno.ENOENT:
            return "broken symbolic link (its target does not exist)" if path.is_symlink() else "no such file or folder"
        return f"cannot read ({err.strerror})"
    if stat.S_ISDIR(info.st_mode):
        return None if os.access(path, os.R_OK | os.X_OK) else "cannot read this folder (Permission denied)"
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    return None if os.access(path, os.R_OK) else "cannot read (Permission denied)"


def collect_inputs(paths: list[Path], recursive: bool) -> tuple[list[tuple[Path, Path]], list[BadInput]]:
    """(file, the folder its name is relative to) for every input, in order, without repeats; and
    the named paths that give none, each with its reason. Raises :class:`NoInputError` when the
    only problem is that no named folder holds a RAW file."""
    found: dict[Path, tuple[Path, Path]] = {}
    bad: list[BadInput] = []
    empty_folders = 0
    for path in paths:
        if (problem := path_problem(path)) is not None:
            bad.append(BadInput(str(path), problem))
            continue
        if path.is_dir():
            files = iter_raw_files(path, recursive)
            if not files:
                empty_folders += 1
                bad.append(BadInput(str(path), "no RAW files in this folder"
                                    + ("" if recursive else " (use --recursive for subfolders)")))
            pairs = [(file, path) for file in files]
        else:
            pairs = [(path, path.parent)]
        for file, root in pairs:
            found.setdefault(file.resolve(), (file, root))
    if not found and bad and empty_folders == len(bad):
        raise NoInputError(f"{bad[0].label}: {bad[0].reason}")
    return list(found.values()), bad
