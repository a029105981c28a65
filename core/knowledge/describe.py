"""What to call each feature in an export: its best explanation, else its label.

"Best" is the highest mean F1 of the scorers (``detection_f1``, ``fuzzing_f1``; any other
score when those are missing; unscored counts as 0), newest first among equals. Read in
batched queries (never one per feature).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from core import settings
from core.knowledge.access import shared_store
from core.knowledge.models import Annotation, Explanation
from core.knowledge.records import ExplanationView, check_key
from core.knowledge.rows import explanation_view
from core.knowledge.store import KnowledgeStore

_BATCH = 500
_F1 = ("detection_f1", "fuzzing_f1")


@dataclass(frozen=True)
class Description:
    """A feature's text for an export: ``kind`` is ``explanation`` or ``label``; ``by`` the
    explainer model (explanation) or the author (label)."""

    text: str
    kind: str
    by: str


def quality(e: ExplanationView) -> float:
    """The ranking score of an explanation (see the module docstring)."""
    f1 = [e.scores[k] for k in _F1 if k in e.scores]
    if f1:
        return sum(f1) / len(f1)
    return max(e.scores.values(), default=0.0)


def best_explanations(
    store: KnowledgeStore, dictionary_key: str, features: Iterable[int]
) -> dict[int, ExplanationView]:
    """The best explanation of each of ``features`` that has one."""
    check_key(dictionary_key)
    wanted = sorted({int(f) for f in features})

    def fn(session) -> dict[int, ExplanationView]:
        best: dict[int, ExplanationView] = {}
        for i in range(0, len(wanted), _BATCH):
            query = (
                select(Explanation)
                .where(
                    Explanation.dictionary_key == dictionary_key,
                    Explanation.feature.in_(wanted[i : i + _BATCH]),
                )
                .order_by(Explanation.created_at.desc(), Explanation.id.desc())
            )
            for row in session.scalars(query):
                e = explanation_view(row)
                if e.feature not in best or quality(e) > quality(best[e.feature]):
                    best[e.feature] = e
        return best

    return store.read(fn)


def descriptions(
    store: KnowledgeStore, dictionary_key: str, features: Iterable[int]
) -> dict[int, Description]:
    """Each feature's best explanation, else its label (features with neither left out)."""
    wanted = sorted({int(f) for f in features})
    out = {
        f: Description(e.text, "explanation", e.explainer)
        for f, e in best_explanations(store, dictionary_key, wanted).items()
    }
    rest = [f for f in wanted if f not in out]
    if rest:
        for f, label in store.labels(dictionary_key, rest).items():
            out[f] = Description(label, "label", "")
    return out


def stored_descriptions(dictionary_key: str, features: Iterable[int]) -> dict[int, Description]:
    """:func:`descriptions` from the configured store (``FEATURESCOPE_DB``); empty when that
    is a SQLite file that does not exist yet (nothing is created for a read)."""
    url = settings.knowledge_db_url()
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return {}
    return descriptions(shared_store(url), dictionary_key, features)


def notes(store: KnowledgeStore, dictionary_key: str, features: Iterable[int]) -> dict[int, str]:
    """The non-empty notes (Markdown) of ``features``, deleted ones left out (batched)."""
    return store.texts(dictionary_key, features, Annotation.notes)
