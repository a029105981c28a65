"""Correlated features under a memory budget: exact co-activation top-k computed in blocks of
rows from the sweep's stored sparse activations, for dictionaries whose dense co-activation
sums (:class:`~core.engine.gram.GramStats`) would not fit.

Shapes: ``r`` rows (requested features), ``c`` columns (features compared), ``n`` tokens.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor

from core.engine import pairs_cpu
from core.engine.gram import cat_top_k, column_terms, pair_chunks, pearson_top_k
from core.engine.sparse_topk import ColumnOrder, cosine, inv_std, pearson, segment_top_k
from core.engine.stats import SparseActs
from core.errors import FeaturescopeError

#: bytes a stored non-zero takes (an int32 feature index and a float32 value)
ENTRY_BYTES = 8
#: working bytes per (row entry, column entry) pair joined in a block (int64 positions,
#: offsets, flat indices and the repeat index; the float32 product)
PAIR_BYTES = 44
#: active features per token assumed by estimates made before a sweep (typical of the
#: dictionaries in use: L0 of about 20-150)
ASSUMED_L0 = 64
#: bytes per stored entry scanned while picking a block's row entries
SCAN_BYTES = 24
#: working bytes per non-zero sum taken out of a block (int64 key, row and column, the
#: float32 sum, its Pearson value and padded slot, the gathered row and column terms)
NONZERO_BYTES = 64


class _Terms(NamedTuple):
    """Per-row and per-column terms of the Pearson values, computed once per table."""

    row_sum: Tensor
    row_sumsq: Tensor
    mr: Tensor
    isr: Tensor
    row_norm: Tensor
    cols: tuple[Tensor, Tensor, Tensor]  # column_terms: mean, inverse std, norm
    n: Tensor
    inv_n: float


class MemoryBudgetError(FeaturescopeError, ValueError):
    """The correlated-features table does not fit the memory budget even from sparse data."""


def resolve_budget(budget: int | None, device: torch.device) -> int:
    """``budget`` bytes, or (``None``) half of the device's memory."""
    if budget is not None:
        return budget
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory // 2
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def dense_gram_bytes(n_rows: int, n_cols: int) -> int:
    """Bytes of the dense co-activation sums of ``n_rows`` features with ``n_cols``."""
    return n_rows * n_cols * 4


def min_work_bytes(n_cols: int) -> int:
    """The least working memory of the blocked computation: a row of dense sums and its
    non-zeros, one token's pairs, a small scan."""
    return n_cols * (8 + PAIR_BYTES) + (4 << 10)


def correlation_bytes(
    n_rows: int, n_cols: int, n_tokens: int, l0: float, budget: int
) -> tuple[int, int]:
    """(stored activations, working memory) of the correlated-features table: ``(0, dense)``
    when the dense sums fit ``budget``, else the sparse store of ``n_tokens x l0`` non-zeros
    (``l0``: non-zeros per token among the columns) and the blocks (the rest of the budget)."""
    dense = dense_gram_bytes(n_rows, n_cols)
    if dense <= budget:
        return 0, dense
    store = int(n_tokens * l0 * ENTRY_BYTES + n_tokens * 8)
    work = min(max(budget - store, min_work_bytes(n_cols)), 2 * dense)
    return store, work


