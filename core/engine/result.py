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

    # --- whole-set tables ------------------------------------------------------------------
    def summary(self) -> dict[str, list]:
        """One value per feature: index, density, max, mean, top tokens (for search tables)."""
        c = self.cols
        out: dict[str, list] = {
            "feature": self.order,
            "density": c["density"].tolist(),
            "max_act": c["max"].tolist(),
            "mean_act": c["mean"].tolist(),
            "n_active": c["count"].tolist(),
        }
        if "pos_i" in c:
            out["top_tokens"] = [[self.vocab[i] for i in row[:3]] for row in c["pos_i"].tolist()]
        return out

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

    def stored_batches(
        self, size: int
    ) -> Iterator[tuple[list[tuple[int, FeatureData]], list[bytes]]]:
        """Every feature in order, ``size`` rows at a time: its ``(index, data)`` and its
        stored bytes (:meth:`row_bytes`), both from one slice of every column. Nothing is
        kept (a whole dictionary streamed into the memo)."""
        for r0 in range(0, len(self.order), max(1, size)):
            r1 = min(r0 + max(1, size), len(self.order))
            got = self._slices(r0, r1)
            built = self._build_rows(r0, r1, got)
            yield list(zip(self.order[r0:r1], built, strict=True)), self.row_bytes(r0, r1, got)
