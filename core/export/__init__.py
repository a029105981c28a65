"""Exports: standalone HTML dashboards and Neuronpedia batch files.

* :mod:`core.export.html` renders one self-contained, offline HTML page for one or
  many features (the same components the app shows).
* :mod:`core.export.neuronpedia` writes ``batch-N.json`` files in the layout
  Neuronpedia imports from SAEDashboard's runner, validated by a JSON Schema.

Both write through :func:`atomic_write`, so a reader (or a resumed run) never sees a
half-written file.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from core.errors import FeaturescopeError


class ExportError(FeaturescopeError, ValueError):
    """An export cannot be produced (message names the problem and the fix)."""


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` so that the file is either old or complete, never partial.

    The bytes go to a temporary file in the same directory (``.NAME.tmp-PID``), are
    flushed to disk, and the temporary file is renamed over ``path`` with
    :func:`os.replace` (atomic on POSIX and Windows). Text is written as UTF-8.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    payload = data.encode("utf-8") if isinstance(data, str) else data
    try:
        with open(tmp, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


def remove_stale_temp_files(directory: str | Path) -> int:
    """Delete temporary files left by :func:`atomic_write` in a killed process.

    Returns how many were removed. Only names of the form ``.NAME.tmp-PID`` are touched.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return 0
    n = 0
    for p in directory.glob(".*.tmp-*"):
        if p.is_file():
            with contextlib.suppress(OSError):
                p.unlink()
                n += 1
    return n


__all__ = ["ExportError", "atomic_write", "remove_stale_temp_files"]
