"""The knowledge store to and from JSON: our own full export (backups, moving between
databases; exported then imported into an empty store it is an exact copy), and Neuronpedia's
explanation export (a list of objects with ``modelId``, ``layer`` (the SAE id), ``index`` (a
string), ``description``, ``explanationModelName`` and ``typeName``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.knowledge.errors import KnowledgeError
from core.knowledge.models import (
    Annotation,
    AnnotationEdit,
    DictionaryRecord,
    Explanation,
    FeatureList,
    ListEntry,
)
from core.knowledge.records import check_tags
from core.knowledge.rows import add_explanation_row, by_key, lock_annotation

FORMAT = "featurescope-knowledge"
VERSION = 1
NEURONPEDIA_SOURCE = "neuronpedia"
_NP_REQUIRED = ("index", "description")


def _time(value: datetime) -> str:
    return value.isoformat()


def _parse_time(value: Any, where: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise KnowledgeError(f"{where}: {value!r} is not an ISO timestamp") from None
    if parsed.tzinfo is None:
        raise KnowledgeError(f"{where}: timestamp {value!r} needs a time zone (+00:00)")
    return parsed


def export_all(session: Session) -> dict[str, Any]:
    dictionaries = [
        {"key": r.key, "name": r.name, "spec": r.spec, "created_at": _time(r.created_at)}
        for r in session.scalars(select(DictionaryRecord).order_by(DictionaryRecord.key))
    ]
    annotations = [
        {
            "dictionary_key": a.dictionary_key,
            "feature": a.feature,
            "label": a.label,
            "notes": a.notes,
            "tags": list(a.tags),
            "deleted": a.deleted,
            "version": a.version,
            "updated_at": _time(a.updated_at),
            "updated_by": a.updated_by,
            "history": [
                {
                    "version": e.version,
                    "action": e.action,
                    "author": e.author,
                    "at": _time(e.at),
                    "before": e.before,
                    "after": e.after,
                }
                for e in a.history
            ],
        }
        for a in session.scalars(
            select(Annotation).order_by(Annotation.dictionary_key, Annotation.feature)
        )
    ]
    lists = [
        {
            "name": r.name,
            "slug": r.slug,
            "description": r.description,
            "created_at": _time(r.created_at),
            "created_by": r.created_by,
            "updated_at": _time(r.updated_at),
            "entries": [
                {
                    "dictionary_key": e.dictionary_key,
                    "feature": e.feature,
                    "note": e.note,
                    "position": e.position,
                }
                for e in r.entries
            ],
        }
        for r in session.scalars(select(FeatureList).order_by(FeatureList.slug))
    ]
    explanations = [
        {
            "dictionary_key": e.dictionary_key,
            "feature": e.feature,
            "text": e.text,
            "explainer": e.explainer,
            "prompt_version": e.prompt_version,
            "scores": e.scores,
            "method": e.method,
            "source": e.source,
            "meta": e.meta,
            "created_at": _time(e.created_at),
            "created_by": e.created_by,
        }
        for e in session.scalars(select(Explanation).order_by(Explanation.id))
    ]
    return {
        "format": FORMAT,
        "version": VERSION,
        "dictionaries": dictionaries,
        "annotations": annotations,
        "lists": lists,
        "explanations": explanations,
    }


def import_all(session: Session, data: Any) -> None:
    """Restore an :func:`export_all` document. Annotations, lists and dictionaries already
    present are an error (import into an empty store, or one without those keys); explanations
    already present (same feature, text, explainer and time) are skipped."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise KnowledgeError(
            f'not a featurescope knowledge export (no "format": {FORMAT!r}): pass what '
            "KnowledgeStore.export_json() wrote"
        )
    if data.get("version") != VERSION:
        raise KnowledgeError(
            f"knowledge export version {data.get('version')!r}: this featurescope reads "
            f"version {VERSION}"
        )
    try:
        _import(session, data)
    except (KeyError, TypeError, AttributeError) as exc:
        raise KnowledgeError(f"knowledge export is malformed ({exc!r}): {_FIX}") from None


_FIX = "pass an unmodified export_json() document"


