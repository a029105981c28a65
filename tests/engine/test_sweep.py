"""The sweep against an independent slow reference computed from dense activations."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from core.config import RunConfig
from core.dictionaries.saelens import SAELensDictionary
from core.engine.stats import SPARSE_CROSS_DENSITY, SparseActs
from core.engine.sweep import run_sweep
from core.models import ModelAdapter
from tests.tiny import HOOK, make_model, make_sae, random_tokens
from tests.tolerance import (
    assert_top_k,
    encode_tolerance,
    firing_margin,
    gamma,
    low_precision_pearson_tolerance,
    pearson_tolerance,
    sum_tolerance,
)

BOS = 0
CHECK = [0, 3, 7, 12, 25, 40, 63]


@pytest.fixture(scope="module")
def setup():
    model = make_model(n_layers=3)
    tokens = random_tokens(40, 16, seed=1, bos=BOS)
    tokens[5, 9] = BOS  # a separator in the middle is ignored too
    _, cache = model.run_with_cache(tokens, names_filter=HOOK)
    x = cache[HOOK]
    return model, tokens, x


def dense_reference(sae, x, tokens):
    """Feature activations of every token via the SAE's own encode, zero at BOS."""
    n, length, d = x.shape
    with torch.no_grad():
        acts = sae.encode(x.reshape(-1, d)).reshape(n, length, -1).double().numpy()
    valid = (tokens != BOS).numpy()
    acts = acts * valid[..., None]
    return acts, valid, x.double().numpy() * valid[..., None]


@dataclass
class Bounds:
    """How far a float32 sweep may be from the dense reference, from the magnitudes involved.

    ``tol[f]``: two float32 encodes of feature ``f`` differ by at most this much (any summation
    order). ``unsure``: entries whose pre-activation is within ``tol`` of switching on or off,
    which may be active in one computation and not the other. ``delta[f]``: a bound on the
    norm of the difference of feature ``f``'s whole activation vector between two encodes.
    """

    tol: np.ndarray
    unsure: np.ndarray
    delta: np.ndarray

    @classmethod
    def of(cls, sae, x, acts, valid) -> Bounds:
        tol = encode_tolerance(sae, x)
        unsure = (firing_margin(sae, x) <= tol) & valid[..., None]
        n = int(valid.sum())
        jumps = ((np.abs(acts) + tol) ** 2 * unsure).reshape(-1, acts.shape[-1]).sum(0)
        return cls(tol, unsure, np.sqrt(n * tol**2 + jumps))

    def pearson(self, f: int, a: np.ndarray, b: np.ndarray, g: int | None = None) -> float:
        """Tolerance of a Pearson correlation of feature ``f``'s activations ``a`` with ``b``
        (another feature ``g``'s activations, or a fixed input dimension)."""
        n = len(a)
        tol = pearson_tolerance(a, b) + 2 * self.delta[f] / (np.sqrt(n) * a.std())
        if g is not None:
            tol += 2 * self.delta[g] / (np.sqrt(n) * b.std())
        return tol


def near(values: np.ndarray, edges: np.ndarray, tol: float) -> np.ndarray:
    """Which values lie within ``tol`` of one of the bin edges (their bin may differ)."""
    return (np.abs(values[:, None] - edges[None, :]) <= tol).any(1)


