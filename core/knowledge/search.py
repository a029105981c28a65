"""Search features by words in their label, notes and explanations, ranked.

SQLite: the FTS5 tables of the first migration, ranked by bm25 (label weighted above notes).
PostgreSQL: ``to_tsvector('english', ...)`` expressions served by GIN indexes, ranked by
ts_rank (label weighted above notes). The words of the query are matched with OR (a feature
matching more of them, or matching them more often, ranks higher); both stem English words.
Deleted annotations are never found.
"""

from __future__ import annotations

import re

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from core.knowledge.errors import KnowledgeError
from core.knowledge.models import Annotation
from core.knowledge.records import SearchHit

MAX_TERMS = 32
MAX_LIMIT = 1000

_SQLITE = {
    "annotation": """
        SELECT a.dictionary_key, a.feature, -bm25(annotations_fts, 4.0, 1.0) AS score
        FROM annotations_fts JOIN annotations a ON a.id = annotations_fts.rowid
        WHERE annotations_fts MATCH :q AND a.deleted = 0 {dk}
        ORDER BY score DESC LIMIT :n""",
    "explanation": """
        SELECT e.dictionary_key, e.feature, -bm25(explanations_fts) AS score
        FROM explanations_fts JOIN explanations e ON e.id = explanations_fts.rowid
        WHERE explanations_fts MATCH :q {dk}
        ORDER BY score DESC LIMIT :n""",
}
# The WHERE expressions are those of the GIN indexes in migrations/versions/0001_initial.py.
_POSTGRES = {
    "annotation": """
        SELECT a.dictionary_key, a.feature,
               ts_rank(setweight(to_tsvector('english', a.label), 'A')
                       || setweight(to_tsvector('english', a.notes), 'B'), q) AS score
        FROM annotations a, to_tsquery('english', :q) q
        WHERE to_tsvector('english', a.label || ' ' || a.notes) @@ q AND NOT a.deleted {dk}
        ORDER BY score DESC LIMIT :n""",
    "explanation": """
        SELECT e.dictionary_key, e.feature, ts_rank(to_tsvector('english', e.text), q) AS score
        FROM explanations e, to_tsquery('english', :q) q
        WHERE to_tsvector('english', e.text) @@ q {dk}
        ORDER BY score DESC LIMIT :n""",
}


def terms(query: str) -> list[str]:
    """The words of a query (letters, digits), lower-cased, first occurrence kept."""
    out: list[str] = []
    for word in re.findall(r"[^\W_]+", query.lower()):
        if word not in out:
            out.append(word)
    return out[:MAX_TERMS]


def search(session: Session, query: str, dictionary_key: str | None, limit: int) -> list[SearchHit]:
    if not isinstance(query, str):
        raise KnowledgeError(f"search text must be a string, got {type(query).__name__}")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise KnowledgeError(f"limit {limit!r}: pass a whole number from 1 to {MAX_LIMIT}")
    words = terms(query)
    if not words:
        return []
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite":
        statements, match = _SQLITE, " OR ".join(f'"{w}"' for w in words)
    elif dialect == "postgresql":
        statements, match = _POSTGRES, " | ".join(words)
    else:
        raise KnowledgeError(f"search is not supported on {dialect}: use SQLite or PostgreSQL")
    params: dict[str, object] = {"q": match, "n": limit * 4}
    if dictionary_key is not None:
        params["dk"] = dictionary_key
    best: dict[tuple[str, int], tuple[float, str]] = {}
    for kind, sql in statements.items():
        alias = "a" if kind == "annotation" else "e"
        where = f"AND {alias}.dictionary_key = :dk" if dictionary_key is not None else ""
        for dk, feature, score in session.execute(text(sql.format(dk=where)), params):
            key = (dk, int(feature))
            if key not in best or float(score) > best[key][0]:
                best[key] = (float(score), kind)
    ranked = sorted(best.items(), key=lambda item: (-item[1][0], item[0]))[:limit]
    labels = _labels(session, [key for key, _ in ranked])
    return [
        SearchHit(dk, feature, labels.get((dk, feature), ""), score, kind)
        for (dk, feature), (score, kind) in ranked
    ]


def _labels(session: Session, keys: list[tuple[str, int]]) -> dict[tuple[str, int], str]:
    out: dict[tuple[str, int], str] = {}
    by_dictionary: dict[str, list[int]] = {}
    for dk, feature in keys:
        by_dictionary.setdefault(dk, []).append(feature)
    for dk, features in by_dictionary.items():
        rows = session.execute(
            select(Annotation.feature, Annotation.label).where(
                Annotation.dictionary_key == dk,
                Annotation.feature.in_(features),
                Annotation.deleted.is_(False),
            )
        )
        out.update({(dk, f): label for f, label in rows})
    return out
