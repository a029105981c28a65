"""Signed activations (projections on given directions) against an independent numpy reference.

The reference runs a float64 copy of the tiny model, projects its hook activations on the
directions in numpy and derives every statistic directly (no accumulators, no batching):
density, maximum and minimum, the most positive and most negative examples, histogram counts
over ``[min, max]``, interval counts over ``|value|`` and the feature correlations (int8 is
asked for and must not be used: it cannot hold negative values). Tolerances come from the
magnitudes (tests/tolerance.py); a count may differ only by values within rounding of an edge.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from core.config import RunConfig
from core.engine.sweep import run_sweep
from core.models import ModelAdapter
from tests.tiny import BOS_ID, HOOK, make_directions, make_model, random_tokens
from tests.tolerance import assert_top_k, pearson_tolerance, sum_tolerance

N_DIRS, K, BINS, INTERVALS = 5, 4, 7, 6


@pytest.fixture(scope="module")
def setup():
    model = make_model(n_layers=2)
    tokens = random_tokens(10, 12, seed=5)
    dirs = make_directions(model.cfg.d_model, N_DIRS, HOOK, seed=2)
    cfg = RunConfig(
        batch_size=3,
        n_top_examples=K,
        n_hist_bins=BINS,
        n_intervals=INTERVALS,
        gram_precision="int8",
        device="cpu",
    )
    fs = run_sweep(ModelAdapter(model, bos_token_id=BOS_ID), dirs, tokens, cfg).features
    ref_model = copy.deepcopy(model).double()
    with torch.no_grad():
        _, cache = ref_model.run_with_cache(tokens, names_filter=HOOK)
    x = cache[HOOK].numpy()  # [seq, pos, d] float64
    v = dirs.W.double().numpy()  # [n, d]
    valid = (tokens != BOS_ID).numpy()
    proj = np.einsum("spd,nd->spn", x, v) * valid[..., None]
    # the engine's float32 forward and dot products against float64: the dot product's bound
    # over |x||v|, with x itself rounded through layer 0 (sums of up to d_mlp terms, a few
    # in sequence) -- a generous multiple of the same bound
    absdot = np.einsum("spd,nd->spn", np.abs(x), np.abs(v))
    tol = sum_tolerance(absdot, model.cfg.d_mlp, computations=16)
    return fs, proj, valid, tol


def _edge_slack(values: np.ndarray, edges: np.ndarray, tol: float) -> int:
    """How many values lie within ``tol`` of an interior edge (the only ones that may move)."""
    inner = edges[1:-1]
    return int((np.abs(values[:, None] - inner[None, :]) <= tol).any(axis=1).sum())


@pytest.mark.parametrize("f", range(N_DIRS))
def test_moments_examples_histogram(setup, f):
    fs, proj, valid, tol = setup
    fd = fs[f]
    p, t = proj[..., f], tol[..., f]
    vals = p[valid]
    assert fd.signed and (vals < 0).any() and (vals > 0).any()
    assert fd.n_active == int((vals != 0).sum()) == int(valid.sum())
    assert fd.density == fd.n_active / valid.sum()
    t_max = float(t.max())
    assert abs(fd.max_act - vals.max()) <= t_max and abs(fd.min_act - vals.min()) <= t_max
    assert abs(fd.mean_act - vals.mean()) <= t_max

    # most positive: per sequence its maximum (positive ones only), the K best sequences
    per_seq = np.where(valid, p, -np.inf).max(axis=1)
    ref_top = np.where(per_seq > 0, per_seq, -np.inf)
    got = fd.top_examples
    assert_top_k([e.seq for e in got], [e.value for e in got], ref_top, K, t.max(axis=1))
    per_seq_min = np.where(valid, p, np.inf).min(axis=1)
    ref_bot = np.where(per_seq_min < 0, per_seq_min, np.inf)
    bot = fd.bottom_examples
    assert_top_k(
        [e.seq for e in bot], [e.value for e in bot], ref_bot, K, t.max(axis=1), largest=False
    )
    for e in [*got, *bot]:  # the windows hold the projections, signs included
        want = p[e.seq, e.start : e.start + len(e.acts)]
        assert np.abs(np.asarray(e.acts) - want).max() <= t_max
        assert e.acts[e.qualifying_index] == e.value

    # histogram: equal-width bins over [min, max] of the non-zero activations
    edges = np.asarray(fd.act_hist.edges)
    assert (
        len(edges) == BINS + 1 and edges[0] == fd.min_act and edges[-1] == pytest.approx(fd.max_act)
    )
    # (the extremes are the edges: clipped, a float64 extreme a rounding outside stays in)
    want, _ = np.histogram(vals.clip(edges[0], edges[-1]), bins=edges)
    diff = np.abs(np.asarray(fd.act_hist.counts) - want).sum()
    assert sum(fd.act_hist.counts) == vals.size
    assert diff <= 2 * _edge_slack(vals, edges, t_max)

    # intervals: |value| in equal-width bins of (0, max |value|]
    span = max(fd.max_act, -fd.min_act)
    assert fd.intervals[-1].hi == pytest.approx(span) and fd.intervals[0].lo == 0.0
    i_edges = np.asarray([g.lo for g in fd.intervals] + [span])
    want_i, _ = np.histogram(np.abs(vals).clip(0, span), bins=i_edges)
    got_i = np.asarray([g.n_active for g in fd.intervals])
    assert got_i.sum() == vals.size
    assert np.abs(got_i - want_i).sum() <= 2 * _edge_slack(np.abs(vals), i_edges, t_max)
    for g in fd.intervals:
        for e in g.examples:
            assert g.lo - t_max <= abs(e.value) <= g.hi + t_max


def test_correlations_are_float_pearson_of_the_projections(setup):
    fs, proj, valid, _ = setup
    cols = proj[valid]  # [tokens, n]
    ref = np.corrcoef(cols.T)
    for f in range(N_DIRS):
        table = fs[f].correlated_features
        row = ref[f].copy()
        row[f] = -np.inf
        tol = np.array([pearson_tolerance(cols[:, f], cols[:, g]) for g in range(N_DIRS)])
        # int8 keeps no sign: a quantised sweep would be off by far more than this
        assert_top_k(table.indices, table.columns["pearson"], row, 3, tol * 8 + 1e-6)