def check_feature(fd, f, acts, valid, xs, cfg, sae, model, bounds: Bounds):
    t = float(bounds.tol[f])
    a = acts[:, :, f]
    act_valid = a[valid]
    nonzero = act_valid[act_valid > 0]
    n_tok = int(valid.sum())
    unsure = bounds.unsure[:, :, f]
    n_unsure = int(unsure.sum())
    assert fd.n_tokens == n_tok
    assert abs(fd.n_active - len(nonzero)) <= n_unsure
    assert fd.density == pytest.approx(fd.n_active / n_tok)
    if len(nonzero) == 0:
        assert len(fd.top_examples) <= n_unsure
        return
    mx = nonzero.max()
    assert fd.max_act == pytest.approx(mx, abs=t)
    mean_tol = t + float(sum_tolerance(mx, len(nonzero))) + n_unsure * (mx + t) / len(nonzero)
    assert fd.mean_act == pytest.approx(nonzero.mean(), abs=mean_tol)

    # activation histogram: numpy's own binning; a value within rounding of an edge (the
    # edges move with the max) may fall on either side, moving one count between two bins
    nh = cfg.n_hist_bins
    ref_counts, _ = np.histogram(nonzero, bins=nh, range=(0, mx))
    n_edge = int(near(nonzero, mx * np.arange(1, nh) / nh, 2 * t).sum())
    assert np.abs(np.array(fd.act_hist.counts) - ref_counts).sum() <= 2 * n_edge + n_unsure
    assert sum(fd.act_hist.counts) == fd.n_active

    # top examples: best sequences by their max, one per sequence; sequences whose maxima
    # are within rounding of each other at the cut may swap
    seq_max = a.max(axis=1)
    order = [s for s in np.argsort(-seq_max, kind="stable") if seq_max[s] > 0][: cfg.n_top_examples]
    got = [e.seq for e in fd.top_examples]
    assert len(got) == len(set(got))
    cut = seq_max[order[-1]] if len(order) == cfg.n_top_examples else 0.0
    for s in np.nonzero(seq_max > cut + 2 * t)[0]:
        assert s in got, (s, seq_max[s], cut)
    for s in got:
        assert seq_max[s] >= cut - 2 * t, (s, seq_max[s], cut)
    for e in fd.top_examples:
        assert e.value == pytest.approx(seq_max[e.seq], abs=t)
        assert a[e.seq, e.pos] == pytest.approx(e.value, abs=t)
        start = max(0, e.pos - cfg.window_before)
        end = min(a.shape[1], e.pos + cfg.window_after + 1)
        assert e.start == start and len(e.acts) == end - start
        window_unsure = unsure[e.seq, start:end]
        diff = np.abs(np.array(e.acts) - a[e.seq, start:end])
        assert (diff[~window_unsure] <= t).all(), diff
        assert e.token_ids == model_tokens_slice(e.seq, start, end)
        assert e.acts[e.qualifying_index] == pytest.approx(e.value)

    # interval groups: sampled examples come from sequences with a token in the bin
    nb = cfg.n_intervals
    for bi, grp in enumerate(fd.intervals):
        lo, hi = mx * bi / nb, mx * (bi + 1) / nb
        assert grp.lo == pytest.approx(lo, abs=t) and grp.hi == pytest.approx(hi, abs=t)
        in_bin = (a > lo) & (a <= hi) if bi else (a > 0) & (a <= hi)
        ref_n = int(in_bin.sum())
        at_edges = near(a[valid], np.array([lo, hi]), 2 * t) & (a[valid] > 0)
        slack = int(at_edges.sum()) + (n_unsure if bi == 0 else 0)
        assert abs(grp.n_active - ref_n) <= slack
        seqs = set(np.nonzero(in_bin.any(axis=1))[0].tolist())
        ex_seqs = [e.seq for e in grp.examples]
        assert len(ex_seqs) == len(set(ex_seqs))
        assert len(ex_seqs) >= min(cfg.n_interval_examples, len(seqs)) - 1 - slack
        assert len(ex_seqs) <= cfg.n_interval_examples
        for e in grp.examples:
            assert lo - 2 * t <= e.value <= hi + 2 * t
            assert a[e.seq, e.pos] == pytest.approx(e.value, abs=t)
    assert sum(g.n_active for g in fd.intervals) == fd.n_active

    # correlated neurons: numpy Pearson over valid tokens
    av = a[valid]
    xv = xs[valid]
    d_in = xv.shape[1]
    pear = np.array([np.corrcoef(av, xv[:, j])[0, 1] for j in range(d_in)])
    p_tol = np.array([bounds.pearson(f, av, xv[:, j]) for j in range(d_in)])
    cn = fd.correlated_neurons
    assert_top_k(cn.indices, cn.columns["pearson"], pear, cfg.n_table_rows, p_tol)
    cos = (av @ xv) / (np.linalg.norm(av) * np.linalg.norm(xv, axis=0))
    cos_tol = 2 * bounds.delta[f] / np.linalg.norm(av) + sum_tolerance(
        (np.abs(av) @ np.abs(xv)) / (np.linalg.norm(av) * np.linalg.norm(xv, axis=0)) + 2, n_tok
    )
    idx = cn.indices
    np.testing.assert_array_less(np.abs(np.array(cn.columns["cosine"]) - cos[idx]), cos_tol[idx])

    # correlated features across the whole dictionary
    all_v = acts[valid]
    with np.errstate(invalid="ignore", divide="ignore"):
        pf = np.array(
            [
                np.corrcoef(av, all_v[:, j])[0, 1] if all_v[:, j].std() > 0 else -np.inf
                for j in range(all_v.shape[1])
            ]
        )
    pf[f] = -np.inf
    f_tol = np.array(
        [
            bounds.pearson(f, av, all_v[:, j], j) if np.isfinite(pf[j]) else 0.0
            for j in range(all_v.shape[1])
        ]
    )
    cf = fd.correlated_features
    assert_top_k(cf.indices, cf.columns["pearson"], pf, cfg.n_table_rows, f_tol)

    # decoder side: alignment and logit effects, against float64
    w = sae.W_dec[f].detach().double().numpy()
    share = np.abs(w) / np.abs(w).sum()
    na = fd.neuron_alignment
    assert_top_k(
        na.indices, na.columns["l1_share"], share, cfg.n_table_rows, 2 * gamma(d_in) * share
    )
    ln_w = model.ln_final.w.detach().double().numpy()
    w_u = model.W_U.detach().double().numpy()
    centred = (w - w.mean()) * ln_w
    logits = centred @ w_u
    # float32: the centring sums d_in terms, the unembedding d_in more
    l_tol = sum_tolerance(
        ((np.abs(w) + np.abs(w).mean()) * np.abs(ln_w)) @ np.abs(w_u), 2 * d_in + 2
    )
    k = cfg.n_top_logits
    assert_top_k(fd.top_logits.token_ids, fd.top_logits.values, logits, k, l_tol)
    assert_top_k(
        fd.bottom_logits.token_ids, fd.bottom_logits.values, logits, k, l_tol, largest=False
    )
    nl = cfg.n_logit_bins
    lo_l, hi_l = logits.min(), logits.max()
    ref_lh, _ = np.histogram(logits, bins=nl, range=(lo_l, hi_l))
    n_edge = int(near(logits, lo_l + (hi_l - lo_l) * np.arange(1, nl) / nl, 3 * l_tol.max()).sum())
    assert np.abs(np.array(fd.logit_hist.counts) - ref_lh).sum() <= 2 * n_edge


