"""Streaming per-feature statistics, each an accumulator with ``update`` and ``merge``.

Every accumulator holds tensors on the compute device and is updated with one token
batch at a time using vectorised operations only (no Python loop over features or
tokens, no host copies). ``merge(other)`` combines two partial results so that the
merge of accumulators over disjoint sequence sets equals one accumulator over their
union; sharding a sweep over processes or GPUs is then a change to the loop only.

Shapes: ``B`` sequences of length ``L`` per batch, ``N = B * L`` tokens, ``F`` features
tracked by the accumulator, ``d`` input width (neurons), ``K`` examples kept.
"""

from __future__ import annotations

import warnings

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

_M31 = (1 << 31) - 1
_POS_BITS = 20
_POS_MASK = (1 << _POS_BITS) - 1


def hash31(x: Int[Tensor, "..."]) -> Int[Tensor, "..."]:
    """A fast integer mixer on int64 tensors, output in ``[0, 2**31)``.

    Used to draw reproducible per-(feature, sequence, position) sampling keys, so the
    sample does not depend on batch order, chunking or sharding.
    """
    x = x & _M31
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _M31
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _M31
    return ((x >> 16) ^ x) & _M31


# --- moments ------------------------------------------------------------------------------
class MomentStats:
    """Counts, sums, squares and maxima per feature, plus feature-by-neuron cross sums.

    ``acts`` passed to :meth:`update` must already be zero at ignored positions, and
    ``x`` (the hook activations, the "neurons") zero there too; ``n_tokens`` counts the
    valid positions only.
    """

    def __init__(self, n_features: int, d_in: int | None, device: torch.device):
        f32 = dict(device=device, dtype=torch.float32)
        self.n_tokens = torch.zeros((), device=device, dtype=torch.float64)
        self.count = torch.zeros(n_features, device=device, dtype=torch.int64)
        self.sum = torch.zeros(n_features, **f32)
        self.sumsq = torch.zeros(n_features, **f32)
        self.max = torch.zeros(n_features, **f32)
        self.track_neurons = d_in is not None
        if d_in is not None:
            self.x_sum = torch.zeros(d_in, **f32)
            self.x_sumsq = torch.zeros(d_in, **f32)
            self.cross = torch.zeros(n_features, d_in, **f32)

    def update_tokens(self, x: Float[Tensor, "n d"] | None, n_valid: Tensor) -> None:
        """Per-batch part that does not depend on features."""
        self.n_tokens += n_valid
        if self.track_neurons and x is not None:
            self.x_sum += x.sum(0)
            self.x_sumsq += (x * x).sum(0)

    def update(self, acts: Float[Tensor, "n f"], x: Float[Tensor, "n d"] | None, sl: slice) -> None:
        """Add a token batch for the features in ``sl``."""
        self.count[sl] += (acts > 0).sum(0)
        self.sum[sl] += acts.sum(0)
        self.sumsq[sl] += (acts * acts).sum(0)
        torch.maximum(self.max[sl], acts.amax(0), out=self.max[sl])
        if self.track_neurons and x is not None:
            self.cross[sl] += acts.T @ x

    def merge(self, other: MomentStats) -> MomentStats:
        self.n_tokens += other.n_tokens
        self.count += other.count
        self.sum += other.sum
        self.sumsq += other.sumsq
        torch.maximum(self.max, other.max, out=self.max)
        if self.track_neurons:
            self.x_sum += other.x_sum
            self.x_sumsq += other.x_sumsq
            self.cross += other.cross
        return self

    def mean_std(self) -> tuple[Tensor, Tensor]:
        n = self.n_tokens.clamp_min(1).float()
        mean = self.sum / n
        var = (self.sumsq / n - mean * mean).clamp_min(0)
        return mean, var.sqrt()

    def neuron_correlations(self) -> tuple[Float[Tensor, "f d"], Float[Tensor, "f d"]]:
        """Pearson and cosine similarity between each feature and each neuron."""
        n = self.n_tokens.clamp_min(1).float()
        mean_a, std_a = self.mean_std()
        mean_x = self.x_sum / n
        std_x = (self.x_sumsq / n - mean_x * mean_x).clamp_min(0).sqrt()
        cov = self.cross / n - mean_a[:, None] * mean_x[None, :]
        pearson = cov / (std_a[:, None] * std_x[None, :])
        cosine = self.cross / (self.sumsq.sqrt()[:, None] * self.x_sumsq.sqrt()[None, :])
        return torch.nan_to_num(pearson, nan=0.0), torch.nan_to_num(cosine, nan=0.0)


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
    ):
        self.cross = torch.zeros(n_rows, n_cols, device=device, dtype=torch.float32)
        self.col_sum = torch.zeros(n_cols, device=device, dtype=torch.float32)
        self.col_sumsq = torch.zeros(n_cols, device=device, dtype=torch.float32)
        self.n_tokens = torch.zeros((), device=device, dtype=torch.float64)
        self.symmetric = symmetric and n_rows == n_cols
        self.strategy = strategy
        self.block = block
        self.dtype = dtype
        self._staged: list[Tensor] = []

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

    def stage(self, acts: Float[Tensor, "n c"], sl: slice) -> None:
        """One feature chunk (columns ``sl``) of the current batch."""
        self._staged.append(acts)

    def commit(self, n: int, n_valid: Tensor) -> None:
        """Close the batch: every chunk is staged."""
        staged, self._staged = self._staged, []
        a = torch.cat(staged, 1) if len(staged) > 1 else staged[0]
        self.update(a, a, n_valid)

    def update(
        self, rows: Float[Tensor, "n r"], cols: Float[Tensor, "n c"], n_valid: Tensor
    ) -> None:
        self.n_tokens += n_valid
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
        r = rows.T.to_sparse()  # COO: torch.sparse.mm of two COO tensors stays sparse
        c = cols.to_sparse()
        with warnings.catch_warnings():
            # PyTorch's CPU kernel goes through a CSR tensor and says so on every run
            warnings.filterwarnings(
                "ignore", message="Sparse CSR tensor support is in beta", category=UserWarning
            )
            prod = torch.sparse.mm(r, c).coalesce()
        idx = prod.indices()
        self.cross.index_put_((idx[0], idx[1]), prod.values().float(), accumulate=True)

    def finalize(self) -> Float[Tensor, "r c"]:
        """Mirror the computed upper block triangle (in place) when symmetric."""
        if self.symmetric and self.strategy != "sparse":
            f = self.cross.shape[0]
            for i in range(0, f, self.block):
                ie = min(i + self.block, f)
                for j in range(i + self.block, f, self.block):
                    je = min(j + self.block, f)
                    self.cross[j:je, i:ie] = self.cross[i:ie, j:je].T
            self.symmetric = False
        return self.cross

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

        def inv_std(mean: Tensor, sumsq: Tensor) -> Tensor:
            # constant features get NaN, which becomes -inf below: never chosen
            sd = (sumsq / n - mean * mean).clamp_min(0).sqrt()
            return torch.where(sd > 0, 1.0 / sd, torch.full_like(sd, float("nan")))

        mc = self.col_sum / n
        inv_sc = inv_std(mc, self.col_sumsq)
        col_norm = self.col_sumsq.sqrt()
        k = min(k, cross.shape[1])
        outs: list[tuple[Tensor, Tensor, Tensor]] = []
        for i in range(0, cross.shape[0], rows_per_chunk):
            ie = min(i + rows_per_chunk, cross.shape[0])
            mr = row_sum[i:ie] / n
            # Pearson = (cross / n - mean_r mean_c) / (std_r std_c), in place on one buffer
            p = torch.addr(cross[i:ie], mr, mc, beta=inv_n, alpha=-1.0)
            p.mul_(inv_std(mr, row_sumsq[i:ie])[:, None]).mul_(inv_sc[None, :])
            p.nan_to_num_(nan=float("-inf"), posinf=float("-inf"), neginf=float("-inf"))
            if self_col is not None:
                rows = torch.arange(ie - i, device=p.device)
                p[rows, self_col[i:ie]] = float("-inf")
            tv, ti = p.topk(k, dim=1)
            cos = cross[i:ie].gather(1, ti) / (row_sumsq[i:ie].sqrt()[:, None] * col_norm[ti])
            outs.append((tv, ti, torch.nan_to_num(cos, nan=0.0)))
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
        super().__init__(f, f, device, symmetric=True, strategy="dense", block=block)
        self.dtype = torch.int8
        self.scale = col_max.to(device, torch.float32).clamp_min(1e-30) / 127.0
        self.inv_scale = 1.0 / self.scale
        self.sums_given = col_sum is not None and col_sumsq is not None
        if col_sum is not None and col_sumsq is not None:
            self.col_sum = col_sum.to(device, torch.float32).clone()
            self.col_sumsq = col_sumsq.to(device, torch.float32).clone()
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

    def stage(self, acts: Float[Tensor, "n c"], sl: slice) -> None:
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


