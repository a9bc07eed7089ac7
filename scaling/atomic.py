"""Outputs appear whole or not at all, and never at the cost of an input.

Folders are built under a hidden sibling and renamed into place; an output that is
already there is renamed aside first and deleted only once the new one is in place, so at
every moment the old output or the new one exists whole. ``check_out`` refuses an output
path that is, holds or lies inside one of a command's inputs (symlinks resolved), before
any work is done.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from scaling.errors import InputError


def overlap(out, src) -> str | None:
    """How the path ``out`` overlaps ``src``: "is", "is inside", "holds", or None when
    replacing ``out`` cannot touch ``src``. Paths are compared as written (made absolute)
    and with symlinks resolved, so a link on either side is seen through."""
    for o, s in (
        (Path(os.path.abspath(out)), Path(os.path.abspath(src))),
        (Path(out).resolve(), Path(src).resolve()),
    ):
        if o == s:
            return "is"
        if o.is_relative_to(s):
            return "is inside"
        if s.is_relative_to(o):
            return "holds"
    return None


def check_out(out, inputs: Iterable = (), overwrite: bool = False) -> Path:
    """``out`` may be written: it overlaps none of the existing ``inputs`` (None entries
    are skipped), neither is nor holds the working directory, and is free (missing or an
    empty folder) unless ``overwrite``. Raises an ``InputError`` naming ``out`` otherwise;
    returns ``Path(out)``."""
    out = Path(out)
    for src in inputs:
        if src is None or not (Path(src).exists() or Path(src).is_symlink()):
            continue
        how = overlap(out, src)
        if how is not None:
            raise InputError(f"{out}: {how} the input {src}; choose an --out apart from it")
    how = overlap(out, os.getcwd())
    if how in ("is", "holds") and out.exists():
        raise InputError(f"{out}: {how} the working directory; choose an --out apart from it")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise InputError(f"{out}: exists and is not empty (pass --overwrite to replace it)")
    return out


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def replace(new, out) -> None:
    """Move ``new`` to ``out``. An existing ``out`` is first renamed aside to a hidden
    sibling, restored if ``new`` cannot be moved in, and deleted once ``new`` is in place."""
    new, out = Path(new), Path(out)
    if not (out.exists() or out.is_symlink()):
        os.replace(new, out)
        return
    old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(out, old)
    try:
        os.replace(new, out)
    except BaseException:
        os.replace(old, out)
        raise
    remove(old)


@contextmanager
def atomic_folder(out) -> Iterator[Path]:
    """Yield an empty hidden sibling of ``out`` to build in; when the block ends without
    an error it replaces ``out`` (:func:`replace`), otherwise it is removed and ``out`` is
    left as it was."""
    out = Path(out)
    tmp = out.with_name(f".{out.name}.partial-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        yield tmp
        replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