_TOKENS: dict[str, np.ndarray] = {}


def model_tokens_slice(seq: int, start: int, end: int) -> list[int]:
    return _TOKENS["t"][seq, start:end].tolist()


@pytest.mark.parametrize(
    ("kind", "density"),
    # 0.006: below SPARSE_CROSS_DENSITY, the feature-by-neuron sums come from the non-zeros
    [("standard", 0.15), ("jumprelu", 0.15), ("topk", 0.15), ("standard", 0.006)],
)
def test_sweep_matches_dense_reference(setup, kind, density, monkeypatch):
    model, tokens, x = setup
    sparse_calls = []
    product = SparseActs.transposed_matmul
    monkeypatch.setattr(
        SparseActs, "transposed_matmul", lambda sp, xs: sparse_calls.append(1) or product(sp, xs)
    )
    _TOKENS["t"] = tokens.numpy()
    sae = make_sae(kind, 32, 64, HOOK, sample=x.reshape(-1, 32), density=density)
    acts, valid, xs = dense_reference(sae, x, tokens)
    bounds = Bounds.of(sae, x, acts, valid)
    cfg = RunConfig(
        features=CHECK, batch_size=7, feature_chunk_size=3, window_before=3, window_after=2
    )
    res = run_sweep(ModelAdapter(model, bos_token_id=BOS), SAELensDictionary(sae), tokens, cfg)
    assert sorted(res.features) == CHECK
    assert res.info.forward_passes == 6  # ceil(40 / 7) batches, one pass (activations cached)
    active = 0
    for f in CHECK:
        check_feature(res.features[f], f, acts, valid, xs, cfg, sae, model, bounds)
        active += res.features[f].n_active > 0
    assert active >= len(CHECK) - 1
    assert bool(sparse_calls) == (density < SPARSE_CROSS_DENSITY)