# --- windows -----------------------------------------------------------------------------------
def window_offsets(before: int, after: int, whole_length: int | None, device) -> tuple[Tensor, int]:
    """Offsets of a context window relative to its base position, and its width."""
    if whole_length is not None:
        return torch.arange(whole_length, device=device), whole_length
    return torch.arange(-before, after + 1, device=device), before + after + 1


def gather_windows(
    acts_blf: Float[Tensor, "b l f"],
    b: Int[Tensor, " f *rest"],
    pos: Int[Tensor, " f *rest"],
    offsets: Int[Tensor, " w"],
    whole: bool,
) -> Float[Tensor, "f *rest w"]:
    """Activations of feature ``f`` (row of ``b``/``pos``) in sequence ``b`` around ``pos``.

    Positions outside the sequence read as zero (the window is clipped when read out).
    """
    nb, length, nf = acts_blf.shape
    base = torch.zeros_like(pos) if whole else pos
    p = base[..., None] + offsets  # [f, *rest, w]
    inside = (p >= 0) & (p < length)
    fidx = torch.arange(nf, device=p.device).view(nf, *([1] * (p.ndim - 1)))
    flat = (b[..., None].clamp(0, nb - 1) * length + p.clamp(0, length - 1)) * nf + fidx
    vals = acts_blf.reshape(-1)[flat.reshape(-1)].reshape(p.shape)
    return torch.where(inside, vals, torch.zeros((), device=vals.device, dtype=vals.dtype))