def _import(session: Session, data: dict[str, Any]) -> None:
    for d in data.get("dictionaries", []):
        if session.get(DictionaryRecord, d["key"]) is not None:
            continue
        at = _parse_time(d["created_at"], "dictionary")
        session.add(DictionaryRecord(key=d["key"], name=d["name"], spec=d["spec"], created_at=at))
    for a in data.get("annotations", []):
        where = f"annotation of feature {a['feature']!r}"
        if session.scalars(by_key(a["dictionary_key"], a["feature"])).one_or_none():
            raise KnowledgeError(
                f"{where} in dictionary {a['dictionary_key'][:12]} exists already: import into "
                "an empty store (or remove it first)"
            )
        row, _ = lock_annotation(session, a["dictionary_key"], a["feature"])
        row.label, row.notes, row.tags = a["label"], a["notes"], check_tags(a["tags"])
        row.deleted, row.version = bool(a["deleted"]), int(a["version"])
        row.updated_at = _parse_time(a["updated_at"], where)
        row.updated_by = a["updated_by"]
        for e in a["history"]:
            session.add(
                AnnotationEdit(
                    annotation_id=row.id,
                    version=int(e["version"]),
                    action=e["action"],
                    author=e["author"],
                    at=_parse_time(e["at"], where),
                    before=dict(e["before"]),
                    after=dict(e["after"]),
                )
            )
    for li in data.get("lists", []):
        if session.scalars(select(FeatureList).where(FeatureList.slug == li["slug"])).first():
            raise KnowledgeError(
                f"a list with slug {li['slug']!r} exists already: import into an empty store"
            )
        session.add(
            FeatureList(
                name=li["name"],
                slug=li["slug"],
                description=li["description"],
                created_at=_parse_time(li["created_at"], "list"),
                created_by=li["created_by"],
                updated_at=_parse_time(li["updated_at"], "list"),
                entries=[
                    ListEntry(
                        dictionary_key=e["dictionary_key"],
                        feature=int(e["feature"]),
                        note=e["note"],
                        position=int(e["position"]),
                    )
                    for e in li["entries"]
                ],
            )
        )
    for e in data.get("explanations", []):
        at = _parse_time(e["created_at"], "explanation")
        same = select(Explanation.id).where(
            Explanation.dictionary_key == e["dictionary_key"],
            Explanation.feature == e["feature"],
            Explanation.text == e["text"],
            Explanation.explainer == e["explainer"],
            Explanation.created_at == at,
        )
        if session.scalars(same).first() is not None:
            continue
        add_explanation_row(
            session,
            e["dictionary_key"],
            e["feature"],
            e["text"],
            explainer=e["explainer"],
            prompt_version=e["prompt_version"],
            scores=e["scores"],
            method=e["method"],
            author=e["created_by"],
            source=e["source"],
            meta=e["meta"],
            created_at=at,
        )
    session.flush()


def import_neuronpedia(session: Session, records: Any, dictionary_key: str) -> int:
    """Add Neuronpedia's explanations of one SAE under ``dictionary_key``; those already
    imported (same feature, text and explainer model) are skipped. Returns how many were added."""
    if not isinstance(records, list):
        raise KnowledgeError(
            "Neuronpedia explanations must be a JSON list of objects (their explanation export)"
        )
    added = 0
    for i, record in enumerate(records):
        if not isinstance(record, dict) or any(k not in record for k in _NP_REQUIRED):
            raise KnowledgeError(
                f"Neuronpedia record {i} lacks {list(_NP_REQUIRED)}: pass Neuronpedia's "
                "explanation export (objects with modelId, layer, index, description, ...)"
            )
        try:
            feature = int(record["index"])
        except (TypeError, ValueError):
            raise KnowledgeError(
                f"Neuronpedia record {i}: index {record['index']!r} is not a feature index"
            ) from None
        text = str(record["description"]).strip()
        explainer = str(record.get("explanationModelName") or "")
        same = select(Explanation.id).where(
            Explanation.dictionary_key == dictionary_key,
            Explanation.feature == feature,
            Explanation.text == text,
            Explanation.explainer == explainer,
            Explanation.source == NEURONPEDIA_SOURCE,
        )
        if not text or session.scalars(same).first() is not None:
            continue
        meta = {k: v for k, v in record.items() if k not in ("description", "index")}
        add_explanation_row(
            session,
            dictionary_key,
            feature,
            text,
            explainer=explainer,
            prompt_version="",
            scores={},
            method=str(record.get("typeName") or ""),
            author=str(record.get("authorId") or NEURONPEDIA_SOURCE),
            source=NEURONPEDIA_SOURCE,
            meta=meta,
        )
        added += 1
    return added


def export_neuronpedia(
    session: Session, dictionary_key: str, model_id: str | None, sae_id: str | None
) -> list[dict[str, Any]]:
    """One object per explanation, in Neuronpedia's form. ``modelId`` and ``layer`` come from
    the arguments, else from what an import recorded; fields an import kept are written back."""
    query = (
        select(Explanation)
        .where(Explanation.dictionary_key == dictionary_key)
        .order_by(Explanation.feature, Explanation.id)
    )
    out: list[dict[str, Any]] = []
    for e in session.scalars(query):
        record = dict(e.meta) if e.source == NEURONPEDIA_SOURCE else {}
        record.update(
            {
                "modelId": model_id or record.get("modelId", ""),
                "layer": sae_id or record.get("layer", ""),
                "index": str(e.feature),
                "description": e.text,
                "explanationModelName": e.explainer,
                "typeName": e.method,
            }
        )
        out.append(record)
    return out
