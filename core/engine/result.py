"""Columnar sweep results, turned into per-feature :class:`FeatureData` on demand.

A whole-dictionary sweep produces data for tens of thousands of features. Building
millions of Python objects up front would cost more than the sweep itself, so the
engine keeps its results as a handful of CPU tensors (one row per feature) and this
mapping builds a feature's plain data only when it is asked for. Whole-dictionary
tables (density, maximum, top tokens) come straight from the columns.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from core.engine.features import FeatureData, gc_paused
from core.engine.rows import EXAMPLES, RowContext, build_feature, pack_rows, window_strings
from core.previews import PREVIEW_TOKENS, SUMMARY_COLUMNS


def window_ids(
    tokens: Int[Tensor, "seq pos"], seq: Tensor, pos: Tensor, window: tuple[int, int] | None
) -> Tensor:
    """The token ids of the windows of examples at ``(seq, pos)`` (any equal shapes ``S``):
    ``S + [before + 1 + after]`` (``S + [length]`` for whole sequences), int32, ``-1``
    outside the sequence or where ``seq < 0`` (no example)."""
    length = tokens.shape[1]
    if window is None:
        at = torch.arange(length).expand(*seq.shape, length)
    else:
        before, after = window
        at = pos.long().unsqueeze(-1) - before + torch.arange(before + after + 1)
    ok = (at >= 0) & (at < length) & (seq >= 0).unsqueeze(-1)
    ids = tokens[seq.long().clamp(min=0).unsqueeze(-1), at.clamp(0, length - 1)]
    return torch.where(ok, ids, -1).to(torch.int32)


class FeatureSet(Mapping[int, FeatureData]):
    """Read-only mapping ``feature index -> FeatureData`` over columnar tensors.

    Args:
        features: feature indices, one per row of every column.
        cols: name -> CPU tensor with one row per feature (see ``core.engine.sweep``).
        tokens: ``[sequences, positions]`` token ids the sweep ran on.
        vocab: the string of every token id.
        window: (before, after) context sizes, or ``None`` for whole sequences.
        extras: per-feature extras from the dictionary (lists, one entry per row).
    """

    def __init__(
        self,
        features: list[int],
        cols: dict[str, Tensor],
        tokens: Tensor,
        vocab: list[str],
        window: tuple[int, int] | None,
        extras: dict[str, list[Any]] | None = None,
    ):
        self.order = list(features)
        self.row = {f: r for r, f in enumerate(self.order)}
        self.cols = cols
        self.tokens = tokens.cpu()
        self.length = tokens.shape[1]
        self.vocab = vocab
        self.window = window
        self.extras = extras or {}
        self._built: dict[int, FeatureData] = {}
        self._table: np.ndarray | None = None  # the vocabulary as an object array
        self.context = RowContext(int(cols["n_tokens"]), self.length, window, self._token_strs)

    # --- Mapping -------------------------------------------------------------------------
    def __getitem__(self, f: int) -> FeatureData:
        if f not in self.row:
            raise KeyError(f)
        got = self._built.get(f)
        if got is None:
            r = self.row[f]
            got = self._build_rows(r, r + 1)[0]
            self._built[f] = got
        return got

    def __iter__(self) -> Iterator[int]:
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)

    def batches(
        self, size: int = 256, keep: bool = True
    ) -> Iterator[list[tuple[int, FeatureData]]]:
        """Every feature as ``(index, data)``, in order, built ``size`` rows at a time
        (one slice of every column per batch: much cheaper than one feature at a time).
        ``keep=False`` does not keep what it builds (a whole dictionary streamed through)."""
        for r0 in range(0, len(self.order), max(1, size)):
            r1 = min(r0 + max(1, size), len(self.order))
            todo = [r for r in range(r0, r1) if self.order[r] not in self._built]
            made: dict[int, FeatureData] = {}
            if todo:
                lo, hi = todo[0], todo[-1] + 1
                for r, data in zip(range(lo, hi), self._build_rows(lo, hi), strict=True):
                    made.setdefault(self.order[r], data)
                if keep:
                    for f, data in made.items():
                        self._built.setdefault(f, data)
            yield [(f, self._built.get(f) or made[f]) for f in self.order[r0:r1]]

    # --- summaries ---------------------------------------------------------------------------
    def summary(self, r0: int = 0, r1: int | None = None) -> dict[str, list]:
        """:func:`~core.previews.summary_table` of the features of rows ``r0:r1`` (all by
        default), the same values and types, from the columns: none is built. Each
        feature's ``fires_on`` is the distinct strings of its top examples' own tokens,
        strongest first (:func:`~core.previews.feature_preview`)."""
        r1 = len(self.order) if r1 is None else r1
        c = {k: v[r0:r1] for k, v in self.cols.items() if v.dim() > 0}
        n = r1 - r0
        seq, pos = c["top_seq"], c["top_pos"]
        at = (seq.long().clamp(min=0), pos.long().clamp(0, self.length - 1))  # empty slots: -1
        ids = self.tokens[at].tolist()
        fires: list[list[str]] = []
        for row_seq, row_ids in zip(seq.tolist(), ids, strict=True):
            shown = [i for s, i in zip(row_seq, row_ids, strict=True) if s >= 0]
            distinct: list[str] = []
            for text in self._token_strs(shown):
                if text not in distinct:
                    distinct.append(text)
                    if len(distinct) == PREVIEW_TOKENS:
                        break
            fires.append(distinct)
        top = (
            [self._token_strs(row[:PREVIEW_TOKENS]) for row in c["pos_i"].tolist()]
            if "pos_i" in c
            else [[] for _ in range(n)]
        )
        values = {
            "feature": self.order[r0:r1],
            "density": [float(v) for v in c["density"].tolist()],
            "max_act": [float(v) for v in c["max"].tolist()],
            "mean_act": [float(v) for v in c["mean"].tolist()],
            "n_active": [int(v) for v in c["count"].tolist()],
            "top_tokens": top,
            "fires_on": fires,
        }
        return {k: values[k] for k in SUMMARY_COLUMNS}

    # --- building --------------------------------------------------------------------------
    def _token_str(self, i: int) -> str:
        return self.vocab[i] if 0 <= i < len(self.vocab) else f"<{i}>"

    def _token_strs(self, ids: list[int]) -> list[str]:
        """The strings of ``ids`` (one lookup each when all are in the vocabulary)."""
        if ids and min(ids) >= 0 and max(ids) < len(self.vocab):
            return list(map(self.vocab.__getitem__, ids))
        return [self._token_str(i) for i in ids]

    def _string_table(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:func:`~core.engine.rows.window_strings`' table and places for token ids ``ids``:
        the vocabulary, ``<id>`` for each id past its end (as :meth:`_token_str`), ``""``."""
        if self._table is None:
            self._table = np.array([*self.vocab, ""], dtype=object)
        n = len(self.vocab)
        past = np.unique(ids[ids >= n])
        if not past.size:
            return self._table, ids
        names = np.array([f"<{i}>" for i in past.tolist()], dtype=object)
        table = np.concatenate([self._table[:n], names, self._table[n:]])
        return table, np.where(ids >= n, n + np.searchsorted(past, ids), ids)

    def _slices(self, r0: int, r1: int) -> dict[str, Tensor]:
        """Rows ``r0:r1`` of every column, with the token ids of their examples' windows."""
        out = {k: v[r0:r1] for k, v in self.cols.items() if v.dim() > 0}
        for kind, (seq, pos, _) in EXAMPLES.items():
            if seq in out:
                out[f"{kind}_ids"] = window_ids(self.tokens, out[seq], out[pos], self.window)
        return out

    def _extras(self, r: int) -> dict[str, Any]:
        return {k: v[r] for k, v in self.extras.items()}

    def _build_rows(
        self, r0: int, r1: int, slices: dict[str, Tensor] | None = None
    ) -> list[FeatureData]:
        """The features of rows ``r0:r1``: every column sliced once (``slices``: those
        slices, made already), as Python lists."""
        with gc_paused():
            got = self._slices(r0, r1) if slices is None else slices
            rows = {k: v.tolist() for k, v in got.items()}
            for kind in EXAMPLES:
                if f"{kind}_ids" in got:
                    ids = got[f"{kind}_ids"].numpy()
                    rows[f"{kind}_strs"] = window_strings(ids, *self._string_table(ids))
            return [
                build_feature(rows, j, self.order[r0 + j], self.context, self._extras(r0 + j))
                for j in range(r1 - r0)
            ]

    def row_bytes(self, r0: int, r1: int, slices: dict[str, Tensor] | None = None) -> list[bytes]:
        """The stored form (:func:`~core.engine.rows.pack_rows`) of the features of rows
        ``r0:r1``; :func:`~core.engine.rows.feature_from_row` reads each back as
        ``self[f]``."""
        got = self._slices(r0, r1) if slices is None else slices
        cols = {k: v.numpy() for k, v in got.items()}
        extras = [self._extras(r) for r in range(r0, r1)]
        return pack_rows(cols, self.order[r0:r1], self.context, extras)

    def stored_batches(self, size: int) -> Iterator[tuple[FeatureChunk, list[bytes]]]:
        """Every feature in order, ``size`` rows at a time: the rows' features
        (:class:`FeatureChunk`, built when first read) and their stored bytes
        (:meth:`row_bytes`), both from one slice of every column. Nothing is kept (a whole
        dictionary streamed into the memo)."""
        for r0 in range(0, len(self.order), max(1, size)):
            r1 = min(r0 + max(1, size), len(self.order))
            got = self._slices(r0, r1)
            yield FeatureChunk(self, r0, r1, got), self.row_bytes(r0, r1, got)


class FeatureChunk(Mapping[int, FeatureData]):
    """The features of rows ``r0:r1`` of a :class:`FeatureSet` (``slices``: those rows of
    its columns), built into :class:`FeatureData` together the first time one is read;
    their :meth:`summary` comes from the columns without building them (a precompute
    writing only the memo and Neuronpedia files never builds them in its own process)."""

    def __init__(self, features: FeatureSet, r0: int, r1: int, slices: dict[str, Tensor]):
        self._set, self._r0, self._r1, self._slices = features, r0, r1, slices
        self.order = features.order[r0:r1]
        self._built: dict[int, FeatureData] | None = None

    def __getitem__(self, f: int) -> FeatureData:
        if self._built is None:
            built = self._set._build_rows(self._r0, self._r1, self._slices)
            self._built = dict(zip(self.order, built, strict=True))
        return self._built[f]

    def __iter__(self) -> Iterator[int]:
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)

    def summary(self) -> dict[str, list]:
        """:meth:`FeatureSet.summary` of these rows."""
        return self._set.summary(self._r0, self._r1)