# --- top examples ----------------------------------------------------------------------------
_LOW32 = (1 << 32) - 1


def rank_keys(values: Float[Tensor, "..."], seq: Int[Tensor, "..."]) -> Int[Tensor, "..."]:
    """int64 keys whose descending order is value descending, then sequence ascending.

    The float32 bits of ``values`` are mapped to int32 in value order (negative floats
    have their magnitude bits flipped) and placed above the complement of the sequence
    id, so ``topk`` on the keys breaks exact ties by the lower sequence id: the same
    inputs give the same order whatever the batch size, batch order or sharding.
    """
    bits = values.float().contiguous().view(torch.int32)
    ordered = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).to(torch.int64)
    return ordered * (1 << 32) + (_LOW32 - seq.clamp(0, _LOW32))


class TopExamples:
    """Running top-``K`` sequences per feature by their maximum activation.

    One entry per sequence (its best position: the first one holding the maximum), so
    a sequence appears once per feature. Any position can qualify; windows are clipped
    at the sequence edges when read out. Keeps the window activations so no later pass
    is needed. Exact ties in value are ordered by sequence id (see :func:`rank_keys`),
    on the device, so the result does not depend on batching.
    """

    def __init__(self, n_features: int, k: int, offsets: Tensor, whole: bool, device):
        self.k, self.offsets, self.whole = k, offsets, whole
        w = offsets.numel()
        self.values = torch.full((n_features, k), float("-inf"), device=device)
        self.seq = torch.full((n_features, k), -1, device=device, dtype=torch.int64)
        self.pos = torch.zeros((n_features, k), device=device, dtype=torch.int64)
        self.windows = torch.zeros((n_features, k, w), device=device)

    def update(
        self, acts_blf: Float[Tensor, "b l f"], seq_ids: Int[Tensor, " b"], sl: slice
    ) -> None:
        best, arg = acts_blf.max(dim=1)  # [b, f]; arg: the first maximal position
        cand = torch.where(best > 0, best, torch.full_like(best, float("-inf"))).T  # [f, b]
        vals = torch.cat([self.values[sl], cand], dim=1)
        seqs = torch.cat([self.seq[sl], seq_ids[None, :].expand(cand.shape[0], -1)], dim=1)
        _, idx = rank_keys(vals, seqs).topk(self.k, dim=1)
        top = vals.gather(1, idx)
        k = self.k
        from_batch = idx >= k
        b_local = (idx - k).clamp_min(0)
        new_pos = arg.T.gather(1, b_local)
        new_seq = seq_ids[b_local]
        new_win = gather_windows(acts_blf, b_local, new_pos, self.offsets, self.whole)
        old = idx.clamp(max=k - 1)
        self.windows[sl] = torch.where(
            from_batch[..., None],
            new_win,
            self.windows[sl].gather(1, old[..., None].expand(-1, -1, new_win.shape[-1])),
        )
        ok = top > float("-inf")
        seq = torch.where(from_batch, new_seq, self.seq[sl].gather(1, old))
        self.seq[sl] = torch.where(ok, seq, torch.full_like(seq, -1))
        pos = torch.where(from_batch, new_pos, self.pos[sl].gather(1, old))
        self.pos[sl] = torch.where(ok, pos, torch.zeros_like(pos))
        self.windows[sl] *= ok[..., None]
        self.values[sl] = top

    def merge(self, other: TopExamples) -> TopExamples:
        vals = torch.cat([self.values, other.values], dim=1)
        seqs = torch.cat([self.seq, other.seq], 1)
        _, idx = rank_keys(vals, seqs).topk(self.k, dim=1)
        top = vals.gather(1, idx)
        w = self.windows.shape[-1]
        self.windows = torch.cat([self.windows, other.windows], 1).gather(
            1, idx[..., None].expand(-1, -1, w)
        )
        self.seq = seqs.gather(1, idx)
        self.pos = torch.cat([self.pos, other.pos], 1).gather(1, idx)
        self.values = top
        return self


