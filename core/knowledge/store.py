"""KnowledgeStore: labels, notes, tags (with their history), lists and explanations of
features, keyed by ``(dictionary_key, feature)``.

Every write is one transaction that locks the feature's annotation row first (PostgreSQL:
``SELECT ... FOR UPDATE``; SQLite: ``BEGIN IMMEDIATE``, see :mod:`core.knowledge.db`), bumps its
version counter and appends one history entry, so concurrent writers lose nothing: every edit
is in the history, the last one is shown. A transaction that meets a lock, a deadlock or a
concurrent insert of the same row is retried with backoff.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from core.knowledge import exchange, search
from core.knowledge.db import READ_OPTION
from core.knowledge.errors import KnowledgeError, UnknownListError
from core.knowledge.models import (
    Annotation,
    DictionaryRecord,
    Explanation,
    FeatureList,
    ListEntry,
    utcnow,
)
from core.knowledge.records import (
    MAX_LABEL,
    AnnotationView,
    ExplanationView,
    HistoryEntry,
    ListView,
    SearchHit,
    check_author,
    check_feature,
    check_key,
    check_tags,
    check_text,
)
from core.knowledge.rows import (
    FIELDS,
    add_explanation_row,
    annotation_view,
    by_key,
    explanation_view,
    history_entry,
    list_view,
    lock_annotation,
    record_edit,
    retryable,
    slugify,
    snapshot,
)

T = TypeVar("T")
RETRIES = 12
_BATCH = 500  # bound on the number of bound parameters in one IN (...)


class KnowledgeStore:
    """What people and models say about features, in one SQL database (see module doc)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._reader = engine.execution_options(**{READ_OPTION: True})

    # -- transactions --------------------------------------------------------------------

    def write(self, fn: Callable[[Session], T]) -> T:
        """Run ``fn`` in one write transaction, retried on lock contention."""
        delay = 0.005
        for attempt in range(RETRIES):
            try:
                with Session(self.engine, expire_on_commit=False) as session, session.begin():
                    return fn(session)
            except (OperationalError, IntegrityError) as exc:
                if attempt == RETRIES - 1 or not retryable(exc):
                    raise
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 0.5)
        raise AssertionError("unreachable")

    def read(self, fn: Callable[[Session], T]) -> T:
        """Run ``fn`` in one read transaction."""
        with Session(self._reader) as session, session.begin():
            return fn(session)

    # -- annotations ---------------------------------------------------------------------

    def annotate(
        self,
        dictionary_key: str,
        feature: int,
        *,
        label: str | None = None,
        notes: str | None = None,
        tags: Iterable[str] | None = None,
        author: str,
    ) -> AnnotationView:
        """Set any of label, notes (Markdown) and tags of a feature as one edit."""
        changes: dict[str, Any] = {}
        if label is not None:
            changes["label"] = check_text("label", label, MAX_LABEL).strip()
        if notes is not None:
            changes["notes"] = check_text("notes", notes, 100_000)
        if tags is not None:
            changes["tags"] = check_tags(list(tags) if not isinstance(tags, str) else tags)
        return self._edit(dictionary_key, feature, author, "edit", changes)

    def set_label(self, dictionary_key: str, feature: int, label: str, *, author: str):
        return self.annotate(dictionary_key, feature, label=label, author=author)

    def set_notes(self, dictionary_key: str, feature: int, notes: str, *, author: str):
        return self.annotate(dictionary_key, feature, notes=notes, author=author)

    def set_tags(self, dictionary_key: str, feature: int, tags: Iterable[str], *, author: str):
        return self.annotate(dictionary_key, feature, tags=tags, author=author)

    def delete(self, dictionary_key: str, feature: int, *, author: str) -> AnnotationView:
        """Mark a feature's annotation deleted (kept, and undoable with :meth:`undo_delete`)."""
        current = self.annotation(dictionary_key, feature, include_deleted=True)
        if current is None or current.deleted:
            raise KnowledgeError(
                f"feature {feature} of dictionary {dictionary_key[:12]} has no annotation to delete"
            )
        return self._edit(dictionary_key, feature, author, "delete", {"deleted": True})

    def undo_delete(self, dictionary_key: str, feature: int, *, author: str) -> AnnotationView:
        """Bring back a deleted annotation as it was."""
        current = self.annotation(dictionary_key, feature, include_deleted=True)
        if current is None or not current.deleted:
            raise KnowledgeError(
                f"feature {feature} of dictionary {dictionary_key[:12]} has no deleted "
                "annotation to bring back"
            )
        return self._edit(dictionary_key, feature, author, "undo_delete", {"deleted": False})

    def annotation(
        self, dictionary_key: str, feature: int, *, include_deleted: bool = False
    ) -> AnnotationView | None:
        """A feature's annotation, or None (also when deleted, unless ``include_deleted``)."""
        check_key(dictionary_key)
        check_feature(feature)

        def fn(session: Session) -> AnnotationView | None:
            row = session.scalars(by_key(dictionary_key, feature)).one_or_none()
            if row is None or (row.deleted and not include_deleted):
                return None
            return annotation_view(row)

        return self.read(fn)

    def labels(self, dictionary_key: str, features: Iterable[int]) -> dict[int, str]:
        """The non-empty labels of ``features`` (deleted ones left out), in batched queries."""
        return self.texts(dictionary_key, features, Annotation.label)

    def texts(self, dictionary_key: str, features: Iterable[int], column: Any) -> dict[int, str]:
        """The non-empty values of a text ``column`` of :class:`Annotation` (``label``,
        ``notes``) for ``features``, deleted annotations left out, in batched queries."""
        check_key(dictionary_key)
        wanted = sorted({check_feature(f) for f in features})

        def fn(session: Session) -> dict[int, str]:
            out: dict[int, str] = {}
            for i in range(0, len(wanted), _BATCH):
                rows = session.execute(
                    select(Annotation.feature, column).where(
                        Annotation.dictionary_key == dictionary_key,
                        Annotation.feature.in_(wanted[i : i + _BATCH]),
                        Annotation.deleted.is_(False),
                        column != "",
                    )
                )
                out.update({f: text for f, text in rows})
            return out

        return self.read(fn)

    def history(self, dictionary_key: str, feature: int) -> list[HistoryEntry]:
        """Every edit of a feature's annotation, oldest first."""
        check_key(dictionary_key)
        check_feature(feature)

        def fn(session: Session) -> list[HistoryEntry]:
            row = session.scalars(by_key(dictionary_key, feature)).one_or_none()
            return [] if row is None else [history_entry(e) for e in row.history]

        return self.read(fn)

    def _edit(
        self, dictionary_key: str, feature: int, author: str, action: str, changes: dict
    ) -> AnnotationView:
        check_key(dictionary_key)
        check_feature(feature)
        author = check_author(author)

        def fn(session: Session) -> AnnotationView:
            row, created = lock_annotation(session, dictionary_key, feature)
            before = snapshot(row)
            for name, value in changes.items():
                setattr(row, name, value)
            after = snapshot(row)
            if after != before or created:
                diff = [k for k in FIELDS if before[k] != after[k]] or list(FIELDS)
                record_edit(
                    session,
                    row,
                    "create" if created else action,
                    author,
                    {k: before[k] for k in diff},
                    {k: after[k] for k in diff},
                )
            return annotation_view(row)

        return self.write(fn)

    # -- dictionaries --------------------------------------------------------------------

    def describe_dictionary(self, dictionary_key: str, name: str, spec: str = "") -> None:
        """Record a display name (and the spec text) for a dictionary key."""
        check_key(dictionary_key)

        def fn(session: Session) -> None:
            row = session.get(DictionaryRecord, dictionary_key)
            if row is None:
                session.add(DictionaryRecord(key=dictionary_key, name=name, spec=spec))
            else:
                row.name, row.spec = name, spec

        self.write(fn)

    def dictionaries(self) -> dict[str, str]:
        """Dictionary key -> display name, for those described."""
        return self.read(
            lambda s: dict(s.execute(select(DictionaryRecord.key, DictionaryRecord.name)).all())
        )

    # -- lists ---------------------------------------------------------------------------

    def create_list(
        self, name: str, *, author: str, description: str = "", slug: str | None = None
    ) -> ListView:
        """A new, empty list; its slug (for links) comes from the name unless given."""
        name = check_text("list name", name, 200).strip()
        if not name:
            raise KnowledgeError("a list needs a name")
        author = check_author(author)
        description = check_text("list description", description, 10_000)
        base = slugify(slug if slug is not None else name)
        if not base:
            raise KnowledgeError(f"slug {slug!r}: use letters, digits and dashes")

        def fn(session: Session) -> ListView:
            taken = set(session.scalars(select(FeatureList.slug)))
            chosen = base
            if slug is not None and chosen in taken:
                raise KnowledgeError(f"a list with slug {chosen!r} exists: choose another slug")
            n = 2
            while chosen in taken:
                chosen, n = f"{base}-{n}", n + 1
            row = FeatureList(name=name, slug=chosen, description=description, created_by=author)
            session.add(row)
            session.flush()
            return list_view(row)

        return self.write(fn)

    def add_to_list(
        self, slug: str, dictionary_key: str, feature: int, *, note: str = ""
    ) -> ListView:
        """Append a feature to a list (or update its note if it is there already)."""
        check_key(dictionary_key)
        check_feature(feature)
        note = check_text("note", note, 10_000)

        def fn(session: Session) -> ListView:
            row = self._list_row(session, slug, lock=True)
            for entry in row.entries:
                if (entry.dictionary_key, entry.feature) == (dictionary_key, feature):
                    entry.note = note
                    break
            else:
                last = max((e.position for e in row.entries), default=-1)
                row.entries.append(
                    ListEntry(
                        dictionary_key=dictionary_key, feature=feature, note=note, position=last + 1
                    )
                )
            row.updated_at = utcnow()
            session.flush()
            return list_view(row)

        return self.write(fn)

    def remove_from_list(self, slug: str, dictionary_key: str, feature: int) -> ListView:
        """Take a feature out of a list (an error if it is not in it)."""

        def fn(session: Session) -> ListView:
            row = self._list_row(session, slug, lock=True)
            keep = [
                e for e in row.entries if (e.dictionary_key, e.feature) != (dictionary_key, feature)
            ]
            if len(keep) == len(row.entries):
                raise KnowledgeError(f"feature {feature} is not in list {slug!r}")
            row.entries = keep
            row.updated_at = utcnow()
            session.flush()
            return list_view(row)

        return self.write(fn)

    def delete_list(self, slug: str) -> None:
        self.write(lambda s: s.delete(self._list_row(s, slug, lock=True)))

    def lists(self) -> list[ListView]:
        """Every list with its entries, by name."""
        return self.read(
            lambda s: [
                list_view(r)
                for r in s.scalars(select(FeatureList).order_by(FeatureList.name, FeatureList.slug))
            ]
        )

    def list_by_slug(self, slug: str) -> ListView:
        return self.read(lambda s: list_view(self._list_row(s, slug)))

    def _list_row(self, session: Session, slug: str, lock: bool = False) -> FeatureList:
        query = select(FeatureList).where(FeatureList.slug == slug)
        row = session.scalars(query.with_for_update() if lock else query).one_or_none()
        if row is None:
            known = list(session.scalars(select(FeatureList.slug).order_by(FeatureList.slug)))
            raise UnknownListError(
                f"no list {slug!r}: the lists are {known[:20]}"
                if known
                else f"no list {slug!r}: there are no lists yet (create one with create_list)"
            )
        return row

    # -- explanations --------------------------------------------------------------------

    def add_explanation(
        self,
        dictionary_key: str,
        feature: int,
        text: str,
        *,
        explainer: str,
        prompt_version: str,
        scores: dict[str, float],
        method: str,
        author: str,
        source: str = "featurescope",
    ) -> int:
        """Store one explanation with its provenance and scores; returns its id."""
        return self.write(
            lambda s: (
                add_explanation_row(
                    s,
                    dictionary_key,
                    feature,
                    text,
                    explainer=explainer,
                    prompt_version=prompt_version,
                    scores=scores,
                    method=method,
                    author=author,
                    source=source,
                ).id
            )
        )

    def explanations(self, dictionary_key: str, feature: int) -> list[ExplanationView]:
        """A feature's explanations, newest first."""
        check_key(dictionary_key)
        check_feature(feature)
        query = (
            select(Explanation)
            .where(Explanation.dictionary_key == dictionary_key, Explanation.feature == feature)
            .order_by(Explanation.created_at.desc(), Explanation.id.desc())
        )
        return self.read(lambda s: [explanation_view(r) for r in s.scalars(query)])

    def has_explanation(
        self, dictionary_key: str, feature: int, explainer: str, prompt_version: str
    ) -> bool:
        """True when the feature has an explanation by ``explainer`` under ``prompt_version``
        (a resumed explain batch skips it)."""
        check_key(dictionary_key)
        check_feature(feature)
        query = select(Explanation.id).where(
            Explanation.dictionary_key == dictionary_key,
            Explanation.feature == feature,
            Explanation.explainer == explainer,
            Explanation.prompt_version == prompt_version,
        )
        return self.read(lambda s: s.scalars(query.limit(1)).first() is not None)

    # -- search, import, export ----------------------------------------------------------

    def search(
        self, text: str, dictionary_key: str | None = None, limit: int = 50
    ) -> list[SearchHit]:
        """Features whose label, notes or explanations match the words of ``text``, best first."""
        if dictionary_key is not None:
            check_key(dictionary_key)
        return self.read(lambda s: search.search(s, text, dictionary_key, limit))

    def export_json(self) -> dict[str, Any]:
        """Every dictionary description, annotation (with history), list and explanation."""
        return self.read(exchange.export_all)

    def import_json(self, data: dict[str, Any]) -> None:
        """Load what :meth:`export_json` wrote (into an empty store it is an exact copy)."""
        self.write(lambda s: exchange.import_all(s, data))

    def import_neuronpedia(self, records: list[dict[str, Any]], dictionary_key: str) -> int:
        """Store Neuronpedia's exported explanations for one dictionary; returns how many."""
        check_key(dictionary_key)
        return self.write(lambda s: exchange.import_neuronpedia(s, records, dictionary_key))

    def export_neuronpedia(
        self, dictionary_key: str, *, model_id: str | None = None, sae_id: str | None = None
    ) -> list[dict[str, Any]]:
        """This dictionary's explanations in Neuronpedia's export form."""
        check_key(dictionary_key)
        return self.read(lambda s: exchange.export_neuronpedia(s, dictionary_key, model_id, sae_id))