def test_results_do_not_depend_on_batching_or_request(setup):
    """Same feature, different batch sizes, chunking and companions: same data."""
    model, tokens, x = setup
    sae = make_sae("standard", 32, 64, HOOK, sample=x.reshape(-1, 32), density=0.15)
    ma, d = ModelAdapter(model, bos_token_id=BOS), SAELensDictionary(sae)
    a = run_sweep(ma, d, tokens, RunConfig(features=[7], batch_size=40)).features[7]
    b = run_sweep(
        ma, d, tokens, RunConfig(features=list(range(64)), batch_size=3, feature_chunk_size=5)
    ).features[7]
    assert [e.seq for e in a.top_examples] == [e.seq for e in b.top_examples]
    for ga, gb in zip(a.intervals, b.intervals, strict=True):
        assert [(e.seq, e.pos) for e in ga.examples] == [(e.seq, e.pos) for e in gb.examples]
    # both sweeps' correlated features are the top-k of the dense Pearson, up to rounding
    acts, valid, _ = dense_reference(sae, x, tokens)
    bounds = Bounds.of(sae, x, acts, valid)
    all_v = acts[valid]
    pf = np.array([np.corrcoef(all_v[:, 7], all_v[:, j])[0, 1] for j in range(64)])
    pf[7] = -np.inf
    tol = np.array([bounds.pearson(7, all_v[:, 7], all_v[:, j], j) for j in range(64)])
    for fd in (a, b):
        cf = fd.correlated_features
        assert_top_k(cf.indices, cf.columns["pearson"], pf, len(a.correlated_features.indices), tol)
    # a different seed draws different interval samples
    c = run_sweep(ma, d, tokens, RunConfig(features=[7], seed=123)).features[7]
    samples_a = [(e.seq, e.pos) for g in a.intervals for e in g.examples]
    samples_c = [(e.seq, e.pos) for g in c.intervals for e in g.examples]
    assert samples_a != samples_c


def test_requested_scope_and_whole_sequence(setup):
    model, tokens, x = setup
    sae = make_sae("standard", 32, 64, HOOK, sample=x.reshape(-1, 32), density=0.15)
    acts, valid, _ = dense_reference(sae, x, tokens)
    req = [2, 5, 9, 30]
    cfg = RunConfig(
        features=req, feature_correlation="requested", whole_sequence=True, n_table_rows=2
    )
    res = run_sweep(ModelAdapter(model, bos_token_id=BOS), SAELensDictionary(sae), tokens, cfg)
    bounds = Bounds.of(sae, x, acts, valid)
    all_v = acts[valid]
    for f in req:
        fd = res.features[f]
        assert set(fd.correlated_features.indices) <= set(req) - {f}
        pear = np.full(all_v.shape[1], -np.inf)
        tol = np.zeros(all_v.shape[1])
        for j in req:
            if j != f:
                pear[j] = np.corrcoef(all_v[:, f], all_v[:, j])[0, 1]
                tol[j] = bounds.pearson(f, all_v[:, f], all_v[:, j], j)
        cf = fd.correlated_features
        assert_top_k(cf.indices, cf.columns["pearson"], pear, 2, tol)
        for e in fd.top_examples:
            assert e.start == 0 and len(e.acts) == tokens.shape[1]


