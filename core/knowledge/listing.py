"""A list's entries as rows (with each feature's label) and as CSV; renaming a list.

Labels are read with one batched query per dictionary in the list, never one per entry.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from sqlalchemy import select

from core.knowledge.errors import KnowledgeError, UnknownListError
from core.knowledge.models import FeatureList, utcnow
from core.knowledge.records import ListView, check_text
from core.knowledge.rows import list_view
from core.knowledge.store import KnowledgeStore

CSV_COLUMNS = ("list", "position", "dictionary_key", "dictionary", "feature", "label", "note")


def list_rows(store: KnowledgeStore, view: ListView) -> list[dict[str, Any]]:
    """One row per entry, in list order: dictionary key and name, feature, label, note."""
    by_key: dict[str, list[int]] = {}
    for e in view.entries:
        by_key.setdefault(e.dictionary_key, []).append(e.feature)
    labels = {key: store.labels(key, features) for key, features in by_key.items()}
    names = store.dictionaries() if by_key else {}
    return [
        {
            "list": view.slug,
            "position": e.position,
            "dictionary_key": e.dictionary_key,
            "dictionary": names.get(e.dictionary_key, ""),
            "feature": e.feature,
            "label": labels[e.dictionary_key].get(e.feature, ""),
            "note": e.note,
        }
        for e in sorted(view.entries, key=lambda e: e.position)
    ]


def list_csv(store: KnowledgeStore, view: ListView) -> str:
    """The list as CSV (:data:`CSV_COLUMNS`, a header line first). Cells that a spreadsheet
    would run as a formula (``=``, ``+``, ``-``, ``@`` first) get a leading apostrophe."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in list_rows(store, view):
        writer.writerow({k: _cell(v) for k, v in row.items()})
    return out.getvalue()


def _cell(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def rename_list(store: KnowledgeStore, slug: str, name: str, description: str | None = None):
    """Give list ``slug`` a new name (and description); its slug, so its links, stay."""
    name = check_text("list name", name, 200).strip()
    if not name:
        raise KnowledgeError("a list needs a name")
    if description is not None:
        description = check_text("list description", description, 10_000)

    def fn(session) -> ListView:
        query = select(FeatureList).where(FeatureList.slug == slug).with_for_update()
        row = session.scalars(query).one_or_none()
        if row is None:
            raise UnknownListError(f"no list {slug!r}: it may have been deleted")
        row.name = name
        if description is not None:
            row.description = description
        row.updated_at = utcnow()
        session.flush()
        return list_view(row)

    return store.write(fn)
