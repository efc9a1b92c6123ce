"""Output names (``--name-template``): what a RAW file's developed picture is called.

A template is a Python format string over the fields of the input's name, e.g. ``{stem}_{ext}``:
``stem`` (``a`` for ``a.CR2``), ``ext`` (``CR2``, the extension without its dot, as written) and
``parent`` (the name of the folder it is in). The output format's extension is added to it.
"""
from __future__ import annotations

import itertools
import string
from collections.abc import Iterator
from pathlib import Path

DEFAULT_TEMPLATE = "{stem}"
# What two inputs that the default names alike are named apart by: a.dng -> a.jpg, a.CR2 -> a_CR2.jpg.
APART_TEMPLATE = "{stem}_{ext}"
FIELDS = ("stem", "ext", "parent")


class TemplateError(ValueError):
    """A --name-template that cannot name files (the message is one line)."""


def check_template(template: str) -> None:
    """Raise :class:`TemplateError` unless ``template`` names a file from the known fields."""
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    except ValueError as err:
        raise TemplateError(f"--name-template {template!r}: {err}") from None
    unknown = [field for field in fields if field not in FIELDS]
    if unknown or not fields:
        raise TemplateError(f"--name-template {template!r}: use the fields "
                            f"{', '.join('{' + f + '}' for f in FIELDS)}"
                            + (f", not {{{unknown[0]}}}" if unknown else ""))
    sample = output_name(Path("folder/name.raw"), template, "")
    if "/" in sample or "\\" in sample or sample in ("", ".", ".."):
        raise TemplateError(f"--name-template {template!r} must make a file name, not a path")


def output_name(source: Path, template: str, extension: str) -> str:
    """The output file name of ``source``: ``template`` filled in, then ``extension`` (with its dot)."""
    return template.format(stem=source.stem, ext=source.suffix.removeprefix("."),
                           parent=source.absolute().parent.name) + extension  # absolute: 'a.dng' is in a folder too


def names_apart(source: Path, extension: str) -> Iterator[str]:
    """Names for ``source`` when another input already has its default name, in order of preference:
    ``a_CR2.jpg``, then ``a_CR2_2.jpg``, ``a_CR2_3.jpg``... (so a batch never stops on a shared stem)."""
    yield output_name(source, APART_TEMPLATE, extension)
    for number in itertools.count(2):
        yield output_name(source, f"{APART_TEMPLATE}_{number}", extension)
