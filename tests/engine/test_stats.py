"""Accumulators: merging partial results equals one pass over the union."""

from __future__ import annotations

import pytest
import torch

import core.engine.gram as gram_module
from core.engine.gram import BufferedInt8Gram, GramStats
from core.engine.stats import (
    BinCounts,
    IntervalSampler,
    MomentStats,
    SparseActs,
    TopExamples,
    bin_index,
    hash31,
    sequence_max,
    sparse_bins,
    window_offsets,
)
from tests.tolerance import assert_sums_close


def _acts(n_seq: int, length: int, f: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.relu(torch.randn(n_seq, length, f, generator=g) - 1.0)


def test_merge_equals_union():
    n_seq, length, f, d = 12, 9, 6, 5
    acts = _acts(n_seq, length, f, 0)
    x = torch.randn(n_seq, length, d, generator=torch.Generator().manual_seed(1))
    offs, _ = window_offsets(2, 2, None, "cpu")
    sl = slice(0, f)
    feats = torch.arange(f)

    def run(seqs: range):
        m = MomentStats(f, d, torch.device("cpu"))
        g = GramStats(f, f, torch.device("cpu"), symmetric=True, strategy="dense", block=4)
        t = TopExamples(f, 4, offs, False, "cpu")
        a = acts[seqs.start : seqs.stop]
        xx = x[seqs.start : seqs.stop].reshape(-1, d)
        flat = a.reshape(-1, f)
        n = torch.tensor(float(flat.shape[0]))
        m.update_tokens(xx, n)
        m.update(flat, xx, sl)
        g.update(flat, flat, n)
        t.update(a, torch.arange(seqs.start, seqs.stop), sl)
        mx = acts.reshape(-1, f).amax(0)  # global max, known after pass 1
        sp = SparseActs(flat)
        bins = sparse_bins(sp, mx, 5)
        h = BinCounts(f, 5, "cpu")
        h.update(sp, bins, sl)
        s = IntervalSampler(feats, 5, 3, offs, False, 7, "cpu")
        s.update(a, sp, bins, torch.arange(seqs.start, seqs.stop), sl)
        return m, g, t, h, s

    whole = run(range(0, n_seq))
    left, right = run(range(0, 5)), run(range(5, n_seq))
    merged = [a.merge(b) for a, b in zip(left, right, strict=True)]
    m0, g0, t0, h0, s0 = whole
    m1, g1, t1, h1, s1 = merged
    # counts and maxima do not depend on order; sums differ by rounding only
    n_tok = n_seq * length
    flat, xx = acts.reshape(-1, f), x.reshape(-1, d)
    for name in ["count", "max", "n_tokens"]:
        assert torch.equal(getattr(m1, name), getattr(m0, name)), name
    abs_sums = {
        "sum": flat.sum(0),
        "sumsq": (flat * flat).sum(0),
        "cross": flat.T.abs() @ xx.abs(),
        "x_sum": xx.abs().sum(0),
    }
    for name, abs_sum in abs_sums.items():
        assert_sums_close(getattr(m1, name), getattr(m0, name), abs_sum, n_tok)
    gram_abs = flat.T @ flat  # activations are non-negative
    assert_sums_close(g1.finalize(), g0.finalize(), gram_abs, n_tok)
    # dense bins agree with the sparse ones
    dense_bins = bin_index(acts.reshape(-1, f), acts.reshape(-1, f).amax(0), 5)
    ref = torch.stack([torch.bincount(dense_bins[:, j], minlength=6)[:5] for j in range(f)])
    assert torch.equal(h0.counts, ref)
    dense = acts.reshape(-1, f)
    assert_sums_close(g0.finalize(), dense.T @ dense, gram_abs, n_tok)
    torch.testing.assert_close(t1.values, t0.values)
    assert torch.equal(t1.seq, t0.seq) and torch.equal(t1.pos, t0.pos)
    torch.testing.assert_close(t1.windows, t0.windows)
    assert torch.equal(h1.counts, h0.counts)
    assert torch.equal(s1.keys, s0.keys) and torch.equal(s1.seq, s0.seq)
    torch.testing.assert_close(s1.ordered_windows(), s0.ordered_windows())


def test_interval_windows_are_their_examples_activations():
    """Batch after batch, each sampled example's window (in key order, wherever its slot
    is) holds the activations around its own position: read back from the activations
    themselves, zero outside the sequence and for empty slots."""
    n_seq, length, f, n_bins, k = 16, 9, 4, 3, 2
    acts = _acts(n_seq, length, f, 5)
    offs, _ = window_offsets(2, 1, None, "cpu")
    flat = acts.reshape(-1, f)
    top = flat.amax(0)
    sampler = IntervalSampler(torch.arange(f), n_bins, k, offs, False, 3, "cpu")
    for b0 in range(0, n_seq, 2):  # small batches: examples are pushed out again and again
        part = acts[b0 : b0 + 2]
        sp = SparseActs(part.reshape(-1, f))
        bins = sparse_bins(sp, top, n_bins)
        sampler.update(part, sp, bins, torch.arange(b0, b0 + 2), slice(0, f))
    windows = sampler.ordered_windows()
    assert sorted(sampler.slot[0, 0].tolist()) == list(range(k))
    n_valid = 0
    for fi in range(f):
        for bi in range(n_bins):
            for j in range(k):
                seq, pos = int(sampler.seq[fi, bi, j]), int(sampler.pos[fi, bi, j])
                if seq < 0:
                    assert not bool(windows[fi, bi, j].any())
                    continue
                n_valid += 1
                ref = [
                    float(acts[seq, p, fi]) if 0 <= p < length else 0.0
                    for p in (pos + offs).tolist()
                ]
                assert windows[fi, bi, j].tolist() == ref
    assert n_valid > f * n_bins  # most slots hold an example


def _tied_acts(n_seq: int, length: int, f: int, seed: int) -> torch.Tensor:
    """Sparse activations on a coarse grid (many exact ties within a sequence), one
    negative value (alone in its sequence for feature 1: below a zero maximum, it must
    count neither as active nor as the maximum), a whole-zero column."""
    g = torch.Generator().manual_seed(seed)
    a = torch.relu(torch.randint(-6, 4, (n_seq, length, f), generator=g).float() * 0.25)
    a[0, 3, 1] = -0.5  # a negative value in a sequence with no positive one for feature 1
    a[0, :, 1] = torch.where(a[0, :, 1] > 0, torch.zeros_like(a[0, :, 1]), a[0, :, 1])
    a[:, :, 2] = 0.0
    return a


def test_statistics_from_non_zeros_equal_the_dense_passes():
    """Counts, maxima, each sequence's maximum and its first position, taken from the
    non-zeros, are what the dense passes give: bit for bit, ties and zeros included."""
    n_seq, length, f, d = 6, 7, 5, 3
    acts = _tied_acts(n_seq, length, f, 0)
    flat = acts.reshape(-1, f)
    sp = SparseActs(flat)
    best, arg = sequence_max(sp, n_seq, length, f)
    dense_best, dense_arg = acts.max(dim=1)
    pos = dense_best > 0
    assert torch.equal(best[pos], dense_best[pos]) and torch.equal(arg[pos], dense_arg[pos])
    assert bool((best[~pos] <= 0).all())

    x = torch.randn(n_seq * length, d, generator=torch.Generator().manual_seed(1))
    offs, _ = window_offsets(1, 1, None, "cpu")
    results = []
    for given in (None, sp):
        m = MomentStats(f, d, torch.device("cpu"))
        t = TopExamples(f, 3, offs, False, "cpu")
        for _ in range(2):  # twice: the running maxima and top-k across batches
            m.update(flat, x, slice(0, f), given)
            t.update(acts, torch.arange(n_seq), slice(0, f), given)
        m.close()
        results.append((m.count, m.sum, m.sumsq, m.max, m.cross, t.values, t.seq, t.pos, t.windows))
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)
    assert results[0][0].tolist() == (2 * (acts > 0).sum((0, 1))).tolist()


