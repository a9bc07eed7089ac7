"""Outputs appear whole or not at all: folders are built under a hidden sibling and
renamed into place."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_folder(out) -> Iterator[Path]:
    """Yield an empty hidden sibling of ``out`` to build in; when the block ends without
    an error it replaces ``out`` (a rename), otherwise it is removed and ``out`` is left
    as it was."""
    out = Path(out)
    tmp = out.with_name(f".{out.name}.partial-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
