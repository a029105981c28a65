"""The knowledge store: what people and models say about features (labels, notes, tags and
their history, lists, explanations), in SQLite (default) or PostgreSQL.

``open_store()`` opens the database named by ``FEATURESCOPE_DB`` (default
``<data dir>/knowledge.db``) and migrates it to the current schema; see
:class:`core.knowledge.store.KnowledgeStore` for the API.
"""

from __future__ import annotations

import getpass

from core import settings
from core.knowledge.db import make_engine, upgrade
from core.knowledge.errors import KnowledgeError, UnknownListError
from core.knowledge.store import KnowledgeStore

__all__ = [
    "KnowledgeError",
    "KnowledgeStore",
    "UnknownListError",
    "default_author",
    "open_store",
]


def open_store(url: str | None = None) -> KnowledgeStore:
    """The store on ``url`` (default :func:`core.settings.knowledge_db_url`), its schema
    migrated to the newest revision first."""
    engine = make_engine(url)
    upgrade(engine)
    return KnowledgeStore(engine)


def default_author() -> str:
    """The local author name: ``$FEATURESCOPE_AUTHOR``, else the OS user, else ``"local"``."""
    name = settings.knowledge_author()
    if name:
        return name
    try:
        return getpass.getuser() or "local"
    except (KeyError, OSError):
        return "local"
