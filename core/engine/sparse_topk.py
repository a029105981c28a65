"""Exact top-``k`` correlated features from sparse co-activation sums, never a Pearson
value for every (row, column) cell.

Most pairs of features of a sparse dictionary never fire on the same token: their
co-activation sum is zero and their Pearson value depends on the column alone,
``(0 - m_r m_c) s_r s_c = -(m_r s_r)(m_c s_c)`` (``m``: mean, ``s``: inverse standard
deviation). So a row's top ``k`` is found among (a) the columns it meets, from their
sums, and (b) the ``k`` columns it never meets that come first in the order of
``m_c s_c`` (ascending for a positive ``m_r s_r``, which is every row of a non-negative
dictionary). :func:`pearson` is the one formula the dense and the sparse computations
share, element by element, so both give the same floats; near ties between (b)'s order
and its rounded values are covered by ``slack`` extra candidates and a margin check, and
rows that fail it are computed densely.

Shapes: ``u`` non-zero sums of a block of ``b`` rows (row-major), ``c`` columns.
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

#: extra candidates among the columns a row never meets, beyond ``k``
SLACK = 8
#: relative gap in ``m_c s_c`` that rounding (a few float32 ulps) cannot cross
MARGIN = 1e-5
#: columns of the order looked at first for a row's candidates (then four times as many)
FIRST_WIDTH = 64
#: near ties looked through before a row is computed densely instead
EXTEND_MAX = 1 << 14

NEG_INF = float("-inf")


def inv_std(mean: Tensor, sumsq: Tensor, n: Tensor) -> Tensor:
    """``1 / std``; NaN for constant features (their Pearson values become ``-inf``)."""
    sd = (sumsq / n - mean * mean).clamp_min(0).sqrt()
    return torch.where(sd > 0, 1.0 / sd, torch.full_like(sd, float("nan")))


def pearson(
    cross: Tensor, mr: Tensor, mc: Tensor, isr: Tensor, isc: Tensor, inv_n: float
) -> Tensor:
    """``(cross / n - m_r m_c) s_r s_c`` element by element (broadcast ``[b, 1]`` row terms
    against ``[1, c]`` column terms for a dense block, or give gathered 1-D terms); NaN and
    infinities become ``-inf``."""
    p = cross * inv_n
    p.sub_(mr * mc).mul_(isr).mul_(isc)
    return p.nan_to_num_(nan=NEG_INF, posinf=NEG_INF, neginf=NEG_INF)


def cosine(cross: Tensor, row_norm: Tensor, col_norm: Tensor) -> Tensor:
    return torch.nan_to_num(cross / (row_norm * col_norm), nan=0.0)


def segment_top_k(
    row: Int[Tensor, " u"], values: Float[Tensor, " u"], n_rows: int, k: int
) -> tuple[Int[Tensor, " t"], Int[Tensor, " t"], Int[Tensor, " t"]]:
    """Each row's ``k`` largest entries, for entries grouped by row (``row`` sorted):
    (entry index, row, rank) of the kept ones. One ``topk`` over the rows laid out side by
    side (padded with ``-inf``), no sort of the entries."""
    counts = torch.bincount(row, minlength=n_rows)
    start = torch.zeros(n_rows + 1, dtype=torch.long, device=row.device)
    torch.cumsum(counts, 0, out=start[1:])
    width = int(counts.max()) if row.numel() else 0
    kk = min(k, width)
    empty = row.new_zeros(0)
    if kk == 0:
        return empty, empty, empty
    pos = torch.arange(row.numel(), device=row.device) - start[row]
    padded = values.new_full((n_rows, width), NEG_INF)
    padded[row, pos] = values
    ti = padded.topk(kk, dim=1).indices
    keep = ti < counts[:, None]  # a padding slot is never kept, whatever its value ties with
    rows = torch.arange(n_rows, device=row.device)[:, None].expand_as(ti)
    rank = torch.arange(kk, device=row.device)[None, :].expand_as(ti)
    return (start[:-1, None] + ti)[keep], rows[keep], rank[keep]


class ColumnOrder:
    """Columns in the order of ``m_c s_c`` (constant columns last), for rows with a
    positive (ascending) or negative (descending) ``m_r s_r``."""

    def __init__(self, mc: Tensor, isc: Tensor):
        self.key = mc * isc
        dead = torch.isnan(self.key)
        self.n = self.key.numel()
        up = torch.where(dead, torch.full_like(self.key, float("inf")), self.key)
        down = torch.where(dead, torch.full_like(self.key, float("inf")), -self.key)
        self.orders = {1: torch.sort(up, stable=True).indices}
        self.orders[-1] = torch.sort(down, stable=True).indices
        self.scores = {1: up, -1: down}
        #: the scores in order, and each column's position in its order
        self.sorted = {sign: self.scores[sign][o] for sign, o in self.orders.items()}
        self.pos = {}
        for sign, o in self.orders.items():
            self.pos[sign] = torch.empty_like(o)
            self.pos[sign][o] = torch.arange(self.n, device=o.device)

    def candidates(
        self,
        sign: int,
        met: Bool[Tensor, "a c"] | Float[Tensor, "a c"],
        rows: Int[Tensor, " b"],
        self_col: Int[Tensor, " b"] | None,
        k: int,
        cut: Float[Tensor, " b"] | None = None,
    ) -> tuple[Int[Tensor, "b m"], Bool[Tensor, " b"]]:
        """The columns, in the order of ``sign``, that each of ``rows`` does not meet
        (``met`` non-zero) and that are not its own (``self_col``) and that may be among its
        top ``k`` of those: the first ``k + SLACK``, and every later one within ``MARGIN``
        of the ``k``-th (near ties, where rounding may reorder the Pearson values) unless
        past the row's ``cut`` (a score beyond which a column cannot enter the row's top
        ``k`` at all: its ``k``-th value among the columns it meets); ``self.n`` pads. And,
        per row, whether that list is complete: a row with more than ``EXTEND_MAX`` such
        columns (a large group of near ties) is not, and is computed densely instead."""
        m = k + SLACK
        order, score = self.orders[sign], self.scores[sign]
        dev = met.device
        out = torch.full((rows.numel(), m), self.n, dtype=torch.long, device=dev)
        todo = torch.arange(rows.numel(), device=dev)
        width = min(self.n, m + FIRST_WIDTH)
        while todo.numel():  # the first m, looking further for the rows that meet many
            free = self._free(order[:width], met, rows[todo], self_col, todo, width)
            done = (free < self.n).sum(1) >= m
            done |= width == self.n
            out[todo[done], : min(m, width)] = free[done, :m]  # width < m: every column
            todo = todo[~done]
            width = min(self.n, width * 4)
        padded = torch.cat([score, score.new_full((1,), float("inf"))])
        kth = padded[out[:, k - 1]]
        # every free column up to the last within MARGIN of the k-th may beat it
        bound = kth if cut is None else torch.minimum(kth, cut)
        limit = torch.searchsorted(self.sorted[sign], bound + MARGIN * bound.abs(), right=True)
        covered = self.pos[sign][out[:, -1].clamp(max=self.n - 1)] + 1
        extend = (limit > covered) & (out[:, -1] < self.n)
        ok = ~extend | (limit <= EXTEND_MAX)
        extend &= ok
        if not bool(extend.any()):
            return out, ok
        rows_x = extend.nonzero().squeeze(1)
        width = int(limit[rows_x].max())
        free = self._free(order[:width], met, rows[rows_x], self_col, rows_x, width, limit[rows_x])
        free = free[:, : int((free < self.n).sum(1).max())]
        wide = out.new_full((rows.numel(), max(m, free.shape[1])), self.n)
        wide[:, :m] = out
        wide[rows_x, : free.shape[1]] = free
        return wide, ok

    def _free(
        self,
        head: Int[Tensor, " w"],
        met: Tensor,
        rows: Int[Tensor, " b"],
        self_col: Int[Tensor, " b"] | None,
        at: Int[Tensor, " b"],
        width: int,
        limit: Int[Tensor, " b"] | None = None,
    ) -> Int[Tensor, "b w"]:
        """Each row's columns among ``head`` (the first ``width`` of an order, up to its
        ``limit``) that it does not meet and that are not its own (``self_col[at]``), in
        that order, then ``self.n`` (``width`` columns)."""
        taken = met[rows[:, None], head[None, :]] != 0
        if self_col is not None:
            taken |= head[None, :] == self_col[at, None]
        if limit is not None:
            taken |= torch.arange(width, device=head.device)[None, :] >= limit[:, None]
        pick = torch.sort(taken.to(torch.uint8), dim=1, stable=True).indices  # free first
        cols = head[pick]
        cols[taken.gather(1, pick)] = self.n
        return cols


__all__ = [
    "MARGIN",
    "SLACK",
    "ColumnOrder",
    "cosine",
    "inv_std",
    "pearson",
    "segment_top_k",
]