# --- second pass: histograms and interval samples (once the maxima are known) ------------------
def sparse_bins(sp: SparseActs, max_act: Float[Tensor, " f"], n_bins: int) -> Int[Tensor, " nnz"]:
    """Equal-width ``(lo, hi]`` bin of each non-zero activation."""
    scale = torch.where(max_act > 0, n_bins / max_act, torch.zeros_like(max_act))
    return ((sp.value * scale[sp.feature]).ceil().long() - 1).clamp_(0, n_bins - 1)


def bin_index(
    acts: Float[Tensor, "... f"], max_act: Float[Tensor, " f"], n_bins: int
) -> Int[Tensor, "... f"]:
    """Equal-width bin of each activation; bins are ``(lo, hi]``, ``n_bins`` marks zeros."""
    scale = torch.where(max_act > 0, n_bins / max_act, torch.zeros_like(max_act))
    idx = ((acts * scale).ceil().long() - 1).clamp_(0, n_bins - 1)
    return torch.where(acts > 0, idx, torch.full_like(idx, n_bins))


class SparseActs:
    """The non-zero activations of one chunk: token index, feature column, value.

    Pass 2 touches only these (a few percent of entries for a sparse dictionary). On
    CUDA ``nonzero`` waits for the count, one small sync per chunk.
    """

    def __init__(self, acts: Float[Tensor, "n f"]):
        nz = acts.nonzero()
        self.token, self.feature = nz[:, 0], nz[:, 1]
        self.value = acts[self.token, self.feature]
        self.n_features = acts.shape[1]


class BinCounts:
    """Counts of non-zero activations per equal-width bin of ``(0, max]``."""

    def __init__(self, n_features: int, n_bins: int, device):
        self.n_bins = n_bins
        self.counts = torch.zeros(n_features, n_bins, device=device, dtype=torch.int64)

    def update(self, sp: SparseActs, bins: Int[Tensor, " nnz"], sl: slice) -> None:
        flat = sp.feature * self.n_bins + bins
        self.counts[sl] += torch.bincount(flat, minlength=sp.n_features * self.n_bins).view(
            sp.n_features, self.n_bins
        )

    def merge(self, other: BinCounts) -> BinCounts:
        self.counts += other.counts
        return self

    @property
    def result(self) -> Int[Tensor, "f bins"]:
        return self.counts


