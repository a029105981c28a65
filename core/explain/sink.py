"""Where explanations go: the :class:`ExplanationSink` protocol and two small sinks.

The knowledge store implements the protocol; :class:`MemorySink` (tests, notebooks) and
:class:`JsonlSink` (one JSON object per line, for the command line until a store is wired in)
implement it here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class ExplanationSink(Protocol):
    """What the batch needs of a store of explanations."""

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
        """Store one explanation; returns its id."""
        ...

    def has_explanation(
        self, dictionary_key: str, feature: int, explainer: str, prompt_version: str
    ) -> bool:
        """True when this feature already has an explanation by ``explainer`` under
        ``prompt_version`` (the batch then skips it)."""
        ...


class MemorySink:
    """Explanations kept in a list of dicts (``records``)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

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
        self.records.append(
            {
                "id": len(self.records) + 1,
                "dictionary_key": dictionary_key,
                "feature": int(feature),
                "text": text,
                "explainer": explainer,
                "prompt_version": prompt_version,
                "scores": dict(scores),
                "method": method,
                "author": author,
                "source": source,
            }
        )
        return len(self.records)

    def has_explanation(
        self, dictionary_key: str, feature: int, explainer: str, prompt_version: str
    ) -> bool:
        want = (dictionary_key, int(feature), explainer, prompt_version)
        return any(
            (r["dictionary_key"], r["feature"], r["explainer"], r["prompt_version"]) == want
            for r in self.records
        )


class JsonlSink(MemorySink):
    """A :class:`MemorySink` that appends each explanation to a JSON-lines file and reads
    the file back when opened (so a second run resumes)."""

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = Path(path)
        if self.path.exists():
            for n, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    self.records.append(json.loads(line))
                except ValueError as exc:
                    raise ValueError(
                        f"{self.path} line {n} is not JSON ({exc}): fix or remove that line"
                    ) from exc

    def add_explanation(self, dictionary_key: str, feature: int, text: str, **kw: Any) -> int:
        n = super().add_explanation(dictionary_key, feature, text, **kw)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(self.records[-1], ensure_ascii=False) + "\n")
        return n
