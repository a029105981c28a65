"""Exact top-``k`` correlated features from sparse co-activation sums, never ``rows x cols``.

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

Shapes: ``u`` non-zero (row, column) sums of a block of ``b`` rows, ``c`` columns.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

#: extra candidates among the columns a row never meets, beyond ``k``
SLACK = 8
#: relative gap in ``m_c s_c`` that rounding (a few float32 ulps) cannot cross
MARGIN = 1e-5

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
    """Each row's ``k`` largest entries: (entry index, row, rank) of the kept ones."""
    by_value = torch.sort(values, descending=True, stable=True).indices
    idx = by_value[torch.sort(row[by_value], stable=True).indices]
    r = row[idx]
    start = torch.zeros(n_rows + 1, dtype=torch.long, device=row.device)
    torch.cumsum(torch.bincount(r, minlength=n_rows), 0, out=start[1:])
    rank = torch.arange(idx.numel(), device=row.device) - start[r]
    keep = rank < k
    return idx[keep], r[keep], rank[keep]


def free_ranks(
    row: Int[Tensor, " o"], rank: Int[Tensor, " o"], n_rows: int, n_cols: int, m: int
) -> Int[Tensor, "b m"]:
    """For each row, the first ``m`` ranks (of ``n_cols``) it does not occupy; ``n_cols``
    where fewer remain. ``(row, rank)`` pairs are the occupied ones (distinct per row)."""
    big = n_cols + m + 1
    order = torch.sort(row * big + rank).indices
    r, s = row[order], rank[order]
    start = torch.zeros(n_rows + 1, dtype=torch.long, device=row.device)
    torch.cumsum(torch.bincount(r, minlength=n_rows), 0, out=start[1:])
    # g = rank - (occupied ranks before it): non-decreasing within a row; the t-th free
    # rank is t + #(g <= t)
    g = s - (torch.arange(r.numel(), device=row.device) - start[r])
    flat = r * big + g
    t = torch.arange(m, device=row.device)
    rows = torch.arange(n_rows, device=row.device)[:, None]
    count = torch.searchsorted(flat, rows * big + t, right=True) - start[:-1, None]
    return (t + count).clamp_(max=n_cols)


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
        self.pos = {}
        for sign, order in self.orders.items():
            pos = torch.empty_like(order)
            pos[order] = torch.arange(self.n, device=order.device)
            self.pos[sign] = pos

    def candidates(
        self,
        sign: int,
        occupied_row: Tensor,
        occupied_col: Tensor,
        n_rows: int,
        k: int,
    ) -> tuple[Int[Tensor, "b m"], Tensor]:
        """The first ``k + SLACK`` columns each row does not meet (``self.n`` where none
        are left), and whether the margin check passed for the row."""
        m = k + SLACK
        ranks = free_ranks(occupied_row, self.pos[sign][occupied_col], n_rows, self.n, m)
        order = torch.cat([self.orders[sign], self.orders[sign].new_full((1,), self.n)])
        cols = order[ranks]
        score = torch.cat([self.scores[sign], self.scores[sign].new_full((1,), float("inf"))])
        last, kth = score[cols[:, -1]], score[cols[:, k - 1]]
        ok = (last - kth > MARGIN * kth.abs()) | torch.isinf(last) | torch.isinf(kth)
        return cols, ok


__all__ = [
    "MARGIN",
    "SLACK",
    "ColumnOrder",
    "cosine",
    "free_ranks",
    "inv_std",
    "pearson",
    "segment_top_k",
]
