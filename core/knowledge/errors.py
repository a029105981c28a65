"""Errors of the knowledge store."""

from __future__ import annotations

from core.errors import FeaturescopeError


class KnowledgeError(FeaturescopeError, ValueError):
    """Bad input to the knowledge store (a database URL, a list, imported data); the message
    names the problem and the fix."""


class UnknownListError(KnowledgeError, KeyError):
    """A list that does not exist; the message names it and the lists there are."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
