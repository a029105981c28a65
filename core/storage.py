"""Writing derived tensors to a cache directory without ever leaving a half-written file.

Caches (hook activations, token sets) are conveniences: when the disk is full or
read-only, the caller's results are still good, so a failed write is logged with what
was lost and how to fix it, and the caller carries on.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import save_file
from torch import Tensor

log = logging.getLogger(__name__)


def save_tensors(tensors: dict[str, Tensor], path: Path, lost: str, env: str) -> bool:
    """Write ``tensors`` to ``path`` (safetensors, through a temporary file and a rename).

    On failure log a warning (``lost`` says what happens without the file, ``env`` names
    the variable that moves the directory) and return False.
    """
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
        os.replace(tmp, path)
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
