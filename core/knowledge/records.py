"""Plain, immutable views of what the knowledge store holds (what callers get back: no
SQLAlchemy objects, no open sessions), and the checks of what callers pass in."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from core.knowledge.errors import KnowledgeError
from core.knowledge.models import KEY_LENGTH

MAX_LABEL = 500
MAX_TAGS = 64


@dataclass(frozen=True)
class AnnotationView:
    dictionary_key: str
    feature: int
    label: str
    notes: str
    tags: tuple[str, ...]
    deleted: bool
    version: int
    updated_at: datetime
    updated_by: str


@dataclass(frozen=True)
class HistoryEntry:
    """One edit: ``before``/``after`` hold the fields it changed (label, notes, tags, deleted)."""

    version: int
    action: str
    author: str
    at: datetime
    before: dict[str, Any]
    after: dict[str, Any]


@dataclass(frozen=True)
class ListItem:
    dictionary_key: str
    feature: int
    note: str
    position: int


@dataclass(frozen=True)
class ListView:
    name: str
    slug: str
    description: str
    created_at: datetime
    created_by: str
    entries: tuple[ListItem, ...] = field(default=())


@dataclass(frozen=True)
class ExplanationView:
    id: int
    dictionary_key: str
    feature: int
    text: str
    explainer: str
    prompt_version: str
    scores: dict[str, float]
    method: str
    source: str
    created_at: datetime
    created_by: str
    meta: dict[str, Any]


@dataclass(frozen=True)
class SearchHit:
    """A feature found by words; ``score`` is higher for a better match, ``matched`` says
    where the best match was (``annotation`` or ``explanation``)."""

    dictionary_key: str
    feature: int
    label: str
    score: float
    matched: str


def check_key(dictionary_key: Any) -> str:
    if not isinstance(dictionary_key, str) or not dictionary_key.strip():
        raise KnowledgeError(
            f"dictionary key {dictionary_key!r}: pass the dictionary's fingerprint "
            "(Dictionary.fingerprint(), a sha256 hex string)"
        )
    if len(dictionary_key) > KEY_LENGTH:
        raise KnowledgeError(
            f"dictionary key of {len(dictionary_key)} characters: at most {KEY_LENGTH} "
            "(pass Dictionary.fingerprint())"
        )
    return dictionary_key


def check_feature(feature: Any) -> int:
    if isinstance(feature, bool) or not isinstance(feature, int) or feature < 0:
        raise KnowledgeError(f"feature {feature!r}: pass a feature index, a whole number >= 0")
    if feature >= 2**31:
        raise KnowledgeError(f"feature {feature}: indices must be below 2**31")
    return feature


def check_author(author: Any) -> str:
    if not isinstance(author, str) or not author.strip():
        raise KnowledgeError(
            f"author {author!r}: pass who makes the edit (an account or a name; "
            "core.knowledge.default_author() gives the local one)"
        )
    return author.strip()


def check_text(name: str, value: Any, limit: int | None = None) -> str:
    if not isinstance(value, str):
        raise KnowledgeError(f"{name} must be text, got {type(value).__name__}")
    if limit is not None and len(value) > limit:
        raise KnowledgeError(f"{name} of {len(value)} characters: keep it under {limit}")
    return value


def check_tags(tags: Any) -> list[str]:
    """Tags stripped, empty ones dropped, duplicates removed (first kept), order kept."""
    if isinstance(tags, str) or not isinstance(tags, list | tuple):
        raise KnowledgeError(f"tags must be a list of strings, got {tags!r}")
    out: list[str] = []
    for tag in tags:
        if not isinstance(tag, str):
            raise KnowledgeError(f"tag {tag!r}: tags must be strings")
        tag = tag.strip()
        if tag and tag not in out:
            out.append(check_text("a tag", tag, 100))
    if len(out) > MAX_TAGS:
        raise KnowledgeError(f"{len(out)} tags: at most {MAX_TAGS}")
    return out


def check_scores(scores: Any) -> dict[str, float]:
    if not isinstance(scores, dict):
        raise KnowledgeError(f"scores must be a dict of name -> number, got {scores!r}")
    out: dict[str, float] = {}
    for name, value in scores.items():
        if not isinstance(name, str) or isinstance(value, bool):
            raise KnowledgeError(f"score {name!r}: {value!r} is not a name and a number")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise KnowledgeError(f"score {name!r}: {value!r} is not a number") from None
        if not math.isfinite(number):
            raise KnowledgeError(f"score {name!r} is {value!r}: scores must be finite")
        out[name] = number
    return out
