"""Reading a precompute output directory back (no model needed): :class:`PrecomputedStore`.

The directory is written by :mod:`core.precompute.run` (see :mod:`core.precompute` for
the layout). This module imports no model code, so ``python -m core inspect DIR`` and the
app's precomputed mode open an output quickly. A directory on a read-only mount is read as
it is (its memo opens read-only).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.config import MAX_FEATURES, check_feature_index
from core.memo import Memo, feature_key, feature_prefix
from core.precompute.manifest import (
    FORMAT,
    MANIFEST,
    NO_EVICTION,
    READABLE_VERSIONS,
    PrecomputedError,
    RunnerError,
    chunk_name,
    expand_ranges,
)
from core.previews import SUMMARY_COLUMNS

if TYPE_CHECKING:
    from core.engine.features import FeatureData


class PrecomputedStore:
    """Read-only view of a precompute output directory (no model needed): a
    :class:`~core.feature_source.FeatureSource` that is not ``live``.
    """

    live = False

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        mpath = self.path / MANIFEST
        if not mpath.is_file():
            raise RunnerError(
                f"{self.path} is not a precompute output directory (no {MANIFEST}); create one "
                "with `python -m core precompute --output-dir DIR ...`"
            )
        try:
            self.manifest: dict[str, Any] = json.loads(mpath.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise RunnerError(f"{mpath} is not valid JSON: {exc}") from exc
        if self.manifest.get("format") != FORMAT:
            raise RunnerError(f"{mpath} is not a {FORMAT} manifest")
        self.version = self.manifest.get("version")
        if self.version not in READABLE_VERSIONS:
            readable = ", ".join(map(str, READABLE_VERSIONS))
            raise RunnerError(
                f"{mpath} has format version {self.version!r}; this program reads versions "
                f"{readable}: recompute it"
            )
        feats = self.manifest["features"]
        n = self.manifest.get("source", {}).get("n_features")
        if not isinstance(n, int) or isinstance(n, bool) or not 0 < n <= MAX_FEATURES:
            raise RunnerError(
                f"{mpath} gives no usable dictionary size (n_features {n!r}): the manifest is "
                "damaged; run the precompute again with --overwrite"
            )
        self.requested = expand_ranges(feats["requested"], n, "requested features")
        self._position = {f: k for k, f in enumerate(self.requested)}
        self.done = set(expand_ranges(feats["done"], n, "done features"))
        self.skipped = set(feats["skipped"])
        self.chunk_size = int(self.manifest["chunks"]["size"])
        self.completed = set(self.manifest["chunks"]["completed"])
        self._memo: Memo | None = None
        self._summary: dict[str, list] | None = None

    # --- description --------------------------------------------------------------------------
    @property
    def n_features(self) -> int:
        """Number of features of the dictionary (valid indices are ``0..n_features-1``)."""
        return int(self.manifest["source"]["n_features"])

    def stored_features(self) -> list[int]:
        """Indices whose dashboards are stored, ascending."""
        return sorted(self.done)

    def check_index(self, i: object) -> int:
        """``i`` as a feature index of the dictionary, or :class:`PrecomputedError`."""
        return check_feature_index(i, self.n_features, PrecomputedError)

    def has(self, i: int) -> bool:
        """True when feature ``i``'s dashboard is stored (see :meth:`feature`)."""
        return i in self.done and "memo" in self.manifest["outputs"]

    @property
    def complete(self) -> bool:
        return self.manifest.get("status") == "complete"

    def describe(self) -> dict[str, Any]:
        """What was computed (same keys as ``Workspace.describe`` plus run details)."""
        src = self.manifest["source"]
        return {
            "model": src["model"].get("name"),
            "dictionary": src["dictionary"],
            "dataset": src["dataset"],
            "n_features": self.n_features,
            "n_sequences": src["n_sequences"],
            "context_length": src["context_length"],
            "n_tokens": src["n_tokens"],
            "device": "precomputed",
            "hook": src["hook"],
            "path": str(self.path),
            "complete": self.complete,
            "n_requested": len(self.requested),
            "n_done": len(self.done),
            "n_skipped": len(self.skipped),
            "chunks_done": len(self.completed),
            "chunks_total": int(self.manifest["chunks"]["count"]),
            "outputs": list(self.manifest["outputs"]),
            "min_density": self.manifest["config"]["min_density"],
            "run_id": self.manifest["run_id"],
        }

    def identity_key(self) -> str:
        """Short id of (model, dictionary, tokens, result config), as ``Workspace.identity_key``."""
        return self._source_key()[:12]

    def dictionary_key(self) -> str:
        """The dictionary's fingerprint (the manifest's identity), as ``Workspace.dictionary_key``."""
        fingerprint = self.manifest["identity"].get("dictionary_fingerprint")
        if not fingerprint:
            raise PrecomputedError(
                f"{self.path}: this output's manifest does not record its dictionary's "
                "fingerprint (an old format): precompute it again to label its features"
            )
        return str(fingerprint)

    def _source_key(self) -> str:
        ident = self.manifest["identity"]
        return str(ident["key"] if self.version == 1 else ident["source_key"])

    def _key(self, i: int, chunk: int) -> str:
        """Where feature ``i`` (in ``chunk``) is stored: the sources' memo key (the app's
        and the API's too); version 1 outputs used ``feature:{i}``."""
        if self.version == 1:
            return f"feature:{i}"
        size = self.chunk_size
        features = self.requested[chunk * size : (chunk + 1) * size]
        correlation = self.manifest["identity"]["result_config"]["feature_correlation"]
        return feature_key(feature_prefix(self._source_key(), correlation, features), i)

    # --- data -----------------------------------------------------------------------------------
    @property
    def memo(self) -> Memo:
        if self._memo is None:
            self._memo = Memo(self.path / "memo", size_limit=NO_EVICTION)
        return self._memo

    def chunk_of(self, i: int) -> int | None:
        """The chunk that holds feature ``i`` (``None`` when it was not requested)."""
        n = self._position.get(i)
        return None if n is None else n // self.chunk_size

    def html_path(self, i: int) -> Path | None:
        """The HTML page showing feature ``i``, when it exists."""
        k = self.chunk_of(i)
        if k is None or i not in self.done:
            return None
        p = self.path / "html" / chunk_name(k)
        return p if p.is_file() else None

    def feature(self, i: int) -> FeatureData:
        """The stored dashboard data of feature ``i``.

        Raises:
            PrecomputedError: ``i`` is out of range, was skipped, was not part of the
                run, is not computed yet, or its stored entry is missing or corrupted.
        """
        i = self.check_index(i)
        if i in self.skipped:
            thr = self.manifest["config"]["min_density"]
            why = "it never fires"
            with contextlib.suppress(Exception):
                density = self._chunk_density(i)
                if density > 0:
                    why = f"density {density:.3g} is below the threshold {thr:g}"
            raise PrecomputedError(
                f"feature {i} was skipped ({why}): its dashboard was not rendered"
            )
        k = self.chunk_of(i)
        if k is None:
            req = self.requested
            span = f"{req[0]}-{req[-1]}" if req else "none"
            raise PrecomputedError(
                f"feature {i} is not part of this precomputed run ({len(req)} features, {span}); "
                "compute it in the app or precompute a range that includes it"
            )
        if i not in self.done:
            total = self.manifest["chunks"]["count"]
            raise PrecomputedError(
                f"feature {i} has not been computed yet: the run is incomplete "
                f"({len(self.completed)}/{total} chunks); run the same precompute command again "
                "to finish it"
            )
        if "memo" not in self.manifest["outputs"]:
            raise PrecomputedError(
                "this run was made without the 'memo' output, so feature data cannot be read "
                "back; rerun with --outputs memo,..."
            )
        got = self.memo.get_feature(self._key(i, k))
        if got is None:
            raise PrecomputedError(
                f"the stored data of feature {i} is missing or corrupted; run the same precompute "
                "command again: it recomputes chunks with missing entries"
            )
        return got

    def _chunk_density(self, i: int) -> float:
        """Feature ``i``'s density from the summary of its own chunk: a skipped feature's
        page reads one chunk, not the whole summary (256 chunks at 131,072 features)."""
        part = self.memo.get_json(f"chunk:{self.chunk_of(i)}:summary")
        if part is None:
            raise KeyError(i)
        return float(part["density"][part["feature"].index(i)])

    def features(self, indices: list[int]) -> dict[int, FeatureData]:
        """Stored data of each of ``indices`` (ascending); raises as :meth:`feature`."""
        return {i: self.feature(i) for i in sorted(set(indices))}

    def summary(self) -> dict[str, list]:
        """Per computed feature the columns of :data:`core.previews.SUMMARY_COLUMNS` and
        ``skipped`` (version 1 outputs stored no ``fires_on``: empty lists).

        Covers the completed chunks (rendered and skipped features alike), ascending.
        """
        if self._summary is not None:
            return self._summary
        keys = [*SUMMARY_COLUMNS, "skipped"]
        out: dict[str, list] = {k: [] for k in keys}
        for k in sorted(self.completed):
            part = self.memo.get_json(f"chunk:{k}:summary")
            if part is None:
                raise RunnerError(
                    f"the summary of chunk {k} in {self.path / 'memo'} is missing or corrupted; "
                    "run the same precompute command again to repair it"
                )
            if "fires_on" not in part:  # version 1
                part["fires_on"] = [[] for _ in part["feature"]]
            for key in keys:
                out[key].extend(part[key])
        self._summary = out
        return out

    def close(self) -> None:
        if self._memo is not None:
            self._memo.close()
            self._memo = None

    def __enter__(self) -> PrecomputedStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_precomputed(path: str | Path) -> PrecomputedStore:
    """Open a precompute output directory for browsing (see :class:`PrecomputedStore`)."""
    return PrecomputedStore(path)
