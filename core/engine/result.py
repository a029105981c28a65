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

from torch import Tensor

from core.engine.features import (
    Example,
    FeatureData,
    Histogram,
    IntervalGroup,
    LogitTable,
    Table,
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
            got = self._build(self.row[f])
            self._built[f] = got
        return got

    def __iter__(self) -> Iterator[int]:
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)

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

    # --- one feature -------------------------------------------------------------------------
    def _token_str(self, i: int) -> str:
        return self.vocab[i] if 0 <= i < len(self.vocab) else f"<{i}>"

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
            tokens=[self._token_str(i) for i in ids],
            acts=a,
        )

    def _build(self, r: int) -> FeatureData:
        c = self.cols
        n_tok = int(c["n_tokens"])
        n_active = int(c["count"][r])
        mx = float(c["max"][r])
        top_vals = c["top_values"][r].tolist()
        top_seq = c["top_seq"][r].tolist()
        top_pos = c["top_pos"][r].tolist()
        top_win = c["top_windows"][r].tolist()
        examples = [
            self._example(top_seq[j], top_pos[j], top_win[j])
            for j in range(len(top_vals))
            if top_seq[j] >= 0
        ]
        s_seq = c["int_seq"][r].tolist()
        s_pos = c["int_pos"][r].tolist()
        s_win = c["int_windows"][r].tolist()
        i_counts = c["int_counts"][r].tolist()
        n_int = len(i_counts)
        groups = []
        for b in range(n_int):
            exs = [
                self._example(s_seq[b][j], s_pos[b][j], s_win[b][j])
                for j in range(len(s_seq[b]))
                if s_seq[b][j] >= 0
            ]
            groups.append(
                IntervalGroup(
                    lo=mx * b / n_int,
                    hi=mx * (b + 1) / n_int,
                    n_active=i_counts[b],
                    share=i_counts[b] / n_active if n_active else 0.0,
                    examples=exs,
                )
            )
        h_counts = c["hist_counts"][r].tolist()
        nb = len(h_counts)
        act_hist = Histogram(edges=[mx * i / nb for i in range(nb + 1)], counts=h_counts)
        if "pos_i" in c:
            lo, hi = float(c["logit_lo"][r]), float(c["logit_hi"][r])
            lcounts = c["logit_counts"][r].tolist()
            nlb = len(lcounts)
            logit_hist = Histogram(
                edges=[lo + (hi - lo) * i / nlb for i in range(nlb + 1)], counts=lcounts
            )
            pi, ni = c["pos_i"][r].tolist(), c["neg_i"][r].tolist()
            top_l = LogitTable(pi, [self._token_str(i) for i in pi], c["pos_v"][r].tolist())
            bot_l = LogitTable(ni, [self._token_str(i) for i in ni], c["neg_v"][r].tolist())
        else:
            logit_hist = Histogram(edges=[], counts=[])
            top_l = LogitTable([], [], [])
            bot_l = LogitTable([], [], [])
        empty = Table(indices=[], columns={"pearson": [], "cosine": []})
        if n_active > 0:
            corr_n = Table(
                indices=c["cn_i"][r].tolist(),
                columns={"pearson": c["cn_p"][r].tolist(), "cosine": c["cn_c"][r].tolist()},
            )
        else:
            corr_n = empty
        if "cf_i" in c and n_active > 0:
            pv = c["cf_p"][r].tolist()
            keep = [j for j, v in enumerate(pv) if v > float("-inf")]
            ci, cc = c["cf_i"][r].tolist(), c["cf_c"][r].tolist()
            corr_f = Table(
                indices=[ci[j] for j in keep],
                columns={"pearson": [pv[j] for j in keep], "cosine": [cc[j] for j in keep]},
            )
        else:
            corr_f = Table(indices=[], columns={"pearson": [], "cosine": []})
        return FeatureData(
            index=self.order[r],
            n_tokens=n_tok,
            n_active=n_active,
            density=float(c["density"][r]),
            max_act=mx,
            mean_act=float(c["mean"][r]),
            act_hist=act_hist,
            logit_hist=logit_hist,
            top_logits=top_l,
            bottom_logits=bot_l,
            neuron_alignment=Table(
                indices=c["al_i"][r].tolist(),
                columns={"value": c["al_v"][r].tolist(), "l1_share": c["al_s"][r].tolist()},
            ),
            correlated_neurons=corr_n,
            correlated_features=corr_f,
            top_examples=examples,
            intervals=groups,
            decoder_norm=float(c["dec_norm"][r]),
            extras={k: v[r] for k, v in self.extras.items()},
        )
