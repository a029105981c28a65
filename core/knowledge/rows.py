"""Row-level pieces shared by the store and by import: locking a feature's annotation row,
recording an edit in its history, adding an explanation, and turning rows into views."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from core.knowledge.errors import KnowledgeError
from core.knowledge.models import Annotation, AnnotationEdit, Explanation, FeatureList, utcnow
from core.knowledge.records import (
    AnnotationView,
    ExplanationView,
    HistoryEntry,
    ListItem,
    ListView,
    check_author,
    check_feature,
    check_key,
    check_scores,
    check_text,
)

FIELDS = ("label", "notes", "tags", "deleted")


def slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:120]


def retryable(exc: OperationalError | IntegrityError) -> bool:
    """Lock contention, a deadlock, a serialization failure or a concurrent insert of the
    same row: worth running the transaction again."""
    code = getattr(exc.orig, "sqlstate", None)
    if code in ("40001", "40P01", "55P03", "23505"):
        return True
    message = str(exc.orig).lower()
    return "database is locked" in message or "database is busy" in message


def by_key(dictionary_key: str, feature: int) -> Select[tuple[Annotation]]:
    return select(Annotation).where(
        Annotation.dictionary_key == dictionary_key, Annotation.feature == feature
    )


def lock_annotation(session: Session, dictionary_key: str, feature: int) -> tuple[Annotation, bool]:
    """The feature's annotation row, locked for this transaction (created when missing);
    True when it was created."""
    query = by_key(dictionary_key, feature).with_for_update()
    row = session.scalars(query).one_or_none()
    if row is not None:
        return row, False
    row = Annotation(
        dictionary_key=dictionary_key,
        feature=feature,
        label="",
        notes="",
        tags=[],
        deleted=False,
        version=0,
        updated_by="",
    )
    session.add(row)
    session.flush()  # a concurrent insert of the same key fails here; the caller retries
    return row, True


def snapshot(row: Annotation) -> dict[str, Any]:
    return {"label": row.label, "notes": row.notes, "tags": list(row.tags), "deleted": row.deleted}


def record_edit(
    session: Session,
    row: Annotation,
    action: str,
    author: str,
    before: dict,
    after: dict,
    at: Any = None,
) -> None:
    """Bump the row's version and append the edit to its history."""
    at = at or utcnow()
    row.version += 1
    row.updated_at, row.updated_by = at, author
    session.add(
        AnnotationEdit(
            annotation_id=row.id,
            version=row.version,
            action=action,
            author=author,
            at=at,
            before=before,
            after=after,
        )
    )


def add_explanation_row(
    session: Session,
    dictionary_key: str,
    feature: int,
    text: str,
    *,
    explainer: str,
    prompt_version: str,
    scores: Any,
    method: str,
    author: str,
    source: str,
    meta: dict | None = None,
    created_at: Any = None,
) -> Explanation:
    text = check_text("explanation", text, 20_000).strip()
    if not text:
        raise KnowledgeError("an explanation needs text")
    row = Explanation(
        dictionary_key=check_key(dictionary_key),
        feature=check_feature(feature),
        text=text,
        explainer=check_text("explainer", explainer, 500),
        prompt_version=check_text("prompt_version", prompt_version, 200),
        scores=check_scores(scores),
        method=check_text("method", method, 200),
        source=check_text("source", source, 200),
        meta=dict(meta or {}),
        created_at=created_at or utcnow(),
        created_by=check_author(author),
    )
    session.add(row)
    session.flush()
    return row


def annotation_view(row: Annotation) -> AnnotationView:
    return AnnotationView(
        row.dictionary_key,
        row.feature,
        row.label,
        row.notes,
        tuple(row.tags),
        row.deleted,
        row.version,
        row.updated_at,
        row.updated_by,
    )


def history_entry(e: AnnotationEdit) -> HistoryEntry:
    return HistoryEntry(e.version, e.action, e.author, e.at, dict(e.before), dict(e.after))


def list_view(row: FeatureList) -> ListView:
    items = tuple(ListItem(e.dictionary_key, e.feature, e.note, e.position) for e in row.entries)
    return ListView(row.name, row.slug, row.description, row.created_at, row.created_by, items)


def explanation_view(r: Explanation) -> ExplanationView:
    return ExplanationView(
        r.id,
        r.dictionary_key,
        r.feature,
        r.text,
        r.explainer,
        r.prompt_version,
        dict(r.scores),
        r.method,
        r.source,
        r.created_at,
        r.created_by,
        dict(r.meta),
    )
