"""Where featurescope keeps things and what it reads from the environment, in one place.

Environment variables (each read when asked, so a test or a server can set it late):

* ``FEATURESCOPE_DATA_DIR``: the data directory (converted demo model, corpus, token sets,
  the Vega bundle); default ``cache/`` in the project.
* ``FEATURESCOPE_CACHE_DIR``: the memo directory; default ``cache/memo``.
* ``FEATURESCOPE_CACHE_SIZE``: the memo's size limit in bytes; default 4 GiB.
* ``FEATURESCOPE_HOSTED``: the hosted configuration file (see :mod:`core.hosted`).
* ``FEATURESCOPE_ALLOW_NETWORK``: ``1`` lets the app listen beyond this machine without
  hosted mode (see :func:`core.hosted.network_problem`).
* ``FEATURESCOPE_BASE_URL``: the app's public address, for share links and exports.
* ``FEATURESCOPE_MAX_WORKSPACES``: loaded workspaces kept per app process; default 2.
* ``FEATURESCOPE_DB``: the knowledge store (labels, notes, lists, explanations): a file path
  or any SQLAlchemy URL; default ``knowledge.db`` in the data directory (see :mod:`core.knowledge`).
* ``FEATURESCOPE_AUTHOR``: the author name of local edits; default the OS user.
* ``FEATURESCOPE_TEST_WORKSPACE``: for tests only, ``module:function`` building the app's
  workspace (never read from a URL).

Compute dtypes are named by strings (``float32``, ``bfloat16``, ``float16``) in configs,
specs and the CLI; :func:`torch_dtype` maps a name to torch's dtype. Devices are named the same
way (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``); :func:`resolve_device` checks a name
against this machine. This module imports no torch at import time, so the command line's
``--help`` stays fast.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import FeaturescopeError

if TYPE_CHECKING:
    import torch

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR_ENV = "FEATURESCOPE_DATA_DIR"
CACHE_DIR_ENV = "FEATURESCOPE_CACHE_DIR"
CACHE_SIZE_ENV = "FEATURESCOPE_CACHE_SIZE"
HOSTED_ENV = "FEATURESCOPE_HOSTED"
NETWORK_ENV = "FEATURESCOPE_ALLOW_NETWORK"
BASE_URL_ENV = "FEATURESCOPE_BASE_URL"
MAX_WORKSPACES_ENV = "FEATURESCOPE_MAX_WORKSPACES"
TEST_WORKSPACE_ENV = "FEATURESCOPE_TEST_WORKSPACE"
DB_ENV = "FEATURESCOPE_DB"
AUTHOR_ENV = "FEATURESCOPE_AUTHOR"
EXPLAIN_URL_ENV = "FEATURESCOPE_EXPLAIN_BASE_URL"
EXPLAIN_MODEL_ENV = "FEATURESCOPE_EXPLAIN_MODEL"
DEFAULT_CACHE_SIZE = 4 << 30
DTYPE_NAMES = ("float32", "bfloat16", "float16")
_DEVICE_RE = re.compile(r"^(cpu|cuda|mps)(?::(\d{1,3}))?$")


class SettingsError(FeaturescopeError, ValueError):
    """An environment variable holds a value featurescope cannot use."""


class DeviceError(FeaturescopeError, ValueError):
    """A device this machine does not have; the message lists those it has."""


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


def allow_network() -> bool:
    """True when ``$FEATURESCOPE_ALLOW_NETWORK`` is ``1``."""
    return os.environ.get(NETWORK_ENV) == "1"


def base_url() -> str:
    """``$FEATURESCOPE_BASE_URL`` stripped, or ``""`` when unset."""
    return os.environ.get(BASE_URL_ENV, "").strip()


def max_workspaces() -> int:
    """``$FEATURESCOPE_MAX_WORKSPACES`` (at least 1), default 2."""
    text = os.environ.get(MAX_WORKSPACES_ENV, "2")
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise SettingsError(
            f"{MAX_WORKSPACES_ENV}={text!r}: set it to a whole number of at least 1"
        )
    return n


def knowledge_db_url() -> str:
    """The knowledge store's database as a SQLAlchemy URL: ``$FEATURESCOPE_DB`` (a URL as
    given, or a file path made absolute as a SQLite URL) or ``<data dir>/knowledge.db``."""
    text = os.environ.get(DB_ENV, "").strip()
    if "://" in text:
        return text
    path = Path(text).expanduser() if text else data_dir() / "knowledge.db"
    return f"sqlite:///{path.resolve()}"


def knowledge_author() -> str | None:
    """``$FEATURESCOPE_AUTHOR`` stripped, or None when unset or blank."""
    return os.environ.get(AUTHOR_ENV, "").strip() or None


def explain_endpoint() -> tuple[str | None, str | None]:
    """The app's explainer endpoint: ``$FEATURESCOPE_EXPLAIN_BASE_URL`` (an OpenAI-compatible
    base URL) and ``$FEATURESCOPE_EXPLAIN_MODEL``, each None when unset or blank."""
    url = os.environ.get(EXPLAIN_URL_ENV, "").strip() or None
    return url, os.environ.get(EXPLAIN_MODEL_ENV, "").strip() or None


def test_workspace_factory() -> str | None:
    """``$FEATURESCOPE_TEST_WORKSPACE`` (``module:function``), for tests only."""
    return os.environ.get(TEST_WORKSPACE_ENV) or None


DIST_TIMEOUT_ENV = "FEATURESCOPE_DIST_TIMEOUT"


def distributed_env() -> tuple[int, int, int]:
    """``(RANK, WORLD_SIZE, LOCAL_RANK)`` as torchrun sets them; ``(0, 1, 0)`` outside it."""
    try:
        rank, world, local = (int(os.environ.get(k, d)) for k, d in _DIST_VARS)
    except ValueError as exc:
        raise SettingsError(
            f"RANK, WORLD_SIZE and LOCAL_RANK must be integers ({exc}): launch with torchrun"
        ) from exc
    if world < 1 or not 0 <= rank < world or local < 0:
        raise SettingsError(
            f"RANK={rank} WORLD_SIZE={world} LOCAL_RANK={local} do not fit together: "
            "launch with torchrun --nproc-per-node N"
        )
    return rank, world, local


_DIST_VARS = (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"))


def distributed_timeout() -> float:
    """Seconds a rank waits for the others (``$FEATURESCOPE_DIST_TIMEOUT``, default 1800)."""
    text = os.environ.get(DIST_TIMEOUT_ENV, "1800")
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise SettingsError(
            f"{DIST_TIMEOUT_ENV} must be a positive number of seconds, got {text!r}"
        )
    return value


def torch_dtype(name: str) -> torch.dtype:
    """torch's dtype for a dtype name; ``KeyError`` for other names (callers say which
    setting was wrong)."""
    import torch  # heavy: only when a computation needs it

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def available_devices() -> list[str]:
    """Devices this machine has, as names :func:`resolve_device` accepts."""
    import torch  # heavy: only when a device is checked

    out = ["cpu"]
    if torch.cuda.is_available():
        out += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.append("mps")
    return out


def resolve_device(text: Any) -> str:
    """The device ``text`` names, checked against this machine before anything runs on it.

    ``"auto"`` resolves to ``"cuda"`` when CUDA is present, else ``"cpu"``. Accepted:
    ``cpu``, ``cuda``, ``cuda:N`` for an existing GPU ``N``, ``mps`` when present (any case,
    surrounding spaces ignored; a ``torch.device`` is read as its name).

    Raises:
        DeviceError: anything else (``meta``, ``cuda:7`` on a one-GPU machine, a typo),
            with the list of available devices.
    """
    import torch  # heavy: only when a device is checked

    if isinstance(text, torch.device):
        text = str(text)
    name = text.strip().lower() if isinstance(text, str) else None
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    have = available_devices()
    m = _DEVICE_RE.match(name or "")
    ok = False
    if m is not None:
        kind, index = m.group(1), m.group(2)
        if kind == "cuda":
            ok = torch.cuda.is_available() and (
                index is None or int(index) < torch.cuda.device_count()
            )
        else:
            ok = kind in have and index in (None, "0")
    if not ok:
        shown = repr(text)[:60]
        raise DeviceError(
            f"device {shown} is not available on this machine: use 'auto' or one of {have}"
        )
    assert name is not None
    return name
