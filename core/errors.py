"""The base of every error featurescope raises on purpose.

Each error class of ours derives from :class:`FeaturescopeError` and keeps the builtin base it
had (``ValueError``, ``RuntimeError``, ``KeyError``), so ``except FeaturescopeError`` catches any
of them while an existing ``except ValueError`` keeps its meaning. The UI tells errors apart by
type, never by matching class names.
"""

from __future__ import annotations


class FeaturescopeError(Exception):
    """An error featurescope raised on purpose: its message is meant for the user."""


def short_message(exc: BaseException) -> str:
    """``"TypeName: message"``, cut to about 300 characters, for a message that cites a cause."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) < 300 else text[:300] + "..."
