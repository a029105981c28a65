"""The sweep against an independent slow reference computed from dense activations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.config import RunConfig
from core.dictionaries.saelens import SAELensDictionary
from core.engine import run_sweep
from core.models import ModelAdapter
from tests.conftest import make_model, make_sae

HOOK = "blocks.1.hook_resid_pre"
BOS = 0
CHECK = [0, 3, 7, 12, 25, 40, 63]


@pytest.fixture(scope="module")
def setup():
    model = make_model(n_layers=3)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(1, 61, (40, 16), generator=g)
    tokens[:, 0] = BOS
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


def check_feature(fd, f, acts, valid, xs, cfg, sae, model):
    a = acts[:, :, f]
    act_valid = a[valid]
    nonzero = act_valid[act_valid > 0]
    n_tok = int(valid.sum())
    assert fd.n_tokens == n_tok
    assert fd.n_active == len(nonzero)
    assert fd.density == pytest.approx(len(nonzero) / n_tok)
    if len(nonzero) == 0:
        assert fd.top_examples == []
        return
    mx = nonzero.max()
    assert fd.max_act == pytest.approx(mx, rel=1e-5)
    assert fd.mean_act == pytest.approx(nonzero.mean(), rel=1e-4)

    # activation histogram: numpy's own binning, allowing float edge cases
    ref_counts, _ = np.histogram(nonzero, bins=cfg.n_hist_bins, range=(0, mx))
    assert np.abs(np.array(fd.act_hist.counts) - ref_counts).sum() <= 2
    assert sum(fd.act_hist.counts) == len(nonzero)

    # top examples: best sequences by their max, one per sequence
    seq_max = a.max(axis=1)
    order = [s for s in np.argsort(-seq_max, kind="stable") if seq_max[s] > 0][: cfg.n_top_examples]
    got = [e.seq for e in fd.top_examples]
    assert len(got) == len(set(got)) == len(order)
    assert sorted(got) == sorted(order)
    for e in fd.top_examples:
        assert e.value == pytest.approx(seq_max[e.seq], rel=1e-5)
        assert a[e.seq, e.pos] == pytest.approx(e.value, rel=1e-5)
        start = max(0, e.pos - cfg.window_before)
        end = min(a.shape[1], e.pos + cfg.window_after + 1)
        assert e.start == start and len(e.acts) == end - start
        np.testing.assert_allclose(e.acts, a[e.seq, start:end], rtol=1e-4, atol=1e-5)
        assert e.token_ids == model_tokens_slice(e.seq, start, end)
        assert e.acts[e.qualifying_index] == pytest.approx(e.value)

    # interval groups: sampled examples come from sequences with a token in the bin
    nb = cfg.n_intervals
    for bi, grp in enumerate(fd.intervals):
        lo, hi = mx * bi / nb, mx * (bi + 1) / nb
        assert grp.lo == pytest.approx(lo, rel=1e-5) and grp.hi == pytest.approx(hi, rel=1e-5)
        in_bin = (a > lo) & (a <= hi) if bi else (a > 0) & (a <= hi)
        ref_n = int(in_bin.sum())
        assert abs(grp.n_active - ref_n) <= 1
        seqs = set(np.nonzero(in_bin.any(axis=1))[0].tolist())
        ex_seqs = [e.seq for e in grp.examples]
        assert len(ex_seqs) == len(set(ex_seqs))
        assert len(ex_seqs) >= min(cfg.n_interval_examples, len(seqs)) - 1
        assert len(ex_seqs) <= cfg.n_interval_examples
        for e in grp.examples:
            assert lo - 1e-4 <= e.value <= hi + 1e-4
            assert a[e.seq, e.pos] == pytest.approx(e.value, rel=1e-5)
    assert sum(g.n_active for g in fd.intervals) == len(nonzero)

    # correlated neurons: numpy Pearson over valid tokens
    av = a[valid]
    xv = xs[valid]
    pear = np.array([np.corrcoef(av, xv[:, j])[0, 1] for j in range(xv.shape[1])])
    ref_top = np.argsort(-pear)[: cfg.n_table_rows]
    assert fd.correlated_neurons.indices == ref_top.tolist()
    np.testing.assert_allclose(fd.correlated_neurons.columns["pearson"], pear[ref_top], atol=1e-4)
    cos = (av @ xv) / (np.linalg.norm(av) * np.linalg.norm(xv, axis=0))
    np.testing.assert_allclose(fd.correlated_neurons.columns["cosine"], cos[ref_top], atol=1e-4)

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
    ref_f = np.argsort(-pf)[: cfg.n_table_rows]
    assert fd.correlated_features.indices == ref_f.tolist()
    np.testing.assert_allclose(fd.correlated_features.columns["pearson"], pf[ref_f], atol=1e-4)

    # decoder side: alignment and logit effects
    w = sae.W_dec[f].detach().double().numpy()
    al = np.argsort(-np.abs(w))[: cfg.n_table_rows]
    assert fd.neuron_alignment.indices == al.tolist()
    np.testing.assert_allclose(
        fd.neuron_alignment.columns["l1_share"], np.abs(w[al]) / np.abs(w).sum(), rtol=1e-5
    )
    centred = (w - w.mean()) * model.ln_final.w.detach().double().numpy()
    logits = centred @ model.W_U.detach().double().numpy()
    assert fd.top_logits.token_ids == np.argsort(-logits)[: cfg.n_top_logits].tolist()
    assert fd.bottom_logits.token_ids == np.argsort(logits)[: cfg.n_top_logits].tolist()
    ref_lh, _ = np.histogram(logits, bins=cfg.n_logit_bins, range=(logits.min(), logits.max()))
    assert np.abs(np.array(fd.logit_hist.counts) - ref_lh).sum() <= 2


_TOKENS: dict[str, np.ndarray] = {}


def model_tokens_slice(seq: int, start: int, end: int) -> list[int]:
    return _TOKENS["t"][seq, start:end].tolist()


@pytest.mark.parametrize("kind", ["standard", "jumprelu", "topk"])
def test_sweep_matches_dense_reference(setup, kind):
    model, tokens, x = setup
    _TOKENS["t"] = tokens.numpy()
    sae = make_sae(kind, 32, 64, HOOK, sample=x.reshape(-1, 32), density=0.15)
    acts, valid, xs = dense_reference(sae, x, tokens)
    cfg = RunConfig(
        features=CHECK, batch_size=7, feature_chunk_size=3, window_before=3, window_after=2
    )
    res = run_sweep(ModelAdapter(model, bos_token_id=BOS), SAELensDictionary(sae), tokens, cfg)
    assert sorted(res.features) == CHECK
    assert res.info.forward_passes == 6  # ceil(40 / 7) batches, one pass (activations cached)
    active = 0
    for f in CHECK:
        check_feature(res.features[f], f, acts, valid, xs, cfg, sae, model)
        active += res.features[f].n_active > 0
    assert active >= len(CHECK) - 1


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
    assert a.correlated_features.indices == b.correlated_features.indices
    np.testing.assert_allclose(
        a.correlated_features.columns["pearson"],
        b.correlated_features.columns["pearson"],
        atol=1e-5,
    )
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
    all_v = acts[valid]
    for f in req:
        fd = res.features[f]
        assert set(fd.correlated_features.indices) <= set(req) - {f}
        pear = {j: np.corrcoef(all_v[:, f], all_v[:, j])[0, 1] for j in req if j != f}
        best = sorted(pear, key=lambda j: -pear[j])[:2]
        assert fd.correlated_features.indices == best
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
        torch.testing.assert_close(d.encode(xs, idx), full, rtol=1e-5, atol=1e-6)
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
        ref = np.array([np.corrcoef(all_v[:, f], all_v[:, j])[0, 1] for j in cf.indices])
        np.testing.assert_allclose(cf.columns["pearson"], ref, atol=0.01)
        full = np.nan_to_num(np.corrcoef(all_v.T)[f], nan=-np.inf)
        full[f] = -np.inf
        assert cf.columns["pearson"][0] >= full.max() - 0.01