def test_sparse_and_dense_gram_agree():
    a = torch.relu(torch.randn(200, 30) - 2.0)
    rows = a[:, :7]
    n = torch.tensor(200.0)
    dense = GramStats(7, 30, torch.device("cpu"), symmetric=False, strategy="dense")
    sparse = GramStats(7, 30, torch.device("cpu"), symmetric=False, strategy="sparse")
    dense.update(rows, a, n)
    sparse.update(rows, a, n)
    assert_sums_close(sparse.finalize(), dense.finalize(), rows.T @ a, 200)
    assert_sums_close(dense.finalize(), rows.T @ a, rows.T @ a, 200)


@pytest.mark.parametrize("scratch_rows, pair_chunk", [(None, None), (3, 5), (7, 64)])
def test_staged_non_zeros_give_the_same_sparse_gram(monkeypatch, scratch_rows, pair_chunk):
    """The sparse kernel fed each chunk's non-zeros (pass 2's kept activations) gives the
    same co-activation sums, bit for bit, as fed the dense chunks (concatenated and made
    sparse: torch.sparse.mm); the column sums are summed chunk by chunk (same terms, another
    order). The pair sums go through scratch blocks of rows and chunks of pairs of any
    size, a row's pairs split across chunks too."""
    if scratch_rows is not None:
        monkeypatch.setattr(gram_module, "PAIR_SCRATCH_BYTES", scratch_rows * 4 * 40)
        monkeypatch.setattr(gram_module, "PAIR_CHUNK", pair_chunk)
    a = torch.relu(torch.randn(300, 40) - 2.0)
    n, cpu = torch.tensor(300.0), torch.device("cpu")
    chunks = [slice(0, 16), slice(16, 32), slice(32, 40)]
    grams = [GramStats(40, 40, cpu, symmetric=True, strategy="sparse") for _ in range(2)]
    for gram, with_nz in zip(grams, (False, True), strict=True):
        for half in (a[:150], a[150:]):
            for sl in chunks:
                gram.stage(half[:, sl], sl, SparseActs(half[:, sl]) if with_nz else None)
            gram.commit(150, n / 2)
    via_dense, via_nz = grams
    assert not via_dense._staged_nz and not via_nz._staged  # each went its own way
    assert torch.equal(via_nz.finalize(), via_dense.finalize())
    assert_sums_close(via_nz.col_sum, via_dense.col_sum, a.sum(0), 300)
    assert_sums_close(via_nz.col_sumsq, via_dense.col_sumsq, (a * a).sum(0), 300)
    assert_sums_close(via_nz.finalize(), a.T @ a, a.T @ a, 300)


