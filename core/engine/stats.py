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

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

_M31 = (1 << 31) - 1
#: below this share of non-zero activations, ``acts.T @ x`` is a sparse product (the dense
#: one costs as much as the encode; the sparse one is ~30x cheaper at 0.3% density and
#: breaks even near 3%)
SPARSE_CROSS_DENSITY = 0.01
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
    valid positions only. ``signed``: activations may be negative; then ``count`` counts
    non-zeros (not positives) and ``min`` is kept too. ``max`` starts at 0 and ``min``
    ends at most 0 (ignored positions read as 0).
    """

    def __init__(
        self, n_features: int, d_in: int | None, device: torch.device, signed: bool = False
    ):
        f32 = dict(device=device, dtype=torch.float32)
        self.n_tokens = torch.zeros((), device=device, dtype=torch.float64)
        self.count = torch.zeros(n_features, device=device, dtype=torch.int64)
        self.sum = torch.zeros(n_features, **f32)
        self.sumsq = torch.zeros(n_features, **f32)
        self.max = torch.zeros(n_features, **f32)
        self.signed = signed
        self.scratch: Tensor | None = None
        if signed:
            self.min = torch.zeros(n_features, **f32)
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

    def update(
        self,
        acts: Float[Tensor, "n f"],
        x: Float[Tensor, "n d"] | None,
        sl: slice,
        sp: SparseActs | None = None,
    ) -> None:
        """Add a token batch for the features in ``sl`` (``sp``: the non-zeros of ``acts``,
        when known; below :data:`SPARSE_CROSS_DENSITY` the feature-by-neuron sums use only
        them).

        Counts and maxima of non-negative features come from ``sp`` (exact: the zeros add
        nothing to a count and, as ``max`` starts at 0, nothing to a maximum); sums and
        squares stay dense, so their floats are added in the same order whatever the
        sparsity.
        """
        if sp is not None and not self.signed:
            f = acts.shape[1]
            self.count[sl] += torch.bincount(sp.feature[sp.value > 0], minlength=f)
            peak = torch.zeros(f, device=acts.device, dtype=acts.dtype)
            peak.scatter_reduce_(0, sp.feature, sp.value, reduce="amax")
            torch.maximum(self.max[sl], peak, out=self.max[sl])
        else:
            self.count[sl] += ((acts != 0) if self.signed else (acts > 0)).sum(0)
            torch.maximum(self.max[sl], acts.amax(0), out=self.max[sl])
            if self.signed:
                torch.minimum(self.min[sl], acts.amin(0), out=self.min[sl])
        self.sum[sl] += acts.sum(0)
        self.sumsq[sl] += torch.mul(acts, acts, out=self._scratch(acts)).sum(0)
        if self.track_neurons and x is not None:
            if sp is not None and sp.value.numel() <= SPARSE_CROSS_DENSITY * acts.numel():
                self.cross[sl] += sp.transposed_matmul(x)
            else:
                self.cross[sl] += acts.T @ x

    def _scratch(self, like: Tensor) -> Tensor:
        """A buffer for the squares, kept between updates (a new one is paged in each time,
        which costs more than the product); :meth:`close` frees it."""
        buf = self.scratch
        if buf is None or buf.shape != like.shape or buf.dtype != like.dtype:
            buf = self.scratch = torch.empty_like(like, memory_format=torch.contiguous_format)
        return buf

    def close(self) -> None:
        """Free the scratch buffer (no more updates)."""
        self.scratch = None

    def merge(self, other: MomentStats) -> MomentStats:
        self.n_tokens += other.n_tokens
        self.count += other.count
        self.sum += other.sum
        self.sumsq += other.sumsq
        torch.maximum(self.max, other.max, out=self.max)
        if self.signed:
            torch.minimum(self.min, other.min, out=self.min)
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
    features: Int[Tensor, " f *rest"] | None = None,
) -> Float[Tensor, "f *rest w"]:
    """Activations of feature ``f`` (row of ``b``/``pos``, or ``features`` where given, of
    any shape) in sequence ``b`` around ``pos``.

    Positions outside the sequence read as zero (the window is clipped when read out).
    """
    nb, length, nf = acts_blf.shape
    base = torch.zeros_like(pos) if whole else pos
    p = base[..., None] + offsets  # [f, *rest, w]
    inside = (p >= 0) & (p < length)
    if features is not None:
        fidx = features[..., None]
    else:
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


def sequence_max(
    sp: SparseActs, b: int, length: int, f: int
) -> tuple[Float[Tensor, "b f"], Int[Tensor, "b f"]]:
    """Each (sequence, feature)'s largest non-zero and the first position holding it, from
    the non-zeros of ``[b * length, f]`` activations: where that maximum is positive these
    are what ``max(dim=1)`` gives on the dense ``[b, length, f]``; elsewhere the value is
    ``-inf`` or at most 0 and the position 0 (such a sequence is never an example)."""
    pos = sp.token % length
    key = (sp.token // length) * f + sp.feature
    best = torch.full((b * f,), float("-inf"), device=sp.value.device, dtype=sp.value.dtype)
    best.scatter_reduce_(0, key, sp.value, reduce="amax")
    hit = sp.value == best[key]
    arg = torch.full((b * f,), length, device=pos.device, dtype=torch.int64)
    arg.scatter_reduce_(0, key[hit], pos[hit], reduce="amin")
    arg[arg == length] = 0
    return best.view(b, f), arg.view(b, f)


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
        self,
        acts_blf: Float[Tensor, "b l f"],
        seq_ids: Int[Tensor, " b"],
        sl: slice,
        sp: SparseActs | None = None,
    ) -> None:
        """Add a batch of sequences for the features in ``sl`` (``sp``: the non-zeros of
        ``acts_blf`` flattened to [b*l, f], when known: then each sequence's maximum and
        its first position come from them alone)."""
        if sp is None:
            best, arg = acts_blf.max(dim=1)  # [b, f]; arg: the first maximal position
        else:
            best, arg = sequence_max(sp, *acts_blf.shape)
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


def signed_bins(
    sp: SparseActs, lo: Float[Tensor, " f"], hi: Float[Tensor, " f"], n_bins: int
) -> Int[Tensor, " nnz"]:
    """Equal-width ``[lo, hi]`` bin of each non-zero activation of a signed feature: bins
    ``[lo + i*w, lo + (i+1)*w)``, the last one closed (``w = (hi - lo) / n_bins``)."""
    span = hi - lo
    scale = torch.where(span > 0, n_bins / span, torch.zeros_like(span))
    f = sp.feature
    return ((sp.value - lo[f]) * scale[f]).floor().long().clamp_(0, n_bins - 1)


def bin_index(
    acts: Float[Tensor, "... f"], max_act: Float[Tensor, " f"], n_bins: int
) -> Int[Tensor, "... f"]:
    """Equal-width bin of each activation; bins are ``(lo, hi]``, ``n_bins`` marks zeros."""
    scale = torch.where(max_act > 0, n_bins / max_act, torch.zeros_like(max_act))
    idx = ((acts * scale).ceil().long() - 1).clamp_(0, n_bins - 1)
    return torch.where(acts > 0, idx, torch.full_like(idx, n_bins))


def coalesced_coo(indices: Tensor, values: Tensor, size: tuple[int, int]) -> Tensor:
    """The coalesced COO matrix with these non-zeros: what ``to_sparse`` makes of the dense
    matrix holding them (same indices, same order, same values)."""
    return torch.sparse_coo_tensor(indices, values, size, check_invariants=False).coalesce()


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

    def transposed_matmul(self, x: Float[Tensor, "n d"]) -> Float[Tensor, "f d"]:
        """``acts.T @ x`` from the non-zeros only (each feature's terms summed in token
        order)."""
        coo = coalesced_coo(
            torch.stack([self.feature, self.token]),
            self.value.to(x.dtype),
            (self.n_features, x.shape[0]),
        )
        return torch.sparse.mm(coo, x)

    @classmethod
    def of(cls, token: Tensor, feature: Tensor, value: Tensor, n_features: int) -> SparseActs:
        """Non-zeros given directly (in token-major order, as :meth:`__init__` finds them)."""
        sp = cls.__new__(cls)
        sp.token, sp.feature, sp.value, sp.n_features = token, feature, value, n_features
        return sp


class KeptActs:
    """Pass 1's non-zero activations, batch by chunk, so pass 2 needs no second encode.

    Each entry takes 12 bytes (int32 token, int32 column within its chunk, float32
    value). Past ``limit`` bytes the store is dropped (``ok`` turns false) and pass 2
    encodes again; either way pass 2 sees the same activations.
    """

    ENTRY_BYTES = 12

    def __init__(self, limit: int):
        self.limit = limit
        self.nbytes = 0
        self.ok = limit > 0
        self._parts: dict[tuple[int, int], tuple[Tensor, Tensor, Tensor]] = {}

    def add(self, batch: int, chunk: int, sp: SparseActs) -> None:
        if not self.ok:
            return
        self.nbytes += sp.value.numel() * self.ENTRY_BYTES
        if self.nbytes > self.limit:
            self.ok = False
            self._parts.clear()
            return
        self._parts[batch, chunk] = (
            sp.token.to(torch.int32),
            sp.feature.to(torch.int32),
            sp.value.float(),
        )

    def take(self, batch: int, chunk: int, n_tokens: int, n_cols: int) -> tuple[Tensor, SparseActs]:
        """The dense activations of one (batch, chunk) and their non-zeros; forgets them."""
        tok32, feat32, value = self._parts.pop((batch, chunk))
        sp = SparseActs.of(tok32.long(), feat32.long(), value, n_cols)
        dense = torch.zeros(n_tokens, n_cols, device=value.device, dtype=value.dtype)
        dense[sp.token, sp.feature] = value
        return dense, sp


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

    ``keys`` and ``seq`` are kept in key order; a window stays where it was written
    (``slot`` says where: :meth:`ordered_windows` reads them in key order), so a batch
    writes only its own examples' windows instead of moving every kept one.
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
        self.slot = torch.arange(k, device=device).expand(n, n_bins, k).contiguous()

    def ordered_windows(self) -> Float[Tensor, "f bins k w"]:
        """The windows in key order (the order of ``keys`` and ``seq``)."""
        w = self.windows.shape[-1]
        return self.windows.gather(2, self.slot[..., None].expand(-1, -1, -1, w))

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
        old = idx.clamp(max=k - 1)
        # the batch's examples take the slots of the kept ones they push out: in each
        # (feature, bin) as many come in as go out, and both lists run in row-major order
        slot = self.slot[sl]
        stays = torch.zeros((f, nb, k + 1), device=idx.device, dtype=torch.bool)
        stays.scatter_(2, torch.where(from_batch, k, idx), True)
        new_slot = slot.gather(2, old)
        new_slot[from_batch] = slot[~stays[..., :k]]
        fi, bi, ki = from_batch.nonzero(as_tuple=True)
        key = top[fi, bi, ki]
        win = gather_windows(
            acts_blf, b_local[fi, bi, ki], key.clamp_min(0) & _POS_MASK, self.offsets,
            self.whole, features=fi,
        )  # fmt: skip
        self.windows[sl][fi, bi, new_slot[fi, bi, ki]] = win * (key >= 0)[:, None]
        seq = torch.where(from_batch, seq_ids[b_local], self.seq[sl].gather(2, old))
        self.seq[sl] = torch.where(top >= 0, seq, torch.full_like(seq, -1))
        self.slot[sl] = new_slot
        self.keys[sl] = top

    def merge(self, other: IntervalSampler) -> IntervalSampler:
        allk = torch.cat([self.keys, other.keys], dim=2)
        top, idx = allk.topk(self.k, dim=2)
        w = self.windows.shape[-1]
        self.windows = torch.cat([self.ordered_windows(), other.ordered_windows()], 2).gather(
            2, idx[..., None].expand(-1, -1, -1, w)
        )
        self.slot = torch.arange(self.k, device=idx.device).expand_as(idx).contiguous()
        self.seq = torch.cat([self.seq, other.seq], 2).gather(2, idx)
        self.keys = top
        return self

    @property
    def pos(self) -> Int[Tensor, "f bins k"]:
        return self.keys.clamp_min(0) & _POS_MASK

    @property
    def valid(self) -> Bool[Tensor, "f bins k"]:
        return self.keys >= 0
