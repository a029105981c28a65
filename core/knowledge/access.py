"""Who may write to the knowledge store, as whom, and one store per server process.

The app (and anything else serving several people) reaches the store through
:func:`shared_store` and edits through an :class:`Editor`, made by :func:`editor` from the
hosted configuration (``None`` when the app serves one researcher) and the signed-in
account's email. Hosted mode: a write needs a signed-in account the server allows in, and,
when ``[knowledge] writers`` is set, one of those; everyone else reads only
(:class:`ReadOnlyError`). The author of an edit is the account's email, else
:func:`core.knowledge.default_author`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from core import settings
from core.knowledge import KnowledgeStore, default_author, listing, open_store
from core.knowledge.errors import KnowledgeError
from core.knowledge.records import AnnotationView, ListView

_STORES: dict[str, KnowledgeStore] = {}
_LOCK = threading.Lock()


class ReadOnlyError(KnowledgeError, PermissionError):
    """This account may read the knowledge store but not write to it; the message says why
    and what to do."""


def shared_store(url: str | None = None) -> KnowledgeStore:
    """The store on ``url`` (default :func:`core.settings.knowledge_db_url`), opened (and
    migrated) once per process and shared by every session."""
    url = url or settings.knowledge_db_url()
    with _LOCK:
        store = _STORES.get(url)
        if store is None:
            store = _STORES[url] = open_store(url)
        return store


def write_refusal(hosted: Any | None, email: str | None) -> str | None:
    """Why the account ``email`` may not write under the hosted configuration ``hosted``
    (:class:`core.hosted.HostedConfig`, ``None``: not hosted), or ``None`` when it may."""
    if hosted is None:
        return None
    if hosted.auth.required:
        if not email:
            return "sign in to edit labels, notes and lists on this server"
        reason = hosted.auth.refusal(email)
        if reason is not None:
            return reason
    if hosted.knowledge.writers and not email:
        return "sign in with an account that may edit (this server's [knowledge] writers)"
    return hosted.knowledge.refusal(email) if email else None


def author_for(email: str | None) -> str:
    """Who an edit is signed by: the account's email, else the local author name."""
    return email or default_author()


@dataclass(frozen=True)
class Editor:
    """Writes to ``store`` as ``author``, or refuses every write with ``refusal``."""

    store: KnowledgeStore
    author: str
    refusal: str | None = None

    @property
    def can_write(self) -> bool:
        return self.refusal is None

    def check(self) -> str:
        """The author, or :class:`ReadOnlyError` when this account reads only."""
        if self.refusal is not None:
            raise ReadOnlyError(f"read only: {self.refusal}")
        return self.author

    def annotate(
        self,
        dictionary_key: str,
        feature: int,
        *,
        label: str | None = None,
        notes: str | None = None,
        tags: Iterable[str] | None = None,
    ) -> AnnotationView:
        author = self.check()
        return self.store.annotate(
            dictionary_key, feature, label=label, notes=notes, tags=tags, author=author
        )

    def delete(self, dictionary_key: str, feature: int) -> AnnotationView:
        return self.store.delete(dictionary_key, feature, author=self.check())

    def undo_delete(self, dictionary_key: str, feature: int) -> AnnotationView:
        return self.store.undo_delete(dictionary_key, feature, author=self.check())

    def create_list(self, name: str, description: str = "") -> ListView:
        return self.store.create_list(name, author=self.check(), description=description)

    def add_to_list(self, slug: str, dictionary_key: str, feature: int, note: str = "") -> ListView:
        self.check()
        return self.store.add_to_list(slug, dictionary_key, feature, note=note)

    def describe_dictionary(self, dictionary_key: str, name: str, spec: str = "") -> None:
        self.check()
        self.store.describe_dictionary(dictionary_key, name, spec)

    def remove_from_list(self, slug: str, dictionary_key: str, feature: int) -> ListView:
        self.check()
        return self.store.remove_from_list(slug, dictionary_key, feature)

    def rename_list(self, slug: str, name: str, description: str | None = None) -> ListView:
        self.check()
        return listing.rename_list(self.store, slug, name, description)

    def delete_list(self, slug: str) -> None:
        self.check()
        self.store.delete_list(slug)

    def add_explanation(self, dictionary_key: str, feature: int, text: str, **kw: Any) -> int:
        """Store an explanation signed by this editor (an ``author`` in ``kw`` is ignored:
        the editor is the ExplanationSink of a batch run in its name)."""
        kw.pop("author", None)
        return self.store.add_explanation(dictionary_key, feature, text, author=self.check(), **kw)

    def has_explanation(
        self, dictionary_key: str, feature: int, explainer: str, prompt_version: str
    ) -> bool:
        return self.store.has_explanation(dictionary_key, feature, explainer, prompt_version)


def editor(hosted: Any | None, email: str | None, store: KnowledgeStore | None = None) -> Editor:
    """The :class:`Editor` for the account ``email`` under ``hosted`` (``None``: not hosted)."""
    return Editor(
        store if store is not None else shared_store(),
        author_for(email),
        write_refusal(hosted, email),
    )
