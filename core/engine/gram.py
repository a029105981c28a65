"""Feature-by-feature co-activation (the correlated-features table): accumulators with
``update`` and ``merge`` like those of :mod:`core.engine.stats`.

:class:`GramStats` accumulates dense or sparse products of activations (float32 or
bfloat16); :class:`BufferedInt8Gram` stages int8-rounded batches and multiplies them in
one GEMM. Shapes: ``N`` tokens per batch, ``F`` features tracked, ``G`` features compared.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import torch
from jaxtyping import Float, Int
from torch import Tensor

from core.config import RunConfig
from core.engine import pairs_cpu
from core.engine.sparse_topk import cosine, inv_std, pearson
from core.engine.stats import MomentStats, SparseActs, coalesced_coo


# --- feature-by-feature co-activation -------------------------------------------------------
class GramStats:
    """Cross sums ``sum_t a_r(t) a_c(t)`` between row features and column features.

    Rows are the requested features; columns are either every feature of the
    dictionary or the requested set. When both sets are the same tensor only the
    upper block triangle is computed (the matrix is symmetric), halving the work.
    Per-column sums and squares give Pearson correlations at the end.

    ``strategy`` picks the kernel: ``dense`` (GEMM), ``sparse`` (sparse-sparse product,
    much cheaper when few activations are non-zero), or ``auto`` (decided from the
    first batch's density). ``dtype`` is the dense GEMM's precision: float32 (exact to
    float rounding), bfloat16, or int8 (activations quantised per feature and batch to
    127 levels, products summed exactly in int32; several times faster than float32 on
    CPUs with int8 matrix units, Pearson values within about 1e-3). Non-negative
    activations are assumed for int8 (all supported dictionaries are).
    """

    def __init__(
        self,
        n_rows: int,
        n_cols: int,
        device: torch.device,
        symmetric: bool,
        strategy: str = "auto",
        block: int = 4096,
        dtype: torch.dtype = torch.float32,
        col_sum: Float[Tensor, " c"] | None = None,
        col_sumsq: Float[Tensor, " c"] | None = None,
    ):
        self.cross = torch.zeros(n_rows, n_cols, device=device, dtype=torch.float32)
        #: ``col_sum``/``col_sumsq``, when the caller already has them (the sweep's pass-1
        #: moments), are taken as final and not added up again while staging
        self.sums_given = col_sum is not None and col_sumsq is not None
        if col_sum is not None and col_sumsq is not None:
            self.col_sum = col_sum.to(device, torch.float32).clone()
            self.col_sumsq = col_sumsq.to(device, torch.float32).clone()
        else:
            self.col_sum = torch.zeros(n_cols, device=device, dtype=torch.float32)
            self.col_sumsq = torch.zeros(n_cols, device=device, dtype=torch.float32)
        self.n_tokens = torch.zeros((), device=device, dtype=torch.float64)
        self.symmetric = symmetric and n_rows == n_cols
        self.strategy = strategy
        self.block = block
        self.dtype = dtype
        self._staged: list[Tensor] = []
        #: the sparse kernel's staged non-zeros: (token, column, value) per chunk
        self._staged_nz: list[tuple[Tensor, Tensor, Tensor]] = []
        #: only the upper triangle of the pair sums is made so far (finalize mirrors it)
        self._upper = False

    #: below this fraction of non-zero activations ``auto`` picks the sparse kernel
    SPARSE_DENSITY = 0.01

    @classmethod
    def strategy_for(cls, density: float) -> str:
        return "sparse" if density < cls.SPARSE_DENSITY else "dense"

    def _choose(self, cols: Tensor) -> str:
        if self.strategy == "auto":
            self.strategy = self.strategy_for(float((cols != 0).float().mean()))  # first batch
        return self.strategy

    # A Gram among the staged features themselves (rows = columns), fed one feature chunk
    # of a token batch at a time: ``reserve(n)``, ``stage(acts, sl)`` per chunk, then
    # ``commit(n, n_valid)``.
    def reserve(self, n: int) -> None:
        """Get ready for a batch of ``n`` tokens."""

    def stage(self, acts: Float[Tensor, "n c"], sl: slice, sp: SparseActs | None = None) -> None:
        """One feature chunk (columns ``sl``) of the current batch; ``sp``: its non-zeros,
        which the sparse kernel keeps instead of the dense chunk."""
        if sp is not None and self.strategy == "sparse":
            if not self.sums_given:
                self.col_sum[sl] += acts.sum(0)
                self.col_sumsq[sl] += (acts * acts).sum(0)
            self._staged_nz.append((sp.token, sp.feature + sl.start, sp.value))
        else:
            self._staged.append(acts)

    def commit(self, n: int, n_valid: Tensor) -> None:
        """Close the batch: every chunk is staged."""
        if self._staged_nz:
            staged_nz, self._staged_nz = self._staged_nz, []
            tok, col, val = (torch.cat(p) for p in zip(*staged_nz, strict=True))
            self.n_tokens += n_valid
            by_feature = coalesced_coo(torch.stack([col, tok]), val, (self.cross.shape[0], n))
            by_token = coalesced_coo(torch.stack([tok, col]), val, (n, self.cross.shape[1]))
            if self.cross.device.type == "cpu":
                add_pair_sums(self.cross, by_feature, by_token, upper=True)
                self._upper = True
            else:  # cuSPARSE's product sums in a fixed order; index_add_ would not on CUDA
                self._sparse_product(by_feature, by_token)
            return
        staged, self._staged = self._staged, []
        a = torch.cat(staged, 1) if len(staged) > 1 else staged[0]
        self.update(a, a, n_valid)

    def update(
        self, rows: Float[Tensor, "n r"], cols: Float[Tensor, "n c"], n_valid: Tensor
    ) -> None:
        self.n_tokens += n_valid
        if not self.sums_given:
            self.col_sum += cols.sum(0)
            self.col_sumsq += (cols * cols).sum(0)
        if self._choose(cols) == "sparse":
            self._update_sparse(rows, cols)
        elif self.symmetric:
            self._update_symmetric(cols)
        else:
            self._accumulate(self.cross, rows, cols)

    def _prepare(self, a: Tensor) -> tuple[Tensor, Tensor | None]:
        """Operand in the GEMM precision, with per-feature scales for int8."""
        if self.dtype == torch.int8:
            scale = a.amax(0).clamp_min(1e-30) / 127.0
            return torch.round(a / scale).to(torch.int8), scale
        return a.to(self.dtype), None

    def _accumulate(self, out: Tensor, rows: Tensor, cols: Tensor) -> None:
        r, rs = self._prepare(rows)
        c, cs = self._prepare(cols)
        if self.dtype == torch.int8:
            prod = torch._int_mm(r.T.contiguous(), c.contiguous()).float()
            out += prod * rs[:, None] * cs[None, :]
        else:
            out += (r.T @ c).float()

    def _update_symmetric(self, a: Float[Tensor, "n f"]) -> None:
        f = a.shape[1]
        if self.dtype == torch.int8:
            q, scale = self._prepare(a)
            qt = q.T.contiguous()
        else:
            q, scale = a.to(self.dtype), None
            qt = q.T.contiguous()
        for i in range(0, f, self.block):
            ie = min(i + self.block, f)
            for j in range(i, f, self.block):
                je = min(j + self.block, f)
                if scale is not None:
                    prod = torch._int_mm(qt[i:ie], q[:, j:je].contiguous()).float()
                    self.cross[i:ie, j:je] += prod * scale[i:ie, None] * scale[None, j:je]
                else:
                    self.cross[i:ie, j:je] += (qt[i:ie] @ q[:, j:je]).float()

    def _update_sparse(self, rows: Tensor, cols: Tensor) -> None:
        # COO: torch.sparse.mm of two COO tensors stays sparse
        self._sparse_product(rows.T.to_sparse(), cols.to_sparse())

    def _sparse_product(self, r: Tensor, c: Tensor) -> None:
        with warnings.catch_warnings():
            # PyTorch's CPU kernel goes through a CSR tensor and says so on every run
            warnings.filterwarnings(
                "ignore", message="Sparse CSR tensor support is in beta", category=UserWarning
            )
            prod = torch.sparse.mm(r, c).coalesce()
        idx = prod.indices()
        self.cross.index_put_((idx[0], idx[1]), prod.values().float(), accumulate=True)

    def finalize(self) -> Float[Tensor, "r c"]:
        """Mirror the computed upper block triangle (in place) when symmetric, or the upper
        triangle of the sums of pairs (:func:`add_pair_sums`)."""
        if self._upper:
            self._mirror(within_blocks=True)
            self._upper = False
        if self.symmetric and self.strategy != "sparse":
            self._mirror(within_blocks=False)
            self.symmetric = False
        return self.cross

    def _mirror(self, within_blocks: bool) -> None:
        """Copy the upper block triangle onto the lower one (in place); ``within_blocks``:
        the diagonal blocks too hold only their upper triangle."""
        f = self.cross.shape[0]
        for i in range(0, f, self.block):
            ie = min(i + self.block, f)
            if within_blocks:
                d = self.cross[i:ie, i:ie]
                d.copy_(d.triu() + d.triu(1).T)
            for j in range(i + self.block, f, self.block):
                je = min(j + self.block, f)
                self.cross[j:je, i:ie] = self.cross[i:ie, j:je].T

    def merge(self, other: GramStats) -> GramStats:
        self.finalize()
        other.finalize()
        self.cross += other.cross
        self.col_sum += other.col_sum
        self.col_sumsq += other.col_sumsq
        self.n_tokens += other.n_tokens
        return self

    def top_correlated(
        self,
        row_sum: Tensor,
        row_sumsq: Tensor,
        k: int,
        self_col: Int[Tensor, " r"] | None,
        rows_per_chunk: int = 1024,
    ) -> tuple[Float[Tensor, "r k"], Int[Tensor, "r k"], Float[Tensor, "r k"]]:
        """Top-``k`` columns by Pearson correlation for each row, with their cosine.

        Computed in row chunks so the full correlation matrix is never materialised.
        A row's own column (``self_col``) and constant columns are never chosen
        (their value is ``-inf`` when fewer than ``k`` remain).
        """
        cross = self.finalize()
        n = self.n_tokens.clamp_min(1).float()
        inv_n = 1.0 / float(n)  # one sync, after the loop over tokens
        cols = column_terms(self.col_sum, self.col_sumsq, n)
        k = min(k, cross.shape[1])
        outs: list[tuple[Tensor, Tensor, Tensor]] = []
        for i in range(0, cross.shape[0], rows_per_chunk):
            ie = min(i + rows_per_chunk, cross.shape[0])
            sc = None if self_col is None else self_col[i:ie]
            outs.append(
                pearson_top_k(cross[i:ie], row_sum[i:ie], row_sumsq[i:ie], cols, n, inv_n, k, sc)
            )
        return cat_top_k(outs)


#: bytes of the dense scratch rows of :func:`add_pair_sums`: with the same rows of the sums
#: it adds to, they fit a CPU's last-level cache (at 24,576 features on a 32 MiB cache,
#: 8 MiB was faster than 16 or 32 MiB: bench/README.md)
PAIR_SCRATCH_BYTES = 8 << 20
#: pairs made at once by :func:`add_pair_sums`
PAIR_CHUNK = 1 << 23


def pair_chunks(
    start: Int[Tensor, " e"], length: Int[Tensor, " e"], max_pairs: int
) -> Iterator[tuple[int, int, Tensor, Tensor]]:
    """Every (entry, partner) pair of entries whose partners are ``length`` consecutive
    positions from ``start``, entry by entry and partners in order, in chunks of at most
    ``max_pairs`` pairs (one entry's pairs at least): ``(e0, e1, rep, at)`` per chunk of
    entries ``e0:e1``, ``rep`` each pair's entry within the chunk, ``at`` its partner's
    position."""
    if length.numel() == 0:
        return
    ends = length.cumsum(0)
    total = int(ends[-1])
    edges = [0, length.numel()]
    if total > max_pairs:
        cuts = torch.arange(max_pairs, total, max_pairs, device=ends.device)
        edges = sorted({*edges, *torch.searchsorted(ends, cuts, right=True).tolist()})
    bounds = torch.tensor([e - 1 for e in edges[1:]], device=ends.device)
    ends_at = [0, *ends[bounds].tolist()]
    for i, (e0, e1) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        n_pairs = ends_at[i + 1] - ends_at[i]
        if n_pairs == 0:
            continue
        ln = length[e0:e1]
        rep = torch.repeat_interleave(
            torch.arange(e1 - e0, device=ln.device), ln, output_size=n_pairs
        )
        first = ends[e0:e1] - ln - ends_at[i]  # each entry's first pair in this chunk
        at = torch.arange(n_pairs, device=ln.device).add_((start[e0:e1] - first)[rep])
        yield e0, e1, rep, at


def add_pair_sums(
    cross: Float[Tensor, "r c"], by_feature: Tensor, by_token: Tensor, upper: bool = False
) -> None:
    """``cross += by_feature @ by_token`` for coalesced COO operands (``r x n`` and
    ``n x c``), giving the same floats as ``torch.sparse.mm`` then ``index_put_`` with
    ``accumulate``: each (row, column) sum is added up from zero over the tokens in order,
    then added to ``cross`` once. Rows go a few hundred at a time through a dense scratch
    block small enough to stay in cache, so no pair is sorted (the product's cost on CPU).
    ``upper``: the operands are one matrix and its transpose, and only the sums of
    columns at or after their row are made (the others are the same floats, mirrored).
    """
    n_rows, n_cols = cross.shape
    dev = cross.device
    f_row, f_tok = by_feature.indices()
    f_val = by_feature.values()
    t_idx, t_val = by_token.indices(), by_token.values()
    ptr = torch.zeros(by_token.shape[0] + 1, dtype=torch.long, device=dev)
    torch.cumsum(torch.bincount(t_idx[0], minlength=by_token.shape[0]), 0, out=ptr[1:])
    t_col = t_idx[1]
    start = ptr[f_tok]
    if upper:  # from the entry's own place in its token's row (columns are in order)
        start = torch.searchsorted(t_idx[0] * n_cols + t_col, f_tok * n_cols + f_row)
    block = max(1, PAIR_SCRATCH_BYTES // (4 * n_cols))
    if pairs_cpu.supported(cross, f_val, t_val):  # the same additions, one compiled loop
        end = ptr[f_tok + 1]
        pairs_cpu.add_pair_sums_cpu(cross, f_row, f_val, start, end, t_col, t_val, block)
        return
    length = ptr[f_tok + 1] - start
    scratch = torch.zeros(block * n_cols, dtype=cross.dtype, device=dev)
    flat = cross.view(-1)
    row_edges = torch.searchsorted(
        f_row, torch.arange(0, n_rows + block, block, device=dev)
    ).tolist()
    for b, (e0, e1) in enumerate(zip(row_edges[:-1], row_edges[1:], strict=False)):
        if e1 <= e0:
            continue
        r0 = b * block
        base, vals = (f_row[e0:e1] - r0) * n_cols, f_val[e0:e1]
        keys: list[Tensor] = []
        for c0, c1, rep, at in pair_chunks(start[e0:e1], length[e0:e1], PAIR_CHUNK):
            local = base[c0:c1][rep].add_(t_col[at])
            scratch.index_add_(0, local, vals[c0:c1][rep].mul_(t_val[at]))
            keys.append(local)
        if not keys:
            continue
        local = torch.cat(keys)
        sums = scratch[local]
        scratch.index_fill_(0, local, 0.0)
        at = local.add_(r0 * n_cols)
        # a key met twice writes the same value twice
        flat.index_copy_(0, at, flat.index_select(0, at).add_(sums))


def column_terms(col_sum: Tensor, col_sumsq: Tensor, n: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Each column's mean, inverse standard deviation and norm."""
    mc = col_sum / n
    return mc, inv_std(mc, col_sumsq, n), col_sumsq.sqrt()


def pearson_top_k(
    cross: Float[Tensor, "r c"],
    row_sum: Float[Tensor, " r"],
    row_sumsq: Float[Tensor, " r"],
    cols: tuple[Tensor, Tensor, Tensor],
    n: Tensor,
    inv_n: float,
    k: int,
    self_col: Int[Tensor, " r"] | None,
) -> tuple[Float[Tensor, "r k"], Int[Tensor, "r k"], Float[Tensor, "r k"]]:
    """Top-``k`` columns of complete rows of co-activation sums by Pearson, with their cosine
    (:func:`~core.engine.sparse_topk.pearson`, the formula the sparse path shares)."""
    mc, inv_sc, col_norm = cols
    mr = row_sum / n
    isr = inv_std(mr, row_sumsq, n)
    p = pearson(cross, mr[:, None], mc[None, :], isr[:, None], inv_sc[None, :], inv_n)
    if self_col is not None:
        p[torch.arange(cross.shape[0], device=p.device), self_col] = float("-inf")
    tv, ti = p.topk(k, dim=1)
    return tv, ti, cosine(cross.gather(1, ti), row_sumsq.sqrt()[:, None], col_norm[ti])


def cat_top_k(outs: list[tuple[Tensor, Tensor, Tensor]]) -> tuple[Tensor, Tensor, Tensor]:
    return tuple(torch.cat(parts) for parts in zip(*outs, strict=True))  # type: ignore[return-value]


class BufferedInt8Gram(GramStats):
    """Symmetric int8 co-activation sums with fixed per-feature scales, many batches per GEMM.

    Used once each feature's maximum is known (the sweep's second pass): activations
    are quantised to ``round(127 * a / max)``, staged feature-chunk by feature-chunk into
    a token-major buffer, and multiplied only when the buffer is full. With one scale
    per feature for the whole sweep, the int32 products of all staged batches add up
    exactly, so a GEMM has tens of thousands of tokens as its inner dimension (int8
    matrix units are several times more efficient there than on one batch) and the
    float epilogue (scale, accumulate) runs once per flush instead of once per batch.
    Each flush holds at most ``2**31 // 127**2`` tokens, so int32 sums cannot overflow.

    ``col_sum``/``col_sumsq``, when the caller already has them (the sweep's pass-1
    moments), are taken as final and not re-accumulated while staging.
    """

    MAX_FLUSH_TOKENS = (1 << 31) // (127 * 127) - 1

    def __init__(
        self,
        col_max: Float[Tensor, " f"],
        device: torch.device,
        block: int = 4096,
        buffer_bytes: int = 1 << 30,
        max_batch_tokens: int = 0,
        col_sum: Float[Tensor, " f"] | None = None,
        col_sumsq: Float[Tensor, " f"] | None = None,
    ):
        f = col_max.numel()
        if block % 32:
            raise ValueError(f"the int8 Gram block must be a multiple of 32, got {block}")
        super().__init__(
            f,
            f,
            device,
            symmetric=True,
            strategy="dense",
            block=block,
            col_sum=col_sum,
            col_sumsq=col_sumsq,
        )
        self.dtype = torch.int8
        self.scale = col_max.to(device, torch.float32).clamp_min(1e-30) / 127.0
        self.inv_scale = 1.0 / self.scale
        # int8 GEMM kernels want every dimension a multiple of 8 (and, on CUDA, more than
        # 16 rows): the buffer gets zero feature columns up to a multiple of 32, which
        # add nothing to any sum and are never copied out
        self.f_padded = -(-f // 32) * 32
        cap = max(buffer_bytes // self.f_padded, max_batch_tokens, 8)
        self.capacity = min(cap, self.MAX_FLUSH_TOKENS) // 8 * 8  # int8 GEMMs want k % 8 == 0
        self.buf = torch.zeros(self.capacity, self.f_padded, device=device, dtype=torch.int8)
        self.used = 0

    def reserve(self, n: int) -> None:
        """Make room for ``n`` more tokens (flushing when the buffer would overflow)."""
        if n > self.capacity:
            raise ValueError(f"a batch of {n} tokens exceeds the Gram buffer ({self.capacity})")
        if self.used + n > self.capacity:
            self.flush()

    def stage(self, acts: Float[Tensor, "n c"], sl: slice, sp: SparseActs | None = None) -> None:
        """Quantise one feature chunk of the current batch into the buffer."""
        if not self.sums_given:
            self.col_sum[sl] += acts.sum(0)
            self.col_sumsq[sl] += (acts * acts).sum(0)
        q = torch.round(acts * self.inv_scale[sl]).clamp_(0, 127)
        self.buf[self.used : self.used + acts.shape[0], sl] = q

    def commit(self, n: int, n_valid: Tensor) -> None:
        """Close a batch of ``n`` staged tokens (all chunks written)."""
        self.used += n
        self.n_tokens += n_valid

    def update(self, rows: Tensor, cols: Tensor, n_valid: Tensor) -> None:
        self.reserve(cols.shape[0])
        self.stage(cols, slice(0, cols.shape[1]))
        self.commit(cols.shape[0], n_valid)

    def flush(self) -> None:
        if self.used == 0:
            return
        k = -(-self.used // 8) * 8
        self.buf[self.used : k] = 0
        q = self.buf[:k]
        f, fp = self.cross.shape[0], self.f_padded
        for i in range(0, f, self.block):
            ie = min(i + self.block, fp)
            for j in range(i, f, self.block):
                je = min(j + self.block, fp)
                prod = torch._int_mm(q[:, i:ie].T, q[:, j:je])
                r, c = min(ie, f) - i, min(je, f) - j  # the real features of this block
                s = self.scale[i : i + r, None] * self.scale[None, j : j + c]
                self.cross[i : i + r, j : j + c].addcmul_(prod[:r, :c].float(), s)
        self.used = 0

    def finalize(self) -> Float[Tensor, "r c"]:
        self.flush()
        return super().finalize()


def gram_dtype(config: RunConfig, dtype: torch.dtype) -> torch.dtype:
    """The precision of the co-activation products for a sweep in ``dtype``."""
    if config.gram_precision == "auto":
        return torch.float32 if dtype == torch.float16 else dtype
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "int8": torch.int8}[
        config.gram_precision
    ]


def requested_gram(
    config: RunConfig, moments: MomentStats, dtype: torch.dtype, device: torch.device, batch: int
) -> GramStats:
    """The requested features' co-activation accumulator, built once their maxima are known.

    int8 (dense) uses one scale per feature for the whole sweep, which lets many
    batches share one GEMM (:class:`BufferedInt8Gram`); other precisions and the
    sparse kernel accumulate batch by batch.
    """
    n = moments.max.numel()
    strategy = config.gram_strategy
    if strategy == "auto":
        density = float(moments.count.sum()) / max(float(moments.n_tokens) * n, 1.0)
        strategy = GramStats.strategy_for(density)
    precision = gram_dtype(config, dtype)
    if precision == torch.int8 and strategy == "dense":
        return BufferedInt8Gram(
            moments.max,
            device,
            max_batch_tokens=batch,
            col_sum=moments.sum,
            col_sumsq=moments.sumsq,
        )
    # the sparse kernel stages chunk by chunk, as pass 1 added up the moments: the same sums
    given = strategy == "sparse"
    return GramStats(
        n,
        n,
        device,
        symmetric=True,
        strategy=strategy,
        dtype=precision,
        col_sum=moments.sum if given else None,
        col_sumsq=moments.sumsq if given else None,
    )