def test_window_clipped_at_sequence_edges(setup):
    """A maximum on the last position still gets an example (SAEDashboard drops it)."""
    model, tokens, x = setup
    sae = make_sae("standard", 32, 8, HOOK, sample=x.reshape(-1, 32), density=0.15)
    # make feature 0 fire only on the last position's residual direction
    last = x[:, -1].reshape(-1, 32)
    direction = last.mean(0)
    with torch.no_grad():
        sae.W_enc[:, 0] = direction / direction.norm()
        proj = (x.reshape(-1, 32) - sae.b_dec) @ sae.W_enc[:, 0]
        sae.b_enc[0] = -proj.quantile(0.99)
    cfg = RunConfig(features=[0], window_before=4, window_after=4)
    res = run_sweep(ModelAdapter(model, bos_token_id=BOS), SAELensDictionary(sae), tokens, cfg)
    acts, _, _ = dense_reference(sae, x, tokens)
    fd = res.features[0]
    best = np.unravel_index(np.argmax(acts[:, :, 0]), acts.shape[:2])
    assert (fd.top_examples[0].seq, fd.top_examples[0].pos) == (int(best[0]), int(best[1]))
    for e in fd.top_examples:
        assert e.start == max(0, e.pos - 4)
        assert e.start + len(e.tokens) == min(tokens.shape[1], e.pos + 5)


def test_subset_encode_matches_full_encode(setup):
    _, _, x = setup
    xs = x.reshape(-1, 32)
    idx = torch.tensor([1, 4, 9, 33, 60])
    for kind in ["standard", "jumprelu", "topk", "gated"]:
        sae = make_sae(kind, 32, 64, HOOK, sample=xs, density=0.2)
        d = SAELensDictionary(sae)
        full = sae.encode(xs)[:, idx]
        assert (full > 0).any(), kind
        # two float32 encodes (a column subset and the whole matrix) differ by rounding only,
        # except where a feature is within rounding of switching on or off
        tol = torch.from_numpy(encode_tolerance(sae, xs)[idx])
        unsure = torch.from_numpy(firing_margin(sae, xs)[:, idx] <= tol.numpy())
        diff = (d.encode(xs, idx) - full).abs().double()
        assert unsure.sum() <= 2, kind
        assert (diff[~unsure] <= tol.expand_as(diff)[~unsure]).all(), (kind, diff.max())
        assert d.encode_is_separable == (kind != "topk")


def test_activation_store_skips_the_model(setup, tmp_path):
    from core.engine.activations import ActivationStore

    model, tokens, x = setup
    sae = make_sae("standard", 32, 64, HOOK, sample=x.reshape(-1, 32), density=0.15)
    ma, d = ModelAdapter(model, bos_token_id=BOS), SAELensDictionary(sae)
    store = ActivationStore(tmp_path / "acts")
    plain = run_sweep(ma, d, tokens, RunConfig(features=[3, 9], batch_size=8))
    first = run_sweep(ma, d, tokens, RunConfig(features=[1], batch_size=8), activation_store=store)
    assert first.info.forward_passes == 5 and len(list((tmp_path / "acts").iterdir())) == 1
    second = run_sweep(
        ma, d, tokens, RunConfig(features=[3, 9], batch_size=8), activation_store=store
    )
    assert second.info.forward_passes == 0
    for f in (3, 9):
        assert second.features[f] == plain.features[f]
    # a damaged file is dropped and the activations recomputed
    (f,) = list((tmp_path / "acts").iterdir())
    f.write_bytes(f.read_bytes()[:100])
    third = run_sweep(ma, d, tokens, RunConfig(features=[3], batch_size=8), activation_store=store)
    alone = run_sweep(ma, d, tokens, RunConfig(features=[3], batch_size=8))  # same GEMM shapes
    assert third.info.forward_passes == 5 and third.features[3] == alone.features[3]