class IntervalSampler:
    """Reproducible sample of ``K`` distinct sequences per (feature, interval bin).

    Every (feature, sequence, position) gets a hash key from the seed. Within a
    sequence the bin's representative is its highest-key token; across sequences the
    ``K`` highest keys win. The sample is therefore a pure function of the seed and the
    data, independent of batching, feature chunking or sharding.
    """

    def __init__(
        self,
        feature_ids: Int[Tensor, " f"],
        n_bins: int,
        k: int,
        offsets: Tensor,
        whole: bool,
        seed: int,
        device,
    ):
        n = feature_ids.numel()
        self.n_bins, self.k, self.offsets, self.whole = n_bins, k, offsets, whole
        self.feature_hash = hash31(feature_ids.to(device) * 0x9E3779 + seed * 0x61C8864 + 1)
        self.keys = torch.full((n, n_bins, k), -1, device=device, dtype=torch.int64)
        self.seq = torch.full((n, n_bins, k), -1, device=device, dtype=torch.int64)
        self.windows = torch.zeros((n, n_bins, k, offsets.numel()), device=device)

    def update(
        self,
        acts_blf: Float[Tensor, "b l f"],
        sp: SparseActs,
        bins: Int[Tensor, " nnz"],
        seq_ids: Int[Tensor, " b"],
        sl: slice,
    ) -> None:
        b, length, f = acts_blf.shape
        k, nb = self.k, self.n_bins
        bseq, pos = sp.token // length, sp.token % length
        # per-token part of the key: hashed once per token, then gathered per active entry
        all_pos = torch.arange(length, device=seq_ids.device)
        tok_hash = hash31(seq_ids[:, None] * 0x2545F49 + all_pos * 0x5851F42 + 7).view(-1)
        h = hash31(tok_hash[sp.token] ^ self.feature_hash[sl][sp.feature])
        keys = (h << _POS_BITS) | pos
        best = torch.full((b * f * nb,), -1, device=keys.device, dtype=torch.int64)
        slot = (bseq * f + sp.feature) * nb + bins
        best.scatter_reduce_(0, slot, keys, reduce="amax", include_self=True)
        cand = best.view(b, f, nb).permute(1, 2, 0)  # [f, nb, b]
        allk = torch.cat([self.keys[sl], cand], dim=2)
        top, idx = allk.topk(k, dim=2)
        from_batch = idx >= k
        b_local = (idx - k).clamp_min(0)
        new_pos = top.clamp_min(0) & _POS_MASK
        new_win = gather_windows(
            acts_blf, b_local.reshape(f, -1), new_pos.reshape(f, -1), self.offsets, self.whole
        ).reshape(f, nb, k, -1)
        old = idx.clamp(max=k - 1)
        w = new_win.shape[-1]
        self.windows[sl] = torch.where(
            from_batch[..., None],
            new_win,
            self.windows[sl].gather(2, old[..., None].expand(-1, -1, -1, w)),
        )
        seq = torch.where(from_batch, seq_ids[b_local], self.seq[sl].gather(2, old))
        self.seq[sl] = torch.where(top >= 0, seq, torch.full_like(seq, -1))
        self.windows[sl] *= (top >= 0)[..., None]
        self.keys[sl] = top

    def merge(self, other: IntervalSampler) -> IntervalSampler:
        allk = torch.cat([self.keys, other.keys], dim=2)
        top, idx = allk.topk(self.k, dim=2)
        w = self.windows.shape[-1]
        self.windows = torch.cat([self.windows, other.windows], 2).gather(
            2, idx[..., None].expand(-1, -1, -1, w)
        )
        self.seq = torch.cat([self.seq, other.seq], 2).gather(2, idx)
        self.keys = top
        return self

    @property
    def pos(self) -> Int[Tensor, "f bins k"]:
        return self.keys.clamp_min(0) & _POS_MASK

    @property
    def valid(self) -> Bool[Tensor, "f bins k"]:
        return self.keys >= 0