def format_bytes(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    raise AssertionError  # unreachable


def _row_groups(counts: Int[Tensor, " b"], max_entries: int) -> list[tuple[int, int]]:
    """Consecutive rows whose non-zeros (``counts``), laid out ``rows x widest`` as well,
    fit ``max_entries`` (a row with more is a group)."""
    out, g0, total, widest = [], 0, 0, 0
    for i, c in enumerate(counts.tolist()):
        w = max(widest, c)
        if i > g0 and max(total + c, (i + 1 - g0) * w) > max_entries:
            out.append((g0, i))
            g0, total, w = i, 0, c
        total, widest = total + c, w
    if g0 < counts.numel():
        out.append((g0, counts.numel()))
    return out


class SparseStoreGram:
    """Exact co-activation top-k under a memory budget, from the sweep's sparse activations.

    Used instead of :class:`GramStats` when the dense sums (rows x columns floats) would
    exceed ``budget`` bytes. Each batch's non-zero (column, value) pairs are kept token by
    token (CSR: int32 columns, float32 values and row pointers, on the device, in segments
    of about ``segment_entries``); at the end the co-activation sums are rebuilt in blocks
    of complete rows, each sized to what the store leaves of the budget, and each row's
    top-k is the one :meth:`GramStats.top_correlated` gives, from the block's non-zero sums
    and the columns it never meets. A block joins every stored row entry with the entries
    of its token (vectorised: ``repeat_interleave`` and one ``index_add_`` per chunk of
    pairs).

    ``row_cols`` gives each row's column (rows are requested features, columns all
    features); ``None`` when rows are the columns. Fed like the pass-2 Gram:
    ``stage(acts, sl)`` per feature chunk of a batch, then ``commit(n, n_valid)``.
    """

    def __init__(
        self,
        n_rows: int,
        n_cols: int,
        device: torch.device,
        budget: int,
        row_cols: Int[Tensor, " r"] | None = None,
        total_tokens: int | None = None,
        segment_entries: int = 1 << 24,
        col_sums: tuple[Tensor, Tensor] | None = None,
    ):
        self.n_rows, self.n_cols, self.device = n_rows, n_cols, device
        self.budget = budget
        self.row_cols = row_cols
        self.total_tokens = total_tokens
        self.segment_entries = segment_entries
        #: ``col_sums`` (the columns' sums and squares) are added up by the caller, chunk by
        #: chunk as they are staged (the sweep's moments: the same floats); read at the end
        self.sums_shared = col_sums is not None
        if col_sums is not None:
            self.col_sum, self.col_sumsq = col_sums
        else:
            self.col_sum = torch.zeros(n_cols, device=device, dtype=torch.float32)
            self.col_sumsq = torch.zeros(n_cols, device=device, dtype=torch.float32)
        self.n_tokens = torch.zeros((), device=device, dtype=torch.float64)
        #: sealed segments: (columns int32, values float32, row pointers int64)
        self.segments: list[tuple[Tensor, Tensor, Tensor]] = []
        self._pending: list[tuple[Tensor, Tensor, Tensor]] = []  # (columns, values, counts)
        self._staged: list[tuple[Tensor, Tensor, Tensor]] = []  # (token, column, value)
        self.nnz = 0
        self.token_rows = 0  # tokens with at least one non-zero
        self.tokens_seen = 0
        self._check()

    @property
    def nbytes(self) -> int:
        return self.nnz * ENTRY_BYTES + self.token_rows * 8

    def stage(self, acts: Float[Tensor, "n c"], sl: slice, sp: SparseActs | None = None) -> None:
        """One chunk (columns ``sl``) of the current batch (``sp``: its non-zeros, when
        already found)."""
        if not self.sums_shared:
            self.col_sum[sl] += acts.sum(0)
            self.col_sumsq[sl] += (acts * acts).sum(0)
        sp = sp if sp is not None else SparseActs(acts)
        self._staged.append((sp.token, sp.feature + sl.start, sp.value))

    def commit(self, n: int, n_valid: Tensor) -> None:
        """Close a batch of ``n`` tokens: its entries, token by token."""
        staged, self._staged = self._staged, []
        self.n_tokens += n_valid
        self.tokens_seen += n
        tok, col, val = (torch.cat(p) for p in zip(*staged, strict=True))
        if len(staged) > 1:  # chunks come column-block by column-block: token-major order
            order = torch.sort(tok, stable=True).indices
            tok, col, val = tok[order], col[order], val[order]
        counts = torch.bincount(tok, minlength=n)
        counts = counts[counts > 0]
        self._pending.append((col.to(torch.int32), val.float(), counts))
        self.nnz += col.numel()
        self.token_rows += counts.numel()
        if sum(p[0].numel() for p in self._pending) >= self.segment_entries:
            self._seal()
        self._check()

    def update(self, rows: Tensor, cols: Float[Tensor, "n c"], n_valid: Tensor) -> None:
        """One batch at once (``rows`` are columns too: only ``cols`` is read)."""
        self.stage(cols, slice(0, cols.shape[1]))
        self.commit(cols.shape[0], n_valid)

    def merge(self, other: SparseStoreGram) -> SparseStoreGram:
        self._seal()
        other._seal()
        self.segments += other.segments
        self.col_sum += other.col_sum
        self.col_sumsq += other.col_sumsq
        self.n_tokens += other.n_tokens
        self.nnz += other.nnz
        self.token_rows += other.token_rows
        self.tokens_seen += other.tokens_seen
        self._check()
        return self

    def _seal(self) -> None:
        if not self._pending:
            return
        cols, vals, counts = (torch.cat(p) for p in zip(*self._pending, strict=True))
        self._pending = []
        ptr = torch.zeros(counts.numel() + 1, device=self.device, dtype=torch.long)
        torch.cumsum(counts, 0, out=ptr[1:])
        self.segments.append((cols, vals, ptr))

    def _check(self) -> None:
        need = self.nbytes + min_work_bytes(self.n_cols)
        if need <= self.budget:
            return
        seen = f"{self.tokens_seen:,}" + (f" of {self.total_tokens:,}" if self.total_tokens else "")
        projected = ""
        if self.total_tokens and 0 < self.tokens_seen < self.total_tokens:
            full = self.nbytes * self.total_tokens / self.tokens_seen
            projected = f", about {format_bytes(full)} for all of them"
        raise MemoryBudgetError(
            f"the correlated-features table of {self.n_rows:,} features with {self.n_cols:,} "
            f"needs {format_bytes(dense_gram_bytes(self.n_rows, self.n_cols))} as a dense "
            f"matrix, and the sparse activations it is computed from instead take "
            f"{format_bytes(self.nbytes)} ({self.nnz:,} non-zeros) after {seen} tokens"
            f"{projected}: more than the memory budget of {format_bytes(self.budget)} "
            f"(with {format_bytes(min_work_bytes(self.n_cols))} to work in). Raise it "
            "(--memory-budget, RunConfig.memory_budget), sweep fewer tokens, or compare "
            "fewer features (feature_correlation='requested', --correlation requested, or 'none')"
        )

    def plan(self) -> tuple[int, int, int, int]:
        """Rows per block, stored entries per scan, pairs per join, non-zero sums taken out
        of a block at a time: what the store leaves of the budget, a quarter for the block's
        dense sums, an eighth each for scanning and joining, half for the non-zeros."""
        avail = max(self.budget - self.nbytes, min_work_bytes(self.n_cols))
        return (
            max(1, min(self.n_rows, avail // 4 // (4 * self.n_cols))),
            max(1, avail // 8 // SCAN_BYTES),
            max(1, avail // 8 // PAIR_BYTES),
            max(1, avail // 2 // NONZERO_BYTES),
        )

    def row_pairs(self) -> Int[Tensor, " r"]:
        """How many (row entry, entry of the same token) pairs each row joins: a bound on
        its non-zero co-activation sums."""
        per_col = torch.zeros(self.n_cols, device=self.device, dtype=torch.long)
        for cols, _, ptr in self.segments:
            length = ptr[1:] - ptr[:-1]
            per_col.index_add_(0, cols.long(), torch.repeat_interleave(length, length))
        return per_col if self.row_cols is None else per_col[self.row_cols]

    def row_blocks(self) -> list[tuple[int, int]]:
        """Consecutive rows whose dense sums fit a block."""
        block = self.plan()[0]
        return [(b0, min(b0 + block, self.n_rows)) for b0 in range(0, self.n_rows, block)]

    def top_correlated(
        self,
        row_sum: Tensor,
        row_sumsq: Tensor,
        k: int,
        self_col: Int[Tensor, " r"] | None,
    ) -> tuple[Float[Tensor, "r k"], Int[Tensor, "r k"], Float[Tensor, "r k"]]:
        """As :meth:`GramStats.top_correlated` (the same floats), block of rows by block of
        rows: each block's co-activation sums are added up densely (only the pairs that
        occur), then each row's top ``k`` is taken among its non-zero sums and merged with
        the best columns it never meets (:mod:`core.engine.sparse_topk`), so no Pearson
        value or top-k runs over rows x columns."""
        self._seal()
        n = self.n_tokens.clamp_min(1).float()
        inv_n = 1.0 / float(n)
        cols = column_terms(self.col_sum, self.col_sumsq, n)
        k = min(k, self.n_cols)
        mr = row_sum / n
        isr = inv_std(mr, row_sumsq, n)
        sign = torch.sign(mr * isr).nan_to_num_(nan=0.0).long()  # 0: a row that never fires
        order = ColumnOrder(cols[0], cols[1])
        row_of_col: Tensor | None = None
        if self.row_cols is not None:
            row_of_col = torch.full((self.n_cols,), -1, device=self.device, dtype=torch.long)
            row_of_col[self.row_cols] = torch.arange(self.n_rows, device=self.device)
        block, scan, pairs, nonzeros = self.plan()
        terms = _Terms(row_sum, row_sumsq, mr, isr, row_sumsq.sqrt(), cols, n, inv_n)
        sums = torch.zeros(block, self.n_cols, device=self.device)
        pair_counts = self.row_pairs()
        outs: list[tuple[Tensor, Tensor, Tensor]] = []
        for b0, b1 in self.row_blocks():
            dense = sums[: b1 - b0]
            flat = dense.view(-1)
            for seg in self.segments:
                for p0 in range(0, seg[0].numel(), scan):
                    self._join(flat, seg, slice(p0, p0 + scan), b0, b1, row_of_col, pairs)
            # each row's pairs bound its non-zero sums: groups of rows whose non-zeros fit
            for s0, s1 in _row_groups(pair_counts[b0:b1], nonzeros):
                part = dense[s0:s1].reshape(-1)
                keys = part.nonzero().squeeze(1)
                sc = None if self_col is None else self_col[b0 + s0 : b0 + s1]
                outs.append(
                    self._block_top_k(dense[s0:s1], keys, b0 + s0, k, sc, sign, order, terms)
                )
                part[keys] = 0.0  # back to zeros for the next block, touching only the sums
        return cat_top_k(outs)

    def _block_top_k(
        self,
        dense: Float[Tensor, "b c"],
        keys: Int[Tensor, " u"],
        b0: int,
        k: int,
        self_col: Int[Tensor, " b"] | None,
        sign: Tensor,
        order: ColumnOrder,
        terms: _Terms,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Rows ``b0:b0+b``'s top ``k`` from their dense sums, whose non-zeros are at
        ``keys`` (flat ``row * n_cols + col``, row-major)."""
        sums = dense.reshape(-1)[keys]
        mr, isr, inv_n = terms.mr, terms.isr, terms.inv_n
        mc, inv_sc, col_norm = terms.cols
        nb, dev = dense.shape[0], self.device
        r, c = keys // self.n_cols, keys % self.n_cols
        g = r + b0
        p = pearson(sums, mr[g], mc[c], isr[g], inv_sc[c], inv_n)
        if self_col is not None:
            p[c == self_col[r]] = float("-inf")
        # each row's best columns among those it meets
        top_i, top_r, top_rank = segment_top_k(r, p, nb, k)
        vals = torch.full((nb, k), float("-inf"), device=dev)
        cols = torch.zeros((nb, k), device=dev, dtype=torch.long)
        cross = torch.zeros((nb, k), device=dev)
        vals[top_r, top_rank], cols[top_r, top_rank] = p[top_i], c[top_i]
        cross[top_r, top_rank] = sums[top_i]
        # and among those it never meets (their sums are 0), in the column order of its sign
        fallback = torch.zeros(nb, device=dev, dtype=torch.bool)
        signs = sign[b0 : b0 + nb]
        for s in (1, -1):
            rows_s = (signs == s).nonzero().squeeze(1)
            if rows_s.numel() == 0:
                continue
            sc = None if self_col is None else self_col[rows_s]
            # a column it never meets has the value -|m_r s_r| * score: past the score of
            # the row's k-th value among the columns it meets, it cannot enter the top k
            cut = -vals[rows_s, k - 1] / (mr[b0 + rows_s] * isr[b0 + rows_s]).abs()
            cand, ok = order.candidates(
                s, dense, rows_s, sc, k, cut.nan_to_num(nan=float("inf"), posinf=float("inf"))
            )
            fallback[rows_s[~ok]] = True
            live = cand < self.n_cols
            cand = cand.clamp(max=self.n_cols - 1)
            zero = torch.zeros(cand.shape, device=dev)
            cv = pearson(
                zero, mr[b0 + rows_s, None], mc[cand], isr[b0 + rows_s, None], inv_sc[cand], inv_n
            )
            cv[~live] = float("-inf")
            allv = torch.cat([vals[rows_s], cv], 1)
            allc = torch.cat([cols[rows_s], cand], 1)
            allx = torch.cat([cross[rows_s], zero], 1)
            tv, ti = allv.topk(k, dim=1)
            vals[rows_s], cols[rows_s], cross[rows_s] = tv, allc.gather(1, ti), allx.gather(1, ti)
        cos = cosine(cross, terms.row_norm[b0 : b0 + nb, None], col_norm[cols])
        if bool(fallback.any()):  # near ties in the column order: these rows densely, by
            rows = fallback.nonzero().squeeze(1)  # the dense path's own pearson_top_k
            g = rows + b0
            sc = None if self_col is None else self_col[rows]
            vals[rows], cols[rows], cos[rows] = pearson_top_k(
                dense[rows], terms.row_sum[g], terms.row_sumsq[g], terms.cols, terms.n, inv_n, k, sc
            )
        return vals, cols, cos

    def _join(
        self,
        flat: Float[Tensor, " bc"],
        seg: tuple[Tensor, Tensor, Tensor],
        part: slice,
        b0: int,
        b1: int,
        row_of_col: Tensor | None,
        max_pairs: int,
    ) -> None:
        """Add to ``flat`` (rows ``b0:b1``'s dense sums, row-major) the products of those
        rows' entries in ``part`` of ``seg`` with every entry of the same token, in chunks of
        at most ``max_pairs`` (one entry's pairs at least)."""
        cols, vals, ptr = seg
        c = cols[part].long()
        r = c if row_of_col is None else row_of_col[c]
        pos = ((r >= b0) & (r < b1)).nonzero().squeeze(1)
        if pos.numel() == 0:
            return
        r = r[pos] - b0
        pos += part.start
        tok = torch.searchsorted(ptr, pos, right=True) - 1
        start = ptr[tok]
        length = ptr[tok + 1] - start
        v = vals[pos]
        base = r * self.n_cols  # each entry's row offset, once (not once per pair)
        if pairs_cpu.supported(flat, v, vals):  # the same additions, one compiled loop
            pairs_cpu.join_cpu(flat, base, v, start, start + length, cols, vals)
            return
        for e0, e1, rep, at in pair_chunks(start, length, max_pairs):
            flat.index_add_(0, base[e0:e1][rep].add_(cols[at]), v[e0:e1][rep].mul_(vals[at]))
