"""The knowledge store in the app: one store per server process, who edits, and labels.

Pages read labels with :func:`labels` (one batched query per table, never one per row) and
write through :func:`editor` (:class:`core.knowledge.access.Editor`): the signed-in
account's email is the author (else the local author name), and in hosted mode an account
that may only read gets a :class:`~core.knowledge.access.ReadOnlyError` from core.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import streamlit as st

from core.feature_source import FeatureSource
from core.knowledge import KnowledgeStore, describe
from core.knowledge.access import Editor, shared_store
from core.knowledge.access import editor as make_editor
from pages import _auth as auth

log = logging.getLogger("featurescope.app")
LISTS_PAGE = "pages/lists.py"


def store() -> KnowledgeStore:
    """The server's knowledge store (opened, and migrated, on first use)."""
    return shared_store()


def editor() -> Editor:
    """This session's editor: writes signed by the account, or refused (read only)."""
    return make_editor(auth.hosted(), auth.user_email(), store())


def dictionary_key(ws: FeatureSource) -> str | None:
    """The workspace's dictionary key, or ``None`` when it has none (labels not shown)."""
    get = getattr(ws, "dictionary_key", None)
    if get is None:
        return None
    try:
        return str(get())
    except Exception as exc:  # e.g. an old precompute output: no labels, the rest works
        log.warning("no dictionary key for labels: %s", exc)
        return None


def labels(ws: FeatureSource, features: Iterable[int]) -> dict[int, str]:
    """``{feature: label}`` for those of ``features`` that have a label (one batched read);
    empty when the store cannot be read (the page still works, the log says why)."""
    key = dictionary_key(ws)
    wanted = [int(f) for f in features]
    if key is None or not wanted:
        return {}
    try:
        return store().labels(key, wanted)
    except Exception as exc:
        log.warning("knowledge store: labels not read: %s", exc)
        return {}


def notes(ws: FeatureSource, features: Iterable[int]) -> dict[int, str]:
    """``{feature: Markdown notes}`` for those of ``features`` that have notes (batched)."""
    key = dictionary_key(ws)
    if key is None:
        return {}
    try:
        return describe.notes(store(), key, [int(f) for f in features])
    except Exception as exc:
        log.warning("knowledge store: notes not read: %s", exc)
        return {}


def all_labels(ws: FeatureSource) -> dict[int, str]:
    """Every label of the workspace's dictionary (the map colours by them)."""
    return labels(ws, range(int(ws.n_features)))


def with_labels(ws: FeatureSource, text: dict[int, str]) -> dict[int, str]:
    """``text`` (feature -> shown text) with each labelled feature's label appended."""
    got = labels(ws, text)
    return {f: f"{t} · {got[f]}" if f in got else t for f, t in text.items()}


def read_only_notice(ed: Editor) -> None:
    """Say once, where editing would be, that this account reads only."""
    if not ed.can_write:
        st.caption(f":material/lock: Read only: {ed.refusal}.")