def test_hash_is_deterministic_and_spread():
    x = torch.arange(100_000)
    h = hash31(x)
    assert torch.equal(h, hash31(x.clone()))
    assert h.min() >= 0 and h.max() < 2**31
    assert h.unique().numel() > 99_000
    # roughly uniform: each eighth of the range gets about an eighth of the values
    counts = torch.bincount(h // (2**31 // 8), minlength=8)[:8].float()
    assert (counts / counts.mean() - 1).abs().max() < 0.05


def test_bin_index_edges():
    acts = torch.tensor([[0.0, 1.0], [0.5, 2.0], [1.0, 0.0]])
    mx = torch.tensor([1.0, 2.0])
    b = bin_index(acts, mx, 4)
    assert b.tolist() == [[4, 1], [1, 3], [3, 4]]  # (lo, hi] bins; zeros -> n_bins


def test_low_precision_grams_are_close():
    g = torch.Generator().manual_seed(3)
    a = torch.relu(torch.randn(300, 40, generator=g) - 1.0)
    n = torch.tensor(300.0)
    ref = GramStats(40, 40, torch.device("cpu"), symmetric=True, strategy="dense", block=16)
    ref.update(a, a, n)
    s, ss = a.sum(0), (a * a).sum(0)
    p_ref, i_ref, _ = ref.top_correlated(s, ss, 3, torch.arange(40))
    for dtype in (torch.int8, torch.bfloat16):
        for sym in (True, False):
            q = GramStats(
                40, 40, torch.device("cpu"), symmetric=sym, strategy="dense", block=16, dtype=dtype
            )
            q.update(a, a, n)
            rel = (q.finalize() - ref.finalize()).abs().max() / ref.finalize().abs().max()
            assert rel < 0.01, (dtype, sym, rel)
            p, _, _ = q.top_correlated(s, ss, 3, torch.arange(40))
            assert (p - p_ref).abs().max() < 0.01


@pytest.mark.parametrize("n_feat", [40, 70])
@pytest.mark.parametrize("buffer_bytes", [64 * 100, 1 << 20])
def test_buffered_int8_gram_matches_float64(buffer_bytes, n_feat):
    """Staged chunk by chunk, flushed several times or once, feature counts that are not
    a multiple of the block: the same co-activation sums as float64."""
    g = torch.Generator().manual_seed(5)
    a = torch.relu(torch.randn(301, n_feat, generator=g) - 1.0)
    ref = (a.double().T @ a.double()).float()
    given = {} if buffer_bytes < 1 << 20 else {"col_sum": a.sum(0), "col_sumsq": (a * a).sum(0)}
    q = BufferedInt8Gram(
        a.amax(0), torch.device("cpu"), block=32, buffer_bytes=buffer_bytes, **given
    )
    flushes = 0
    for start in range(0, 301, 43):  # uneven batches, 3 feature chunks each
        batch = a[start : start + 43]
        before = q.used
        q.reserve(batch.shape[0])
        flushes += q.used < before
        for sl in (slice(0, 7), slice(7, 30), slice(30, n_feat)):
            q.stage(batch[:, sl], sl)
        q.commit(batch.shape[0], torch.tensor(float(batch.shape[0])))
    cross = q.finalize()
    assert (flushes > 0) == (buffer_bytes < 1 << 20)
    rel = (cross - ref).abs().max() / ref.abs().max()
    assert rel < 0.01
    assert_sums_close(q.col_sum, a.sum(0), a.sum(0), 301)
    assert float(q.n_tokens) == 301
    assert torch.equal(cross, cross.T)  # the upper block triangle is mirrored


def test_buffered_int8_gram_rejects_oversized_batch():
    q = BufferedInt8Gram(torch.ones(4), torch.device("cpu"), buffer_bytes=64)
    with pytest.raises(ValueError, match="exceeds the Gram buffer"):
        q.reserve(q.capacity + 1)
