"""The compute gate's pieces: the model lock, out-of-memory detection, the workspace's error.

Every computation a :class:`~core.workspace.Workspace` runs waits for a slot in the
process's compute queue (:mod:`core.queue`), then holds the lock of its model object (so
workspaces sharing a model take turns), and is retried with smaller batches when the
accelerator runs out of memory.
"""

from __future__ import annotations

import threading

import torch

from core.errors import FeaturescopeError
from core.models import ModelAdapter

_LOCKS: dict[int, threading.RLock] = {}
_LOCKS_GUARD = threading.Lock()


def model_lock(model: ModelAdapter) -> threading.RLock:
    """The lock that serialises forward passes on one model object."""
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(id(model.model), threading.RLock())


class WorkspaceError(FeaturescopeError, ValueError):
    """A request the workspace cannot answer (message says why and what to do)."""


def is_out_of_memory(exc: BaseException) -> bool:
    """True for an accelerator (or host) allocation failure."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text
    )


def free_accelerator_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def check_text(text: str) -> str:
    """``text``, or :class:`WorkspaceError` when it holds characters that have no UTF-8
    form (lone surrogates such as ``"\\ud800"``), which no tokenizer can read."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start]
        raise WorkspaceError(
            f"the prompt contains a character that is not valid text (U+{ord(bad):04X} at "
            f"position {exc.start}, a lone surrogate): remove it or paste the text again"
        ) from exc
    return text