@pytest.mark.parametrize("precision", ["int8", "bfloat16"])
def test_low_precision_feature_correlations_match_numpy(setup, precision):
    """Whole-dictionary sweep (pass-2 Gram): Pearson of the top features as numpy has it."""
    model, tokens, x = setup
    sae = make_sae("standard", 32, 64, HOOK, sample=x.reshape(-1, 32), density=0.15)
    acts, valid, _ = dense_reference(sae, x, tokens)
    cfg = RunConfig(
        features=None, batch_size=7, feature_chunk_size=24, gram_precision=precision, n_table_rows=3
    )
    res = run_sweep(ModelAdapter(model, bos_token_id=BOS), SAELensDictionary(sae), tokens, cfg)
    all_v = acts[valid]
    for f in CHECK:
        if all_v[:, f].std() == 0:
            continue
        cf = res.features[f].correlated_features
        mx = all_v.max(0)
        full = np.nan_to_num(np.corrcoef(all_v.T)[f], nan=-np.inf)
        full[f] = -np.inf
        tol = np.array(
            [
                low_precision_pearson_tolerance(all_v[:, f], all_v[:, j], precision, mx[f], mx[j])
                if np.isfinite(full[j])
                else 0.0
                for j in range(all_v.shape[1])
            ]
        )
        assert_top_k(cf.indices, cf.columns["pearson"], full, 3, tol)
        # the bound is not vacuous: it stays well below the values compared
        assert tol[cf.indices].max() < 0.05


@pytest.mark.parametrize("kind", ["standard", "topk"])
def test_second_pass_reads_kept_non_zeros_exactly(setup, kind):
    """Pass 2 reads pass 1's non-zeros (no second encode, no second forward even when the hook
    activations are not cached); when they exceed a quarter of the memory budget it encodes
    again. Both give byte-identical features."""
    model, tokens, x = setup
    sae = make_sae(kind, 32, 64, HOOK, sample=x.reshape(-1, 32), density=0.15)
    ma, d = ModelAdapter(model, bos_token_id=BOS), SAELensDictionary(sae)
    base = dict(
        features=list(range(64)),
        batch_size=7,
        feature_chunk_size=24,
        feature_correlation="requested",
        activation_cache_bytes=0,
    )
    kept = run_sweep(ma, d, tokens, RunConfig(**base))
    # 40 x 16 tokens x 64 features at density 0.15: ~6k non-zeros, ~74 KB kept; the dense
    # co-activation sums of 64 x 64 features take 16 KB
    again = run_sweep(ma, d, tokens, RunConfig(**base, memory_budget=64 << 10))
    assert kept.info.forward_passes == 6  # one pass: pass 2 needs no hook activations
    assert again.info.forward_passes == 12  # pass 2 ran the model and encoded again
    assert kept.features.row_bytes(0, 64) == again.features.row_bytes(0, 64)  # bit for bit


@pytest.mark.parametrize("n_rows", [1, 3, 16])
def test_logit_tables_a_few_rows_at_a_time_equal_the_whole_chunk(monkeypatch, n_rows):
    """On the CPU the logit tables are made a few rows at a time (in cache); the values are
    those of the whole chunk at once (as on a GPU), bit for bit, ties and flat rows too."""
    import core.engine.sweep as sweep_mod

    model = ModelAdapter(make_model(n_layers=2), bos_token_id=0)
    sae = make_sae("standard", 32, 40, HOOK, density=0.2)
    with torch.no_grad():
        sae.W_dec[3] = 0.0  # a flat row: every logit equal (lo == hi)
        sae.W_dec[7] = sae.W_dec[8]  # two equal rows
        sae.W_dec[9] = (sae.W_dec[9] * 4).round() / 4  # coarse values: ties among logits
    d = SAELensDictionary(sae)
    feats = torch.arange(40)
    cfg = RunConfig(features=list(range(40)), feature_chunk_size=17)
    monkeypatch.setattr(sweep_mod, "_LOGIT_ROWS", 10**9)
    whole = sweep_mod.decoder_tables(model, d, feats, cfg)
    monkeypatch.setattr(sweep_mod, "_LOGIT_ROWS", n_rows)
    blocks = sweep_mod.decoder_tables(model, d, feats, cfg)
    assert whole.keys() == blocks.keys() and "logit_counts" in whole
    for key, value in whole.items():
        assert torch.equal(blocks[key], value), key
    assert int(whole["logit_counts"][3].sum()) == model.d_vocab
