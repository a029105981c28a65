"""The knowledge store's tables as SQLAlchemy 2 typed declarative models.

Everything said about a feature is keyed by ``(dictionary_key, feature)``: the dictionary's
fingerprint (:meth:`core.dictionaries.protocol.Dictionary.fingerprint`, a sha256 hex) and the
feature index, so a label holds wherever the feature is viewed. The schema itself is created by
the Alembic migrations in ``migrations/`` (which also add full-text search); these classes are
how the store reads and writes it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

KEY_LENGTH = 128  # dictionary keys are sha256 hex (64); room for other fingerprints


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A UTC timestamp: stored without zone (same on SQLite and PostgreSQL), read back aware."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("timestamps must carry a time zone (use datetime.now(UTC))")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[str]: JSON}


class DictionaryRecord(Base):
    """Optional display information for a dictionary key."""

    __tablename__ = "dictionaries"

    key: Mapped[str] = mapped_column(String(KEY_LENGTH), primary_key=True)
    name: Mapped[str] = mapped_column(Text, default="")
    spec: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Annotation(Base):
    """The current label, notes and tags of one feature; ``version`` counts its edits."""

    __tablename__ = "annotations"
    __table_args__ = (UniqueConstraint("dictionary_key", "feature", name="uq_annotation_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dictionary_key: Mapped[str] = mapped_column(String(KEY_LENGTH))
    feature: Mapped[int] = mapped_column(Integer)
    label: Mapped[str] = mapped_column(Text, default="")
    notes: Mapped[str] = mapped_column(Text, default="")
    tags: Mapped[list[str]] = mapped_column(default=list)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    version: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_by: Mapped[str] = mapped_column(Text, default="")

    history: Mapped[list[AnnotationEdit]] = relationship(
        back_populates="annotation", order_by="AnnotationEdit.version", passive_deletes=True
    )


class AnnotationEdit(Base):
    """One edit of an annotation: who, when, what action, and the fields before and after."""

    __tablename__ = "annotation_history"
    __table_args__ = (UniqueConstraint("annotation_id", "version", name="uq_history_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    annotation_id: Mapped[int] = mapped_column(
        ForeignKey("annotations.id", ondelete="CASCADE"), index=True
    )
    version: Mapped[int] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(32))
    author: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    before: Mapped[dict[str, Any]] = mapped_column(default=dict)
    after: Mapped[dict[str, Any]] = mapped_column(default=dict)

    annotation: Mapped[Annotation] = relationship(back_populates="history")


class FeatureList(Base):
    """A named collection of features (possibly from several dictionaries); ``slug`` links it."""

    __tablename__ = "lists"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    slug: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    entries: Mapped[list[ListEntry]] = relationship(
        back_populates="list",
        order_by="ListEntry.position",
        cascade="all, delete-orphan",
        passive_deletes=True,
    )


class ListEntry(Base):
    """One feature in a list, with its note and position."""

    __tablename__ = "list_entries"
    __table_args__ = (
        UniqueConstraint("list_id", "dictionary_key", "feature", name="uq_list_entry"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    list_id: Mapped[int] = mapped_column(ForeignKey("lists.id", ondelete="CASCADE"), index=True)
    dictionary_key: Mapped[str] = mapped_column(String(KEY_LENGTH))
    feature: Mapped[int] = mapped_column(Integer)
    note: Mapped[str] = mapped_column(Text, default="")
    position: Mapped[int] = mapped_column(Integer, default=0)

    list: Mapped[FeatureList] = relationship(back_populates="entries")


class Explanation(Base):
    """One explanation of a feature, by a person, a language model or an import."""

    __tablename__ = "explanations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dictionary_key: Mapped[str] = mapped_column(String(KEY_LENGTH), index=True)
    feature: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    explainer: Mapped[str] = mapped_column(Text, default="")
    prompt_version: Mapped[str] = mapped_column(Text, default="")
    scores: Mapped[dict[str, Any]] = mapped_column(default=dict)
    method: Mapped[str] = mapped_column(Text, default="")
    source: Mapped[str] = mapped_column(Text, default="featurescope")
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(Text, default="")
