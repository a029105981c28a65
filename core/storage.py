"""Writing files without ever leaving a half-written one: :func:`atomic_write` (exports,
precompute manifests) and :func:`save_tensors` (caches of derived tensors).

Caches (hook activations, token sets) are conveniences: when the disk is full or
read-only, the caller's results are still good, so a failed cache write is logged with
what was lost and how to fix it, and the caller carries on. This module imports torch
only when tensors are saved.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import SafetensorError

if TYPE_CHECKING:
    from torch import Tensor

log = logging.getLogger(__name__)


@contextlib.contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """A temporary path in ``path``'s directory (``.NAME.tmp-PID``) to write the new file
    to; on leaving the block it is renamed over ``path`` with :func:`os.replace` (atomic on
    POSIX and Windows), or removed when the block raised. ``path`` is either old or
    complete, never partial."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` through :func:`replacing`, flushed to disk before the
    rename. Text is written as UTF-8."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with replacing(path) as tmp, open(tmp, "wb") as fh:
        fh.write(payload)
        fh.flush()
        os.fsync(fh.fileno())
    return Path(path)


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


def save_tensors(tensors: dict[str, Tensor], path: Path, lost: str, env: str) -> bool:
    """Write ``tensors`` to ``path`` (safetensors, through a temporary file and a rename).

    On failure log a warning (``lost`` says what happens without the file, ``env`` names
    the variable that moves the directory) and return False.
    """
    from safetensors.torch import save_file  # heavy: torch, only when a cache is written

    try:
        with replacing(path) as tmp:  # streamed to the file: no second copy in memory
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
        return True
    except (OSError, SafetensorError) as exc:  # safetensors reports I/O errors its own way
        log.warning(
            "could not write %s (%s): %s. Free space there, or set %s to a writable directory",
            path,
            exc,
            lost,
            env,
        )
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        return False
