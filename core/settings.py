"""Where featurescope keeps things and what it reads from the environment, in one place.

Environment variables (each read when asked, so a test or a server can set it late):

* ``FEATURESCOPE_DATA_DIR``: the data directory (converted demo model, corpus, token sets,
  the Vega bundle); default ``cache/`` in the project.
* ``FEATURESCOPE_CACHE_DIR``: the memo directory; default ``cache/memo``.
* ``FEATURESCOPE_CACHE_SIZE``: the memo's size limit in bytes; default 4 GiB.
* ``FEATURESCOPE_HOSTED``: the hosted configuration file (see :mod:`core.hosted`).

Compute dtypes are named by strings (``float32``, ``bfloat16``, ``float16``) in configs,
specs and the CLI; :func:`torch_dtype` maps a name to torch's dtype. This module imports
no torch at import time, so the command line's ``--help`` stays fast.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR_ENV = "FEATURESCOPE_DATA_DIR"
CACHE_DIR_ENV = "FEATURESCOPE_CACHE_DIR"
CACHE_SIZE_ENV = "FEATURESCOPE_CACHE_SIZE"
HOSTED_ENV = "FEATURESCOPE_HOSTED"
DEFAULT_CACHE_SIZE = 4 << 30
DTYPE_NAMES = ("float32", "bfloat16", "float16")


def data_dir() -> Path:
    """The data directory: ``$FEATURESCOPE_DATA_DIR`` or ``cache/`` in the project."""
    root = os.environ.get(DATA_DIR_ENV)
    return Path(root) if root else PROJECT_ROOT / "cache"


def memo_dir() -> Path:
    """The memo directory: ``$FEATURESCOPE_CACHE_DIR`` or ``cache/memo`` in the project."""
    return Path(os.environ.get(CACHE_DIR_ENV) or PROJECT_ROOT / "cache" / "memo")


def memo_size_limit() -> int:
    """The memo's size limit in bytes: ``$FEATURESCOPE_CACHE_SIZE`` or 4 GiB."""
    return int(os.environ.get(CACHE_SIZE_ENV, DEFAULT_CACHE_SIZE))


def hosted_file() -> str | None:
    """The hosted configuration file named by ``$FEATURESCOPE_HOSTED``, if any."""
    return os.environ.get(HOSTED_ENV) or None


def torch_dtype(name: str) -> torch.dtype:
    """torch's dtype for a dtype name; ``KeyError`` for other names (callers say which
    setting was wrong)."""
    import torch  # heavy: only when a computation needs it

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
