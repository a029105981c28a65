"""Columnar sweep results, turned into per-feature :class:`FeatureData` on demand.

A whole-dictionary sweep produces data for tens of thousands of features. Building
millions of Python objects up front would cost more than the sweep itself, so the
engine keeps its results as a handful of CPU tensors (one row per feature) and this
mapping builds a feature's plain data only when it is asked for. Whole-dictionary
tables (density, maximum, top tokens) come straight from the columns.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

from torch import Tensor

from core.engine.features import (
    Example,
    FeatureData,
    Histogram,
    IntervalGroup,
    LogitTable,
    Table,
    gc_paused,
)


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
        self.tokens = tokens.tolist()
        self.length = tokens.shape[1]
        self.vocab = vocab
        self.window = window
        self.extras = extras or {}
        self._built: dict[int, FeatureData] = {}

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

    def _example(self, seq: int, pos: int, acts: list[float]) -> Example:
        length = self.length
        if self.window is None:
            start, end, a = 0, length, acts[:length]
        else:
            before, after = self.window
            start = max(0, pos - before)
            end = min(length, pos + after + 1)
            lo = start - (pos - before)
            a = acts[lo : lo + (end - start)]
        ids = self.tokens[seq][start:end]
        return Example(
            seq=seq,
            pos=pos,
            value=a[pos - start],
            start=start,
            token_ids=ids,
            tokens=self._token_strs(ids),
            acts=a,
        )

    def _build_rows(self, r0: int, r1: int) -> list[FeatureData]:
        """The features of rows ``r0:r1``: every column sliced once, as Python lists."""
        with gc_paused():
            rows = {k: v[r0:r1].tolist() for k, v in self.cols.items() if v.dim() > 0}
            n_tok = int(self.cols["n_tokens"])
            return [self._build(rows, j, r0 + j, n_tok) for j in range(r1 - r0)]

    def _build(self, c: dict[str, list], j: int, r: int, n_tok: int) -> FeatureData:
        """Row ``r`` of the set, from column slices ``c`` where it is entry ``j``."""
        n_active = int(c["count"][j])
        mx = float(c["max"][j])
        top_vals = c["top_values"][j]
        top_seq = c["top_seq"][j]
        top_pos = c["top_pos"][j]
        top_win = c["top_windows"][j]
        examples = [
            self._example(top_seq[i], top_pos[i], top_win[i])
            for i in range(len(top_vals))
            if top_seq[i] >= 0
        ]
        s_seq = c["int_seq"][j]
        s_pos = c["int_pos"][j]
        s_win = c["int_windows"][j]
        i_counts = c["int_counts"][j]
        n_int = len(i_counts)
        signed = "min" in c  # a signed dictionary (core.engine.sweep.finalize_columns)
        mn = float(c["min"][j]) if signed else 0.0
        span = max(mx, -mn)  # intervals: |value| in (0, max |value|] when signed
        groups = []
        for b in range(n_int):
            exs = [
                self._example(s_seq[b][i], s_pos[b][i], s_win[b][i])
                for i in range(len(s_seq[b]))
                if s_seq[b][i] >= 0
            ]
            groups.append(
                IntervalGroup(
                    lo=span * b / n_int,
                    hi=span * (b + 1) / n_int,
                    n_active=i_counts[b],
                    share=i_counts[b] / n_active if n_active else 0.0,
                    examples=exs,
                )
            )
        h_counts = c["hist_counts"][j]
        nb = len(h_counts)
        if signed:  # bins over [min, max]
            edges = [mn + (mx - mn) * i / nb for i in range(nb + 1)]
        else:
            edges = [mx * i / nb for i in range(nb + 1)]
        act_hist = Histogram(edges=edges, counts=h_counts)
        if "pos_i" in c:
            lo, hi = float(c["logit_lo"][j]), float(c["logit_hi"][j])
            lcounts = c["logit_counts"][j]
            nlb = len(lcounts)
            logit_hist = Histogram(
                edges=[lo + (hi - lo) * i / nlb for i in range(nlb + 1)], counts=lcounts
            )
            pi, ni = c["pos_i"][j], c["neg_i"][j]
            top_l = LogitTable(pi, self._token_strs(pi), c["pos_v"][j])
            bot_l = LogitTable(ni, self._token_strs(ni), c["neg_v"][j])
        else:
            logit_hist = Histogram(edges=[], counts=[])
            top_l = LogitTable([], [], [])
            bot_l = LogitTable([], [], [])
        empty = Table(indices=[], columns={"pearson": [], "cosine": []})
        if n_active > 0:
            corr_n = Table(
                indices=c["cn_i"][j],
                columns={"pearson": c["cn_p"][j], "cosine": c["cn_c"][j]},
            )
        else:
            corr_n = empty
        if "cf_i" in c and n_active > 0:
            pv = c["cf_p"][j]
            keep = [i for i, v in enumerate(pv) if v > float("-inf")]
            ci, cc = c["cf_i"][j], c["cf_c"][j]
            corr_f = Table(
                indices=[ci[i] for i in keep],
                columns={"pearson": [pv[i] for i in keep], "cosine": [cc[i] for i in keep]},
            )
        else:
            corr_f = Table(indices=[], columns={"pearson": [], "cosine": []})
        return FeatureData(
            index=self.order[r],
            n_tokens=n_tok,
            n_active=n_active,
            density=float(c["density"][j]),
            max_act=mx,
            mean_act=float(c["mean"][j]),
            act_hist=act_hist,
            logit_hist=logit_hist,
            top_logits=top_l,
            bottom_logits=bot_l,
            neuron_alignment=Table(
                indices=c["al_i"][j],
                columns={"value": c["al_v"][j], "l1_share": c["al_s"][j]},
            ),
            correlated_neurons=corr_n,
            correlated_features=corr_f,
            top_examples=examples,
            intervals=groups,
            decoder_norm=float(c["dec_norm"][j]),
            extras={k: v[r] for k, v in self.extras.items()} | self._signed_extras(c, j, mn),
        )

    def _signed_extras(self, c: dict[str, list], j: int, mn: float) -> dict[str, Any]:
        """``min_act`` and ``bottom_examples`` (most negative first, as plain dicts) of a
        signed feature, kept in ``extras`` so the data of other features is unchanged."""
        if "min" not in c:
            return {}
        b_seq, b_pos, b_win = c["bot_seq"][j], c["bot_pos"][j], c["bot_windows"][j]
        bottom = [
            dataclasses.asdict(self._example(b_seq[i], b_pos[i], b_win[i]))
            for i in range(len(b_seq))
            if b_seq[i] >= 0
        ]
        return {"min_act": mn, "bottom_examples": bottom}
